//! Customer records exactly as `POST /openapi/customer/batch` returns them: the 19 fields of the seed
//! page (shared/spec/seed-customer-batch.txt) with its JSON types, its nested objects and lists, and the
//! edits [`change`] makes. [`SCHEMA`] keeps the page's field order.
//!
//! The seed has no update time, so the version of a record is kept in a documented field: after the
//! n-th change the first follow user's `remark` ends in ` #n` (a staff member numbering the notes of
//! a customer they keep revising). [`revision`] reads it back, which lets tests and ledgers order two
//! states of a customer without any field Weiling does not send.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The keys of a `customer_list[]` entry, in the seed's order.
pub const RECORD_FIELDS: [&str; 19] = [
    "customer_id",
    "external_userid",
    "name",
    "avatar",
    "type",
    "gender",
    "position",
    "corp_name",
    "corp_full_name",
    "customer_stage",
    "remark_mobiles",
    "lost_state",
    "unionid",
    "follow_users",
    "company_list",
    "business_list",
    "clue_list",
    "latest_progress_id",
    "first_progress_time",
];

/// The keys of a `follow_users[]` entry, in the seed's order. Its `lost_state` is an int (0/1) while
/// the record's is a bool: the seed types them so.
pub const FOLLOW_USER_FIELDS: [&str; 15] = [
    "add_way",
    "remark_corp_name",
    "position",
    "tags",
    "lost_state",
    "create_time",
    "userid",
    "remark",
    "description",
    "remark_mobiles",
    "add_source",
    "qq",
    "email",
    "wx_id",
    "customer_custom_field",
];

/// The keys of a follow user's `tags[]` entry, in the seed's order.
pub const TAG_FIELDS: [&str; 5] = ["group_id", "group_name", "tag_id", "tag_name", "type"];
/// The keys of a follow user's `add_source`, in the seed's order; all three are strings.
pub const ADD_SOURCE_FIELDS: [&str; 3] = ["type", "id", "name"];
pub const COMPANY_FIELDS: [&str; 2] = ["company_id", "company_name"];
pub const BUSINESS_FIELDS: [&str; 2] = ["business_id", "business_name"];
pub const CLUE_FIELDS: [&str; 1] = ["clue_id"];

/// Every object of a record by its path (`[]` stands for the elements of a list), with its keys in the
/// seed's order. A `serde_json` object keeps its keys sorted, so on the wire the order is alphabetical;
/// this table is where the documented order lives, and the seed test holds it to the page.
pub const SCHEMA: [(&str, &[&str]); 7] = [
    ("", &RECORD_FIELDS),
    ("follow_users[]", &FOLLOW_USER_FIELDS),
    ("follow_users[].tags[]", &TAG_FIELDS),
    ("follow_users[].add_source", &ADD_SOURCE_FIELDS),
    ("company_list[]", &COMPANY_FIELDS),
    ("business_list[]", &BUSINESS_FIELDS),
    ("clue_list[]", &CLUE_FIELDS),
];

/// What separates a remark from the revision number [`change`] appends to it.
const REVISION_MARK: &str = " #";

