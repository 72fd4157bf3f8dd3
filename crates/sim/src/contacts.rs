//! Realistic contact records (the `contact/batch` fields of 19.2 as weiling-events.md lists them) and
//! the edits `change_contact` makes. A contact is the layer above WeCom friends: it links back to customers
//! through `related_customer`.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::records::{
    CORPS, POSITIONS, STAFF, STAGES, TAGS, base64url_id, mobile, person_name, pick, record_progress,
};

/// The keys of a `contact_list[]` entry, in the order weiling-events.md lists 19.2's fields (on the
/// wire a `serde_json` object sorts them). That list
/// gives the company fields only as `corp_*`: `corp_name`, the one member the other pages also name, is
/// the one kept; the older table's `corp_address`, `register_address`, `legal_person` and
/// `corp_founded_time` (weiling-api.md §7) are assumed members left out until the page confirms them.
pub const CONTACT_FIELDS: [&str; 33] = [
    "contact_id",
    "user_name",
    "contact_ways",
    "status",
    "contact_source",
    "from_channel_name",
    "corp_name",
    "searchword",
    "region",
    "plan_name",
    "group_name",
    "is_repeat",
    "is_useless",
    "create_user_id",
    "owner_id",
    "url",
    "email",
    "age",
    "gender",
    "population_size",
    "industry",
    "position",
    "create_time",
    "last_follow_time",
    "first_progress_time",
    "tag_group_list",
    "business_list",
    "company_list",
    "latest_progress_id",
    "customer_stage",
    "claim_time",
    "related_customer",
    "contact_custom",
];

const INDUSTRIES: [&str; 5] = ["互联网", "制造业", "教育", "金融", "零售"];
const REGIONS: [&str; 5] = [
    "浙江省杭州市",
    "上海市",
    "广东省深圳市",
    "北京市",
    "四川省成都市",
];
const CHANNELS: [&str; 4] = ["官网表单", "企微活码", "线下展会", "百度推广"];
const SEARCH_WORDS: [&str; 3] = ["SCRM系统", "企业微信客户管理", "私域运营工具"];
const POPULATION_SIZES: [&str; 4] = ["1-49人", "50-99人", "100-499人", "500人以上"];
const PROJECTS: [&str; 3] = ["年度采购", "系统升级", "试点项目"];

/// A fresh contact id, the same 43-character shape as customer ids.
pub fn new_contact_id() -> String {
    base64url_id(&mut rand::rng(), 43)
}

/// Which version of a contact this record is, as an order key: its `last_follow_time`, which every
/// [`change_contact`] moves strictly forward. Unlike the customers' revision it is not a count, so
/// compare it only with other versions of the same contact. `None` for a value without one.
pub fn revision(record: &Value) -> Option<u64> {
    record.get("last_follow_time")?.as_u64()
}

/// The first record of a contact, derived from `(app_id, contact_id)` like customer records, so a test
/// that recreates the same contact sees the same person. `related_customer` names one WeCom friend
/// (type 1, the older pages' code for 企微好友) about half the time.
pub fn new_contact_record(app_id: &str, contact_id: &str, now_ms: i64) -> Value {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(b"contact")
        .chain_update([0u8])
        .chain_update(app_id.as_bytes())
        .chain_update([0u8])
        .chain_update(contact_id.as_bytes())
        .finalize()
        .into();
    let mut rng = StdRng::from_seed(seed);
    let name = person_name(&mut rng);
    let create_time = (now_ms / 1000 - rng.random_range(0..365 * 86_400)) * 1000;
    let owner = pick(&mut rng, &STAFF, "zhangsan");
    let channel = pick(&mut rng, &CHANNELS, "");
    // Search-ad contacts carry the keyword, plan and ad group that brought them, and the landing page.
    let searched = channel == "百度推广";
    let corp = CORPS.choose(&mut rng).copied().unwrap_or(("", ""));
    let related: Vec<Value> = if rng.random_bool(0.5) {
        vec![json!({ "id": base64url_id(&mut rng, 43), "type": 1 })]
    } else {
        Vec::new()
    };
    let company_list = if rng.random_bool(0.4) {
        json!([{ "company_id": base64url_id(&mut rng, 32), "company_name": corp.1 }])
    } else {
        json!([])
    };
    let business_list = if rng.random_bool(0.2) {
        json!([{
            "business_id": base64url_id(&mut rng, 32),
            "business_name": format!("{}{}", corp.0, pick(&mut rng, &PROJECTS, "")),
        }])
    } else {
        json!([])
    };
    json!({
        "contact_id": contact_id,
        "user_name": name,
        "contact_ways": [{ "type": *[0, 1, 101].choose(&mut rng).unwrap_or(&0), "contact_way": mobile(&mut rng) }],
        "status": 1,
        "contact_source": {
            "type": rng.random_range(1..=5),
            "component_id": base64url_id(&mut rng, 16),
            "component_name": channel,
        },
        "from_channel_name": channel,
        "corp_name": corp.1,
        "searchword": if searched { pick(&mut rng, &SEARCH_WORDS, "") } else { "" },
        "region": pick(&mut rng, &REGIONS, ""),
        "plan_name": if searched { "品牌词-华东" } else { "" },
        "group_name": if searched { "SCRM通用词" } else { "" },
        "is_repeat": false,
        "is_useless": false,
        "create_user_id": owner,
        "owner_id": owner,
        "url": if searched || channel == "官网表单" { "https://www.example.com/trial" } else { "" },
        "email": if rng.random_bool(0.4) { format!("user{}@example.com", rng.random_range(100..999)) } else { String::new() },
        "age": rng.random_range(22..60),
        "gender": rng.random_range(0..=2),
        "population_size": pick(&mut rng, &POPULATION_SIZES, ""),
        "industry": pick(&mut rng, &INDUSTRIES, ""),
        "position": pick(&mut rng, &POSITIONS, ""),
        "create_time": create_time,
        "last_follow_time": create_time,
        "first_progress_time": 0,
        "tag_group_list": tag_groups(&mut rng, create_time),
        "business_list": business_list,
        "company_list": company_list,
        "latest_progress_id": "",
        "customer_stage": pick(&mut rng, &STAGES, ""),
        "claim_time": create_time,
        "related_customer": related,
        "contact_custom": {},
    })
}

