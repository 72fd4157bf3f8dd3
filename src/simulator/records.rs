//! Realistic 19-field customer records (the `customer/batch` schema) and the edits `change_customer` makes.

use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The keys of a `customer_list[]` entry, in the order of the 3.6 doc page.
pub const RECORD_FIELDS: [&str; 19] = [
    "customer_id",
    "external_userid",
    "name",
    "avatar",
    "type",
    "gender",
    "unionid",
    "corp_name",
    "position",
    "remark",
    "description",
    "remark_mobiles",
    "tag_list",
    "follow_users",
    "customer_stage",
    "lost_state",
    "add_way",
    "create_time",
    "update_time",
];

pub(super) const SURNAMES: [&str; 12] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙",
];
pub(super) const GIVEN: [&str; 12] = [
    "伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "杰", "婷", "强",
];
pub(super) const CORPS: [&str; 6] = [
    "杭州云帆科技有限公司",
    "上海启明信息技术有限公司",
    "深圳微澜网络有限公司",
    "北京知行咨询有限公司",
    "成都锦程贸易有限公司",
    "广州星河传媒有限公司",
];
pub(super) const POSITIONS: [&str; 6] = [
    "采购经理",
    "技术总监",
    "市场专员",
    "CEO",
    "运营主管",
    "财务",
];
pub(super) const STAGES: [&str; 5] = ["初步接触", "需求确认", "方案报价", "商务谈判", "赢单"];
/// (tag_id, tag_name, group_name): tags come from a fixed tenant catalogue, as in a real corp.
pub(super) const TAGS: [(&str, &str, &str); 8] = [
    ("etK3vYCAAAx1", "高意向", "意向度"),
    ("etK3vYCAAAx2", "中意向", "意向度"),
    ("etK3vYCAAAx3", "低意向", "意向度"),
    ("etK3vYCAAAy1", "华东", "区域"),
    ("etK3vYCAAAy2", "华南", "区域"),
    ("etK3vYCAAAz1", "线上活动", "来源"),
    ("etK3vYCAAAz2", "转介绍", "来源"),
    ("etK3vYCAAAz3", "官网", "来源"),
];
pub(super) const STAFF: [&str; 5] = ["zhangsan", "lisi", "wangwu", "zhaoliu", "sunqi"];
/// WeCom's add_way values: 0 unknown, 1 QR code, 2 phone search, 3 card share, 9 group, 202 admin assign.
const ADD_WAYS: [i64; 6] = [0, 1, 2, 3, 9, 202];

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `len` characters of the base64url alphabet, the shape of Weiling's customer ids.
pub fn base64url_id(rng: &mut impl Rng, len: usize) -> String {
    (0..len)
        .filter_map(|_| BASE64URL.choose(rng).map(|&b| char::from(b)))
        .collect()
}

/// A fresh customer id: 43 base64url characters, like `wxicVEwD1-bdull1odNVzmsKLQJe4pZV2zQbnu4KJPc`.
pub fn new_customer_id() -> String {
    base64url_id(&mut rand::rng(), 43)
}

/// The first record of a customer. Everything but the times is derived from `(app_id, customer_id)`, so a
/// test that recreates the same customer sees the same person.
pub fn new_record(app_id: &str, customer_id: &str, now_ms: i64) -> Value {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(app_id.as_bytes())
        .chain_update([0u8])
        .chain_update(customer_id.as_bytes())
        .finalize()
        .into();
    let mut rng = StdRng::from_seed(seed);
    let wecom_user = rng.random_bool(0.2);
    let name = person_name(&mut rng);
    // Whole seconds, up to a year back: Weiling's times are milliseconds but always multiples of 1000.
    let create_time = (now_ms / 1000 - rng.random_range(0..365 * 86_400)) * 1000;
    let staff = pick(&mut rng, &STAFF, "zhangsan");
    let add_way = *ADD_WAYS.choose(&mut rng).unwrap_or(&0);
    json!({
        "customer_id": customer_id,
        "external_userid": format!("wm{}", Alphanumeric.sample_string(&mut rng, 30)),
        "name": name,
        "avatar": format!(
            "https://wework.qpic.cn/wwhead/duc2TvpEgST9hicuyypLEKR{}/0",
            Alphanumeric.sample_string(&mut rng, 24)
        ),
        "type": if wecom_user { 2 } else { 1 },
        "gender": rng.random_range(0..=2),
        "unionid": if wecom_user {
            String::new()
        } else {
            format!("oAmHd{}", base64url_id(&mut rng, 23))
        },
        "corp_name": if wecom_user || rng.random_bool(0.5) { pick(&mut rng, &CORPS, "") } else { "" },
        "position": pick(&mut rng, &POSITIONS, ""),
        "remark": format!("{name}-{}", pick(&mut rng, &CORPS, "")),
        "description": "",
        "remark_mobiles": [mobile(&mut rng)],
        "tag_list": tag_list(&mut rng),
        "follow_users": [{
            "userid": staff,
            "remark": name,
            "add_time": create_time,
            "add_way": add_way,
        }],
        "customer_stage": pick(&mut rng, &STAGES, ""),
        "lost_state": false,
        "add_way": add_way,
        "create_time": create_time,
        "update_time": now_ms.max(create_time),
    })
}