pub(super) const SURNAMES: [&str; 12] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙",
];
pub(super) const GIVEN: [&str; 12] = [
    "伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "杰", "婷", "强",
];
/// (short name, registered full name): `corp_name` and `corp_full_name` of one company.
pub(super) const CORPS: [(&str, &str); 6] = [
    ("云帆科技", "杭州云帆科技有限公司"),
    ("启明信息", "上海启明信息技术有限公司"),
    ("微澜网络", "深圳微澜网络有限公司"),
    ("知行咨询", "北京知行咨询有限公司"),
    ("锦程贸易", "成都锦程贸易有限公司"),
    ("星河传媒", "广州星河传媒有限公司"),
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
/// (tag_id, tag_name, group_id, group_name): tags come from a fixed tenant catalogue, as in a real corp.
pub(super) const TAGS: [(&str, &str, &str, &str); 8] = [
    ("etK3vYCAAAx1", "高意向", "etK3vYCAAAg1", "意向度"),
    ("etK3vYCAAAx2", "中意向", "etK3vYCAAAg1", "意向度"),
    ("etK3vYCAAAx3", "低意向", "etK3vYCAAAg1", "意向度"),
    ("etK3vYCAAAy1", "华东", "etK3vYCAAAg2", "区域"),
    ("etK3vYCAAAy2", "华南", "etK3vYCAAAg2", "区域"),
    ("etK3vYCAAAz1", "线上活动", "etK3vYCAAAg3", "来源"),
    ("etK3vYCAAAz2", "转介绍", "etK3vYCAAAg3", "来源"),
    ("etK3vYCAAAz3", "官网", "etK3vYCAAAg3", "来源"),
];
pub(super) const STAFF: [&str; 5] = ["zhangsan", "lisi", "wangwu", "zhaoliu", "sunqi"];
/// WeCom's add_way values: 0 unknown, 1 QR code, 2 phone search, 3 card share, 9 group, 202 admin assign.
const ADD_WAYS: [i64; 6] = [0, 1, 2, 3, 9, 202];
/// (type, name) of `add_source`. The seed types all three members as strings and documents no values,
/// so these are stand-ins shaped like Weiling's acquisition channels.
const ADD_SOURCES: [(&str, &str); 4] = [
    ("1", "官网活码"),
    ("1", "展会海报码"),
    ("2", "获客助手链接"),
    ("3", "裂变活动"),
];
const NEEDS: [&str; 5] = [
    "关注私有化部署",
    "预算在季度末审批",
    "需要对接现有ERP",
    "要求先试用两周",
    "对价格敏感",
];
const PROJECTS: [&str; 4] = ["年度采购", "系统升级", "试点项目", "续费扩容"];

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` characters of the base64url alphabet, the shape of Weiling's customer ids.
pub fn base64url_id(rng: &mut impl Rng, len: usize) -> String {
    from_alphabet(rng, BASE64URL, len)
}

fn alphanumeric(rng: &mut impl Rng, len: usize) -> String {
    from_alphabet(rng, ALPHANUMERIC, len)
}

fn from_alphabet(rng: &mut impl Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .filter_map(|_| alphabet.choose(rng).map(|&b| char::from(b)))
        .collect()
}

/// A fresh customer id: 43 base64url characters, like `wxicVEwD1-bdull1odNVzmsKLQJe4pZV2zQbnu4KJPc`.
pub fn new_customer_id() -> String {
    base64url_id(&mut rand::rng(), 43)
}

/// Which version of a customer this record is: 0 as created, n after the simulator's n-th change.
/// `None` for a value without a first follow user's `remark` (not a customer record).
pub fn revision(record: &Value) -> Option<u64> {
    let remark = record.pointer("/follow_users/0/remark")?.as_str()?;
    Some(
        remark
            .rsplit_once(REVISION_MARK)
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0),
    )
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
    // Type 2 is a WeCom user, whose corp WeCom itself reports; a WeChat user (type 1) has none.
    let wecom_user = rng.random_bool(0.2);
    let name = person_name(&mut rng);
    let position = pick(&mut rng, &POSITIONS, "");
    // Whole seconds, up to a year back: Weiling's times are milliseconds but always multiples of 1000.
    let create_time = (now_ms / 1000 - rng.random_range(0..365 * 86_400)) * 1000;
    let corp = CORPS.choose(&mut rng).copied().unwrap_or(("", ""));
    let (corp_name, corp_full_name) = if wecom_user { corp } else { ("", "") };
    let mobiles: Vec<String> = (0..rng.random_range(0..=2))
        .map(|_| mobile(&mut rng))
        .collect();

    let mut follow_users = vec![follow_user(
        &mut rng,
        &name,
        corp,
        position,
        &mobiles,
        create_time,
    )];
    // Now and then two staff members have added the same person.
    if rng.random_bool(0.15) {
        let later = create_time + rng.random_range(0..30 * 86_400) * 1000;
        follow_users.push(follow_user(
            &mut rng,
            &name,
            corp,
            position,
            &[],
            later.min(now_ms / 1000 * 1000),
        ));
    }

    let company_list = if rng.random_bool(0.4) {
        json!([{ "company_id": base64url_id(&mut rng, 32), "company_name": corp.1 }])
    } else {
        json!([])
    };
    let business_list = if rng.random_bool(0.25) {
        json!([{
            "business_id": base64url_id(&mut rng, 32),
            "business_name": format!("{}{}", corp.0, pick(&mut rng, &PROJECTS, "")),
        }])
    } else {
        json!([])
    };
    // A customer that came in as a phone-number clue keeps the clue it was converted from.
    let clue_list = if rng.random_bool(0.3) {
        json!([{ "clue_id": base64url_id(&mut rng, 43) }])
    } else {
        json!([])
    };
    let (latest_progress_id, first_progress_time) = if rng.random_bool(0.5) {
        let first = (create_time / 1000 + rng.random_range(0..7 * 86_400)).min(now_ms / 1000);
        (base64url_id(&mut rng, 32), first * 1000)
    } else {
        (String::new(), 0)
    };

    json!({
        "customer_id": customer_id,
        "external_userid": format!(
            "{}{}",
            if wecom_user { "wo" } else { "wm" },
            alphanumeric(&mut rng, 30)
        ),
        "name": name,
        "avatar": format!(
            "https://wework.qpic.cn/wwhead/duc2TvpEgST9hicuyypLEKR{}/0",
            alphanumeric(&mut rng, 24)
        ),
        "type": if wecom_user { 2 } else { 1 },
        "gender": rng.random_range(0..=2),
        "position": position,
        "corp_name": corp_name,
        "corp_full_name": corp_full_name,
        "customer_stage": pick(&mut rng, &STAGES, ""),
        "remark_mobiles": mobiles,
        "lost_state": false,
        "unionid": if wecom_user {
            String::new()
        } else {
            format!("oAmHd{}", base64url_id(&mut rng, 23))
        },
        "follow_users": follow_users,
        "company_list": company_list,
        "business_list": business_list,
        "clue_list": clue_list,
        "latest_progress_id": latest_progress_id,
        "first_progress_time": first_progress_time,
    })
}

/// One staff member's relation to the customer: their remark, tags and notes on this person.
fn follow_user(
    rng: &mut impl Rng,
    name: &str,
    corp: (&str, &str),
    position: &str,
    mobiles: &[String],
    create_time: i64,
) -> Value {
    let add_way = *ADD_WAYS.choose(rng).unwrap_or(&0);
    let (source_type, source_name) = ADD_SOURCES.choose(rng).copied().unwrap_or(("", ""));
    let noted_corp = rng.random_bool(0.6);
    let remark = if noted_corp {
        format!("{name}-{}", corp.0)
    } else {
        name.to_owned()
    };
    json!({
        "add_way": add_way,
        "remark_corp_name": if noted_corp { corp.1 } else { "" },
        "position": if rng.random_bool(0.5) { position } else { "" },
        "tags": tags(rng),
        "lost_state": 0,
        "create_time": create_time,
        "userid": pick(rng, &STAFF, "zhangsan"),
        "remark": remark,
        "description": if rng.random_bool(0.3) { pick(rng, &NEEDS, "") } else { "" },
        "remark_mobiles": mobiles,
        "add_source": {
            "type": source_type,
            "id": base64url_id(rng, 16),
            "name": source_name,
        },
        "qq": if rng.random_bool(0.2) {
            rng.random_range(10_000_000u32..3_000_000_000).to_string()
        } else {
            String::new()
        },
        "email": if rng.random_bool(0.3) {
            format!("{}@example.com", alphanumeric(rng, 8).to_lowercase())
        } else {
            String::new()
        },
        "wx_id": if rng.random_bool(0.3) {
            format!("wxid_{}", alphanumeric(rng, 14).to_lowercase())
        } else {
            String::new()
        },
        // Typed string in the seed, with no documented content; empty as for a tenant without custom fields.
        "customer_custom_field": "",
    })
}

/// Edits a record the way staff do in Weiling. The first follow user's remark always changes: it carries
/// `revision` (see [`revision`]), so two revisions never compare equal. A random mix of the other
/// editable fields changes too: stage, tags, notes, mobiles, the nickname, a linked company, a new
/// follow-up, rarely the churn state. `now_ms` dates a first follow-up.
pub fn change(record: &mut Value, revision: u64, now_ms: i64) {
    let mut rng = rand::rng();
    let Some(fields) = record.as_object_mut() else {
        return;
    };
    if let Some(first) = follow_user_mut(fields, 0) {
        let remark = first
            .get("remark")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let base = remark
            .rsplit_once(REVISION_MARK)
            .filter(|(_, n)| n.parse::<u64>().is_ok())
            .map_or(remark, |(base, _)| base)
            .to_owned();
        first.insert(
            "remark".into(),
            json!(format!("{base}{REVISION_MARK}{revision}")),
        );
        if rng.random_bool(0.4) {
            first.insert("tags".into(), tags(&mut rng));
        }
        if rng.random_bool(0.3) {
            first.insert("description".into(), json!(pick(&mut rng, &NEEDS, "")));
        }
    }
    if rng.random_bool(0.5) {
        fields.insert("customer_stage".into(), json!(pick(&mut rng, &STAGES, "")));
    }
    if rng.random_bool(0.2) {
        let mobiles = json!([mobile(&mut rng)]);
        if let Some(first) = follow_user_mut(fields, 0) {
            first.insert("remark_mobiles".into(), mobiles.clone());
        }
        fields.insert("remark_mobiles".into(), mobiles);
    }
    if rng.random_bool(0.15) {
        fields.insert("name".into(), json!(person_name(&mut rng)));
    }
    if rng.random_bool(0.15) {
        let corp = CORPS.choose(&mut rng).copied().unwrap_or(("", ""));
        fields.insert(
            "company_list".into(),
            json!([{ "company_id": base64url_id(&mut rng, 32), "company_name": corp.1 }]),
        );
    }
    if rng.random_bool(0.3) {
        record_progress(fields, &mut rng, now_ms / 1000 * 1000);
    }
    if rng.random_bool(0.05) {
        let lost = !fields
            .get("lost_state")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        fields.insert("lost_state".into(), json!(lost));
        // The record's bool and each follow user's 0/1 tell the same story.
        if let Some(users) = fields.get_mut("follow_users").and_then(Value::as_array_mut) {
            for user in users.iter_mut().filter_map(Value::as_object_mut) {
                user.insert("lost_state".into(), json!(i64::from(lost)));
            }
        }
    }
}

fn follow_user_mut(
    fields: &mut Map<String, Value>,
    index: usize,
) -> Option<&mut Map<String, Value>> {
    fields
        .get_mut("follow_users")?
        .as_array_mut()?
        .get_mut(index)?
        .as_object_mut()
}

/// A follow-up was written at `at_ms`: a new `latest_progress_id`, and `first_progress_time` if
/// this is the first one. Customers and contacts carry both fields.
pub(super) fn record_progress(
    fields: &mut serde_json::Map<String, Value>,
    rng: &mut impl Rng,
    at_ms: i64,
) {
    fields.insert("latest_progress_id".into(), json!(base64url_id(rng, 32)));
    if fields
        .get("first_progress_time")
        .and_then(Value::as_i64)
        .is_none_or(|t| t == 0)
    {
        fields.insert("first_progress_time".into(), json!(at_ms));
    }
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

/// A follow user's tags. `type` is a string in the seed; "1" is WeCom's corp tag, the kind a tenant's
/// catalogue holds.
fn tags(rng: &mut impl Rng) -> Value {
    let count = rng.random_range(0..=3);
    let tags: Vec<Value> = TAGS
        .choose_multiple(rng, count)
        .map(|(tag_id, tag_name, group_id, group_name)| {
            json!({
                "group_id": group_id,
                "group_name": group_name,
                "tag_id": tag_id,
                "tag_name": tag_name,
                "type": "1",
            })
        })
        .collect();
    Value::Array(tags)
}

#[cfg(test)]
mod tests;
