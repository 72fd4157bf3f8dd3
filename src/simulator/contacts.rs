//! Realistic contact records (the `contact/batch` schema of weiling-api.md §7) and the edits
//! `change_contact` makes. A contact is the layer above WeCom friends: it links back to customers
//! through `related_customer`.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::records::{
    CORPS, POSITIONS, STAFF, STAGES, TAGS, base64url_id, mobile, person_name, pick,
};

/// The keys of a `contact_list[]` entry, grouped as in the 19.2 doc page.
pub const CONTACT_FIELDS: [&str; 33] = [
    "contact_id",
    "user_name",
    "contact_ways",
    "status",
    "email",
    "age",
    "gender",
    "position",
    "industry",
    "contact_source",
    "from_channel_name",
    "searchword",
    "region",
    "corp_name",
    "corp_address",
    "is_repeat",
    "is_useless",
    "create_user_id",
    "owner_id",
    "claim_time",
    "create_time",
    "last_follow_time",
    "first_progress_time",
    "latest_progress_id",
    "tag_group_list",
    "business_list",
    "company_list",
    "related_customer",
    "contact_custom",
    "customer_stage",
    "plan_name",
    "group_name",
    "url",
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

/// A fresh contact id, the same 43-character shape as customer ids.
pub fn new_contact_id() -> String {
    base64url_id(&mut rand::rng(), 43)
}

/// The first record of a contact, derived from `(app_id, contact_id)` like customer records, so a test
/// that recreates the same contact sees the same person. `related_customer` names one WeCom friend
/// (type 1) about half the time.
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
    let related: Vec<Value> = if rng.random_bool(0.5) {
        vec![json!({ "id": base64url_id(&mut rng, 43), "type": 1 })]
    } else {
        Vec::new()
    };
    json!({
        "contact_id": contact_id,
        "user_name": name,
        "contact_ways": [{ "type": *[0, 1, 101].choose(&mut rng).unwrap_or(&0), "contact_way": mobile(&mut rng) }],
        "status": 1,
        "email": if rng.random_bool(0.4) { format!("user{}@example.com", rng.random_range(100..999)) } else { String::new() },
        "age": rng.random_range(22..60),
        "gender": rng.random_range(0..=2),
        "position": pick(&mut rng, &POSITIONS, ""),
        "industry": pick(&mut rng, &INDUSTRIES, ""),
        "contact_source": {
            "type": rng.random_range(1..=5),
            "component_id": base64url_id(&mut rng, 16),
            "component_name": pick(&mut rng, &CHANNELS, ""),
        },
        "from_channel_name": pick(&mut rng, &CHANNELS, ""),
        "searchword": "",
        "region": pick(&mut rng, &REGIONS, ""),
        "corp_name": pick(&mut rng, &CORPS, ""),
        "corp_address": "",
        "is_repeat": false,
        "is_useless": false,
        "create_user_id": owner,
        "owner_id": owner,
        "claim_time": create_time,
        "create_time": create_time,
        "last_follow_time": create_time,
        "first_progress_time": 0,
        "latest_progress_id": "",
        "tag_group_list": tag_groups(&mut rng, create_time),
        "business_list": [],
        "company_list": [],
        "related_customer": related,
        "contact_custom": {},
        "customer_stage": pick(&mut rng, &STAGES, ""),
        "plan_name": "",
        "group_name": "",
        "url": "",
    })
}

/// Edits a contact the way sales staff do: a follow-up always happens (`last_follow_time` strictly
/// increases and `latest_progress_id` changes, so two revisions never compare equal), plus a random
/// mix of stage, owner, tags and flags.
pub fn change_contact(record: &mut Value, revision: u64, now_ms: i64) {
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
    fields.insert(
        "latest_progress_id".into(),
        json!(format!("{}-{revision}", base64url_id(&mut rng, 24))),
    );
    if fields
        .get("first_progress_time")
        .and_then(Value::as_i64)
        .is_none_or(|t| t == 0)
    {
        fields.insert("first_progress_time".into(), json!(followed));
    }
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

fn tag_groups(rng: &mut impl Rng, at: i64) -> Value {
    let count = rng.random_range(0..=2);
    let groups: Vec<Value> = TAGS
        .choose_multiple(rng, count)
        .map(|(tag_id, tag_name, group_name)| {
            json!({
                "group_id": format!("grp-{group_name}"),
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
    fn a_contact_record_has_the_documented_fields() {
        let record = new_contact_record("wloa1", &new_contact_id(), 1_745_818_723_565);
        let object = record.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = CONTACT_FIELDS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(record["contact_id"].as_str().unwrap().len(), 43);
        assert!(record["contact_ways"][0]["contact_way"].is_string());
        assert!(record["related_customer"].is_array());
        assert!(record["customer_stage"].is_string());
        assert_eq!(record["create_time"].as_i64().unwrap() % 1000, 0);
    }

    #[test]
    fn the_same_contact_id_gives_the_same_person_and_changes_always_differ() {
        let a = new_contact_record("wloa1", "k", 1_745_818_723_000);
        assert_eq!(a, new_contact_record("wloa1", "k", 1_745_818_723_000));
        let mut b = a.clone();
        change_contact(&mut b, 1, 1_745_818_723_000);
        assert_ne!(a, b);
        assert!(b["last_follow_time"].as_i64() > a["last_follow_time"].as_i64());
        let before = b.clone();
        change_contact(&mut b, 2, 0);
        assert_ne!(
            before, b,
            "a clock that did not move still changes the record"
        );
    }
}