/// Edits a record the way staff do in Weiling: the remark always changes (it carries `revision`, so two
/// revisions never compare equal), plus a random mix of the other editable fields. `update_time` becomes
/// `now_ms`, or one past the old value when the clock has not moved, so it strictly increases.
pub fn change(record: &mut Value, revision: u64, now_ms: i64) {
    let mut rng = rand::rng();
    let Some(fields) = record.as_object_mut() else {
        return;
    };
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    fields.insert("remark".into(), json!(format!("{name} 第{revision}次跟进")));
    if rng.random_bool(0.5) {
        fields.insert("customer_stage".into(), json!(pick(&mut rng, &STAGES, "")));
    }
    if rng.random_bool(0.5) {
        fields.insert("tag_list".into(), tag_list(&mut rng));
    }
    if rng.random_bool(0.3) {
        fields.insert(
            "description".into(),
            json!(format!("需求更新于修订 {revision}")),
        );
    }
    if rng.random_bool(0.2) {
        fields.insert("remark_mobiles".into(), json!([mobile(&mut rng)]));
    }
    if rng.random_bool(0.15) {
        fields.insert("name".into(), json!(person_name(&mut rng)));
    }
    if rng.random_bool(0.1) {
        let lost = fields
            .get("lost_state")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        fields.insert("lost_state".into(), json!(!lost));
    }
    let previous = fields
        .get("update_time")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    fields.insert("update_time".into(), json!(now_ms.max(previous + 1)));
}

pub(super) fn pick<'a>(rng: &mut impl Rng, from: &[&'a str], fallback: &'a str) -> &'a str {
    from.choose(rng).copied().unwrap_or(fallback)
}

pub(super) fn person_name(rng: &mut impl Rng) -> String {
    let mut name = pick(rng, &SURNAMES, "王").to_owned();
    for _ in 0..rng.random_range(1..=2) {
        name.push_str(pick(rng, &GIVEN, "伟"));
    }
    name
}

pub(super) fn mobile(rng: &mut impl Rng) -> String {
    let prefix = pick(rng, &["138", "139", "151", "186", "177"], "138");
    format!("{prefix}{:08}", rng.random_range(0..100_000_000u32))
}

fn tag_list(rng: &mut impl Rng) -> Value {
    let count = rng.random_range(0..=3);
    let tags: Vec<Value> = TAGS
        .choose_multiple(rng, count)
        .map(|(tag_id, tag_name, group_name)| {
            json!({ "tag_id": tag_id, "tag_name": tag_name, "group_name": group_name })
        })
        .collect();
    Value::Array(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_has_exactly_the_19_documented_fields_with_their_types() {
        let record = new_record("wloa1", &new_customer_id(), 1_745_818_723_565);
        let object = record.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = RECORD_FIELDS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(object.len(), 19);

        assert_eq!(record["customer_id"].as_str().unwrap().len(), 43);
        let external = record["external_userid"].as_str().unwrap();
        assert!(external.starts_with("wm") && external.len() == 32);
        assert!(record["avatar"].as_str().unwrap().starts_with("https://"));
        assert!(matches!(record["type"].as_i64(), Some(1 | 2)));
        assert!(matches!(record["gender"].as_i64(), Some(0..=2)));
        for key in [
            "name",
            "unionid",
            "corp_name",
            "position",
            "remark",
            "description",
        ] {
            assert!(record[key].is_string(), "{key}");
        }
        assert!(record["remark_mobiles"][0].is_string());
        for tag in record["tag_list"].as_array().unwrap() {
            assert!(tag["tag_id"].is_string() && tag["tag_name"].is_string());
            assert!(tag["group_name"].is_string());
        }
        let follow = &record["follow_users"][0];
        assert!(follow["userid"].is_string() && follow["remark"].is_string());
        assert!(follow["add_time"].is_i64() && follow["add_way"].is_i64());
        assert!(record["customer_stage"].is_string());
        assert!(record["lost_state"].is_boolean());
        assert!(record["add_way"].is_i64());
        let created = record["create_time"].as_i64().unwrap();
        assert_eq!(created % 1000, 0);
        assert!(record["update_time"].as_i64().unwrap() >= created);
    }

    #[test]
    fn the_same_customer_id_gives_the_same_person() {
        let a = new_record("wloa1", "same-id", 1_745_818_723_000);
        let b = new_record("wloa1", "same-id", 1_745_818_723_000);
        assert_eq!(a, b);
    }

    #[test]
    fn change_edits_content_and_strictly_increases_update_time() {
        let mut record = new_record("wloa1", "id", 1_745_818_723_000);
        let before = record.clone();
        change(&mut record, 1, 1_745_818_723_000);
        assert_ne!(record["remark"], before["remark"]);
        assert_eq!(record["update_time"].as_i64(), Some(1_745_818_723_001));
        assert_eq!(record.as_object().unwrap().len(), 19);
    }
}