/// Edits a contact the way sales staff do: a follow-up always happens (`last_follow_time` strictly
/// increases, see [`revision`], and `latest_progress_id` changes, so two revisions never compare
/// equal), plus a random mix of stage, owner, tags and flags. Only 19.2's fields change.
pub fn change_contact(record: &mut Value, now_ms: i64) {
    let mut rng = rand::rng();
    let Some(fields) = record.as_object_mut() else {
        return;
    };
    let previous = fields
        .get("last_follow_time")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let followed = now_ms.max(previous + 1);
    fields.insert("last_follow_time".into(), json!(followed));
    record_progress(fields, &mut rng, followed);
    if rng.random_bool(0.5) {
        fields.insert("customer_stage".into(), json!(pick(&mut rng, &STAGES, "")));
    }
    if rng.random_bool(0.3) {
        fields.insert("tag_group_list".into(), tag_groups(&mut rng, followed));
    }
    if rng.random_bool(0.15) {
        fields.insert("owner_id".into(), json!(pick(&mut rng, &STAFF, "zhangsan")));
        fields.insert("claim_time".into(), json!(followed));
    }
    if rng.random_bool(0.05) {
        fields.insert("is_useless".into(), json!(true));
    }
}

/// The inner shape is the one weiling-api.md §7 gives for 19.2's `tag_group_list` (the events catalog
/// cuts it off); `type` 0 marks a contact's tags as in `tag_update_v2`.
fn tag_groups(rng: &mut impl Rng, at: i64) -> Value {
    let count = rng.random_range(0..=2);
    let groups: Vec<Value> = TAGS
        .choose_multiple(rng, count)
        .map(|(tag_id, tag_name, group_id, group_name)| {
            json!({
                "group_id": group_id,
                "group_name": group_name,
                "type": 0,
                "create_time": at,
                "tag_info": [{ "tag_id": tag_id, "tag_name": tag_name, "type": 0, "create_time": at, "tag_user_id": "zhangsan" }],
            })
        })
        .collect();
    Value::Array(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_record_has_19_2s_fields() {
        let record = new_contact_record("wloa1", &new_contact_id(), 1_745_818_723_565);
        let keys: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, CONTACT_FIELDS.to_vec(), "19.2's fields in its order");
        assert_eq!(record["contact_id"].as_str().unwrap().len(), 43);
        assert!(record["contact_ways"][0]["contact_way"].is_string());
        assert!(record["contact_ways"][0]["type"].is_i64());
        assert!(record["related_customer"].is_array());
        assert!(record["customer_stage"].is_string());
        assert!(record["contact_custom"].is_object());
        assert_eq!(record["create_time"].as_i64().unwrap() % 1000, 0);
        assert_eq!(
            revision(&record),
            record["create_time"].as_u64(),
            "a new contact was last followed when it was created"
        );
        for n in 0..40 {
            let record = new_contact_record("wloa1", &format!("k{n}"), 1_745_818_723_565);
            for company in record["company_list"].as_array().unwrap() {
                let keys: Vec<&String> = company.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["company_id", "company_name"]);
            }
            for business in record["business_list"].as_array().unwrap() {
                let keys: Vec<&String> = business.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["business_id", "business_name"]);
            }
            for related in record["related_customer"].as_array().unwrap() {
                let keys: Vec<&String> = related.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["id", "type"]);
            }
        }
    }

    #[test]
    fn the_same_contact_id_gives_the_same_person_and_changes_always_differ() {
        let a = new_contact_record("wloa1", "k", 1_745_818_723_000);
        assert_eq!(a, new_contact_record("wloa1", "k", 1_745_818_723_000));
        let mut b = a.clone();
        change_contact(&mut b, 1_745_818_723_000);
        assert_ne!(a, b);
        assert!(revision(&b) > revision(&a));
        let before = b.clone();
        change_contact(&mut b, 0);
        assert_ne!(
            before, b,
            "a clock that did not move still changes the record"
        );
        assert!(revision(&b) > revision(&before));
        let keys = |r: &Value| -> Vec<String> { r.as_object().unwrap().keys().cloned().collect() };
        assert_eq!(keys(&b), keys(&a), "a change keeps 19.2's fields");
        assert_eq!(revision(&json!({"contact_id": "k"})), None);
    }
}
