//! Decrypted callback events as Weiling builds them: the `{header, event}` JSON and a builder for every
//! event of the catalog in weiling-events.md, with its documented `event_type` and `event` fields.
//!
//! Field values are realistic but made up. Where the catalog names a field without its type or shape
//! the builder's doc says what was assumed; events whose page was not found carry only the id their
//! family implies. [`catalog_samples`] gives one event of every type (one per documented discriminator
//! value) about ids the caller chooses.

use std::time::SystemTime;

use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::contacts::new_contact_record;
use super::records::{CORPS, STAFF, base64url_id, mobile, new_record, person_name, pick};
use weiling_proto::unix_ms;

/// How the header carries its time. Weiling's pages disagree (weiling-api.md §5.6), so a receiver must
/// accept all four; senders pick one per event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeaderStyle {
    /// `"time_stamp": "1745818723565"`, the new-format pages' example.
    #[default]
    TimeStampString,
    /// `"time_stamp": 1745818723565`, as the field table types it (`long`).
    TimeStampNumber,
    /// `"timestamp": "1745818723565"`, the older pages' name.
    TimestampString,
    /// `"timestamp": 1745818723565`.
    TimestampNumber,
}

impl HeaderStyle {
    pub const ALL: [HeaderStyle; 4] = [
        Self::TimeStampString,
        Self::TimeStampNumber,
        Self::TimestampString,
        Self::TimestampNumber,
    ];

    /// A deterministic mix for the n-th event: mostly the documented form, one in ten of each quirk, so
    /// a long run exercises every form and a rerun exercises the same ones.
    pub fn varied(n: u64) -> Self {
        match n % 10 {
            7 => Self::TimeStampNumber,
            8 => Self::TimestampString,
            9 => Self::TimestampNumber,
            _ => Self::TimeStampString,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::TimeStampString | Self::TimeStampNumber => "time_stamp",
            Self::TimestampString | Self::TimestampNumber => "timestamp",
        }
    }

    fn value(self, ms: u64) -> Value {
        match self {
            Self::TimeStampString | Self::TimestampString => json!(ms.to_string()),
            Self::TimeStampNumber | Self::TimestampNumber => json!(ms),
        }
    }
}

/// The decrypted JSON of one callback with the documented header (`time_stamp` as a 13-digit ms string).
pub fn event_json(app_id: &str, event_type: &str, event: Value) -> Vec<u8> {
    event_json_with(app_id, event_type, event, HeaderStyle::default())
}

/// [`event_json`] with the header time in the given form.
pub fn event_json_with(
    app_id: &str,
    event_type: &str,
    event: Value,
    style: HeaderStyle,
) -> Vec<u8> {
    let mut header = Map::new();
    header.insert("to_app".into(), json!(app_id));
    header.insert("event_type".into(), json!(event_type));
    header.insert(style.key().into(), style.value(now_ms()));
    json!({ "header": header, "event": event })
        .to_string()
        .into_bytes()
}

/// One event before it is addressed to an app: its type and its `event` object.
#[derive(Clone, Debug, PartialEq)]
pub struct SimEvent {
    pub event_type: String,
    pub event: Value,
}

impl SimEvent {
    pub fn new(event_type: &str, event: Value) -> Self {
        Self {
            event_type: event_type.to_owned(),
            event,
        }
    }

    pub fn to_json(&self, app_id: &str) -> Vec<u8> {
        self.to_json_with(app_id, HeaderStyle::default())
    }

    pub fn to_json_with(&self, app_id: &str, style: HeaderStyle) -> Vec<u8> {
        event_json_with(app_id, &self.event_type, self.event.clone(), style)
    }
}

/// Every `event_type` of weiling-events.md that has a builder here, in the catalog's order, followed
/// by the types the catalog table leaves out (the 新版 and contact events).
pub const CATALOG_EVENT_TYPES: [&str; 29] = [
    "user_insert",
    "user_update",
    "add_customer",
    "customer_update",
    "history_add",
    "clue_history",
    "clue_add",
    "clue_update",
    "progress_add",
    "company_add",
    "company_update",
    "company_delete",
    "add_company_user",
    "opportunity_add",
    "opportunity_update",
    "material_add",
    "group_chat_add",
    "group_chat_update",
    "group_chat_dismiss",
    "tag_update",
    "add_moment",
    "dept_add",
    "company_owner_change",
    "material_browse_add",
    "company_v2_update",
    "company_customer_add",
    "tag_update_v2",
    "contact_add",
    "contact_update",
];

/// The `change_type` of `customer_update` (企微好友更新).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CustomerChange {
    /// `change_remark`, 修改备注信息: what the simulator's `change_customer` does every time.
    Remark,
    /// `change_company`, 关联企业.
    Company,
    /// `customer_loss`, 企微好友流失.
    Loss,
}

impl CustomerChange {
    pub const ALL: [Self; 3] = [Self::Remark, Self::Company, Self::Loss];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Remark => "change_remark",
            Self::Company => "change_company",
            Self::Loss => "customer_loss",
        }
    }
}

/// The `change_type` of `clue_update` (手机号线索更新).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClueChange {
    Content,
    Owner,
    Status,
    Disuse,
}

impl ClueChange {
    pub const ALL: [Self; 4] = [Self::Content, Self::Owner, Self::Status, Self::Disuse];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Content => "change_content",
            Self::Owner => "change_owner",
            Self::Status => "change_status",
            Self::Disuse => "clue_disuse",
        }
    }
}

/// The `change_type` of `group_chat_update` (群更新).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupChatChange {
    /// `change_company`, 群关联企业变更.
    Company,
    /// `change_owner`, 群主变更.
    Owner,
}

impl GroupChatChange {
    pub const ALL: [Self; 2] = [Self::Company, Self::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Company => "change_company",
            Self::Owner => "change_owner",
        }
    }
}

/// What the `id` of the old `tag_update` names; its `type` is a string on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagObject {
    /// "1", 客户 (a customer id).
    Customer,
    /// "0", 线索 (a clue id): the old pages' meaning of 0.
    Clue,
    /// "3", 企业 (a company id).
    Company,
}

impl TagObject {
    pub const ALL: [Self; 3] = [Self::Customer, Self::Clue, Self::Company];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "1",
            Self::Clue => "0",
            Self::Company => "3",
        }
    }
}

/// What the `id` of `tag_update_v2` names; its `type` is an int on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagObjectV2 {
    /// 0, 联系人 (a contact id): the new pages' meaning of 0.
    Contact,
    /// 3, 企业 (a company id).
    Company,
}

impl TagObjectV2 {
    pub const ALL: [Self; 2] = [Self::Contact, Self::Company];

    pub fn code(self) -> i64 {
        match self {
            Self::Contact => 0,
            Self::Company => 3,
        }
    }
}

/// `user_insert` (员工新增) for a staff member; names no customer or contact.
pub fn user_insert(userid: &str) -> SimEvent {
    user_event("user_insert", userid)
}

/// `user_update` (员工更新) for a staff member; names no customer or contact.
pub fn user_update(userid: &str) -> SimEvent {
    user_event("user_update", userid)
}

/// The same staff member always has the same profile, as in a real directory.
fn user_event(event_type: &str, userid: &str) -> SimEvent {
    let mut rng = seeded(&["user", userid]);
    SimEvent::new(
        event_type,
        json!({
            "userid": userid,
            "name": person_name(&mut rng),
            "mobile": mobile(&mut rng),
            "position": pick(&mut rng, &["销售经理", "客户成功", "售前顾问", "销售总监"], ""),
            "gender": rng.random_range(0..=2),
            "email": format!("{userid}@example.com"),
            "avatar": format!(
                "https://wework.qpic.cn/wwpic/{}/0",
                Alphanumeric.sample_string(&mut rng, 20)
            ),
            "telephone": "",
            "alias": "",
            // 1 已激活; 2 已禁用, 4 未激活 and 5 退出企业 are the others.
            "status": 1,
            // 1 正常, 0 禁用.
            "saas_status": 1,
        }),
    )
}

/// `add_customer` (添加企微好友) for a record from the simulator, so the event and a later
/// `customer/batch` agree. `userid` is the staff member who added the friend.
pub fn add_customer(record: &Value) -> SimEvent {
    SimEvent::new("add_customer", customer_fields(record))
}

/// `customer_update` (企微好友更新) for a record from the simulator: `add_customer`'s fields plus
/// `change_type`; `userid` is the staff member who made the change. A `Loss` event reports
/// `lost_state` true, since that is the change it announces.
pub fn customer_update(record: &Value, change: CustomerChange) -> SimEvent {
    let mut event = customer_fields(record);
    if let Some(fields) = event.as_object_mut() {
        if change == CustomerChange::Loss {
            fields.insert("lost_state".into(), json!(true));
        }
        fields.insert("change_type".into(), json!(change.as_str()));
    }
    SimEvent::new("customer_update", event)
}

/// [`customer_update`] about an id the caller holds no record of (one Weiling may not know): the
/// profile fields are the ones the simulator would make up for that id.
pub fn customer_update_for(customer_id: &str, change: CustomerChange) -> SimEvent {
    customer_update(&new_record("", customer_id, now_ms_i64()), change)
}

/// The fields `add_customer` and `customer_update` share, in the catalog's order. `remark_corp_name`
/// is the adding staff member's, the first follow user's.
fn customer_fields(record: &Value) -> Value {
    let field = |key: &str| record.get(key).cloned().unwrap_or(Value::Null);
    let follow = |key: &str| {
        record
            .pointer(&format!("/follow_users/0/{key}"))
            .cloned()
            .unwrap_or_else(|| json!(""))
    };
    json!({
        "customer_id": field("customer_id"),
        "external_userid": field("external_userid"),
        "userid": follow("userid"),
        "name": field("name"),
        "avatar": field("avatar"),
        "type": field("type"),
        "gender": field("gender"),
        "position": field("position"),
        "corp_name": field("corp_name"),
        "corp_full_name": field("corp_full_name"),
        "remark_corp_name": follow("remark_corp_name"),
        "remark_mobiles": field("remark_mobiles"),
        "lost_state": field("lost_state"),
    })
}

/// `history_add` (企微好友动态新增): a journey entry of the customer; 201 follow-up, 202 friend added,
/// 208 churned, … (weiling-events.md lists them all).
pub fn history_add(customer_id: &str, history_type: i64) -> SimEvent {
    let (title, contents) = match history_type {
        101..=105 => ("浏览资料", "产品白皮书.pdf"),
        201 => ("新增跟进", "电话沟通了产品报价"),
        202 => ("添加企微好友", "通过扫描二维码添加"),
        203 => ("提交表单", "预约演示"),
        205 => ("新增商机", "年度采购"),
        208 => ("客户流失", "客户删除了员工"),
        _ => ("客户动态", ""),
    };
    SimEvent::new(
        "history_add",
        json!({
            "customer_id": customer_id,
            "history": {
                "history_id": base64url_id(&mut rand::rng(), 32),
                "history_type": history_type,
                "create_time": whole_second_ms(),
                "create_user_id": staff_id(),
                "title": title,
                "contents": contents,
            },
        }),
    )
}

/// `clue_history` (手机号线索动态新增). `history_type` is a string, as the schema types it (the
/// examples show both forms); the body field is `content`, not `history_add`'s `contents`.
pub fn clue_history(clue_id: &str, history_type: i64) -> SimEvent {
    let title = match history_type {
        201 => "新增跟进",
        400 => "发送短信",
        401 => "创建线索",
        501 => "分配线索",
        502 => "领取线索",
        503 => "转移线索",
        _ => "线索动态",
    };
    SimEvent::new(
        "clue_history",
        json!({
            "clue_id": clue_id,
            "history": {
                "history_id": base64url_id(&mut rand::rng(), 32),
                "history_type": history_type.to_string(),
                "create_time": whole_second_ms(),
                "title": title,
                "content": "",
            },
        }),
    )
}

/// `clue_add` (手机号线索新增). Its page was not found: the body is assumed, only the `clue_id` the
/// clue family carries.
pub fn clue_add(clue_id: &str) -> SimEvent {
    SimEvent::new("clue_add", json!({ "clue_id": clue_id }))
}

/// `clue_update` (手机号线索更新). A clue converted into a WeCom friend (`converted_to`) has status 3
/// and names the customer; a disused one has `is_useless` set. The profile fields the page mentions
/// beyond `mobile` are not listed, so none are sent; `is_useless` being a bool is assumed.
pub fn clue_update(clue_id: &str, converted_to: Option<&str>, change: ClueChange) -> SimEvent {
    let owner = staff_id();
    let mut rng = rand::rng();
    SimEvent::new(
        "clue_update",
        json!({
            "clue_id": clue_id,
            "customer_id": converted_to.unwrap_or_default(),
            "owner_id": owner,
            "create_user_id": staff_id(),
            "sea_id": base64url_id(&mut rng, 24),
            // 0 公海, 1 已领取, 3 已转化(企微好友), 4 线索池.
            "status": if converted_to.is_some() { 3 } else { 1 },
            "is_useless": change == ClueChange::Disuse,
            "mobile": mobile(&mut rng),
            "change_type": change.as_str(),
        }),
    )
}

/// A follow-up on a 企微好友 (`type` 1): `business_related_id` is the customer id.
pub fn progress_add_customer(customer_id: &str) -> SimEvent {
    progress_add(1, customer_id)
}

/// A follow-up on a phone-number clue (`type` 0); the relay must not take the clue id for a customer.
pub fn progress_add_clue(clue_id: &str) -> SimEvent {
    progress_add(0, clue_id)
}

/// `progress_add` (跟进记录新增) about an object of `kind`: 0 手机号线索, 1 企微好友, 3 企业, 4 访客,
/// 6 群, 7 商机; `business_related_id` is that object's id. `image_file` holds comma-separated URLs.
pub fn progress_add(kind: i64, related_id: &str) -> SimEvent {
    SimEvent::new(
        "progress_add",
        json!({
            "progress_id": base64url_id(&mut rand::rng(), 32),
            "create_user_id": staff_id(),
            "type": kind,
            "business_related_id": related_id,
            "content": "电话回访,客户对方案感兴趣",
            "image_file": "",
            "remark": "",
            "create_time": whole_second_ms(),
        }),
    )
}

/// `company_add` (企业新增, 即将废弃). `related` are the 相关人 as (id, type): type 0 is a contact
/// id, 4 a visitor id.
pub fn company_add(company_id: &str, related: &[(&str, i64)]) -> SimEvent {
    let company = Company::of(company_id);
    SimEvent::new(
        "company_add",
        json!({
            "company_id": company_id,
            "creator": company.creator(),
            "user_list": [staff_ref()],
            "customer_list": related
                .iter()
                .map(|(id, kind)| json!({ "id": id, "type": kind, "nick_name": nick_name() }))
                .collect::<Vec<_>>(),
            "status": 1,
            "credit_code": company.credit_code,
            "abbreviation": company.abbreviation,
            "company_name": company.name,
            "create_time": company.create_time,
        }),
    )
}

/// `company_update` (企业更新, 即将废弃). The people in `user_list` carry type 3 as in the page's
/// example (the values are undocumented); `mobile` is a string here, as the page lists it.
pub fn company_update(company_id: &str) -> SimEvent {
    let company = Company::of(company_id);
    let mut rng = rand::rng();
    SimEvent::new(
        "company_update",
        json!({
            "company_id": company_id,
            "user_list": [{
                "id": base64url_id(&mut rng, 43),
                "nick_name": nick_name(),
                "type": 3,
                "mobile": mobile(&mut rng),
                "op_user_id": staff_id(),
                "remark": "",
            }],
            "creator": company.creator(),
            "credit_code": company.credit_code,
            "status": 1,
            "abbreviation": company.abbreviation,
            "company_name": company.name,
            "create_time": company.create_time,
        }),
    )
}

/// 企业更新-新版 (测试中). The name is assumed: the page's path slot says `company_v2_update`, its only
/// example header `company_v2_add`. `customer_list` names contacts (type 0); `user_list` (协作人) is
/// assumed to have `company_add`'s shape.
pub fn company_v2_update(company_id: &str, contact_ids: &[&str]) -> SimEvent {
    let company = Company::of(company_id);
    SimEvent::new(
        "company_v2_update",
        json!({
            "company_id": company_id,
            "abbreviation": company.abbreviation,
            "company_name": company.name,
            "create_time": company.create_time,
            "creator": company.creator(),
            "customer_list": contact_list(contact_ids),
            "user_list": [staff_ref()],
        }),
    )
}

/// `add_company_user` (添加企业相关人). The people's type values are undocumented (the example has 3);
/// the shape of `staff_list` (内部协助人) is assumed to be `company_add`'s user entries, and `mobiles`
/// an array like `mobile`.
pub fn add_company_user(company_id: &str) -> SimEvent {
    let mut rng = rand::rng();
    let mobiles = [mobile(&mut rng)];
    SimEvent::new(
        "add_company_user",
        json!({
            "company_id": company_id,
            "staff_list": [staff_ref()],
            "user_list": [{
                "id": base64url_id(&mut rng, 43),
                "nick_name": nick_name(),
                "type": 3,
                "mobile": mobiles,
                "op_user_id": staff_id(),
                "remark": "",
                "mobiles": mobiles,
            }],
        }),
    )
}

/// `company_customer_add` (新版添加企业外部相关人, 测试中): the contacts (type 0) now related to the company.
pub fn company_customer_add(company_id: &str, contact_ids: &[&str]) -> SimEvent {
    let company = Company::of(company_id);
    SimEvent::new(
        "company_customer_add",
        json!({
            "company_id": company_id,
            "customer_list": contact_list(contact_ids),
            "user_list": [staff_ref()],
            "creator": company.creator(),
            "abbreviation": company.abbreviation,
            "company_name": company.name,
            "create_time": company.create_time,
        }),
    )
}

/// `opportunity_add` (商机新增). Amounts are numbers in yuan and dates ms timestamps: the page names
/// them without types. `except_*` is Weiling's spelling.
pub fn opportunity_add(business_id: &str, company_id: &str) -> SimEvent {
    SimEvent::new("opportunity_add", opportunity(business_id, company_id))
}

/// `opportunity_update` (商机更新): `opportunity_add`'s fields plus `change_type` (`change_stage`),
/// the update time and the winning figures.
pub fn opportunity_update(business_id: &str, company_id: &str) -> SimEvent {
    let mut event = opportunity(business_id, company_id);
    if let Some(fields) = event.as_object_mut() {
        let now = whole_second_ms();
        fields.insert("stage".into(), json!(4));
        fields.insert("change_type".into(), json!("change_stage"));
        fields.insert("update_time".into(), json!(now));
        fields.insert("winning_amount".into(), json!(180_000));
        fields.insert("winning_date".into(), json!(now));
        fields.insert("approval_completion_time".into(), json!(now));
    }
    SimEvent::new("opportunity_update", event)
}

fn opportunity(business_id: &str, company_id: &str) -> Value {
    let company = Company::of(company_id);
    let owner = staff_id();
    let created = whole_second_ms();
    json!({
        "business_id": business_id,
        "business_opp_number": format!("BO{}", created / 1000),
        "business_name": format!("{}年度采购", company.abbreviation),
        "company_id": company_id,
        "stage": 1,
        "owner_id": owner,
        "except_amount": 200_000,
        "except_date": created + 30 * 86_400_000,
        "create_user_id": owner,
        "create_time": created,
    })
}

/// `material_add` (资料新增): a file (type 3) in the corp library (scope 2).
pub fn material_add(material_id: &str) -> SimEvent {
    let now = whole_second_ms();
    SimEvent::new(
        "material_add",
        json!({
            "material_id": material_id,
            // 1 网页, 3 文件.
            "material_type": 3,
            "material_name": "产品白皮书.pdf",
            "material_url": format!("https://www.example.com/materials/{material_id}.pdf"),
            // 1 个人库, 2 企业库.
            "material_scope": 2,
            "create_user_id": staff_id(),
            "create_time": now,
            "update_time": now,
        }),
    )
}

/// `material_browse_add` (浏览资料). The catalog names it but it has no page: the body is assumed,
/// only the `material_id` of the material family.
pub fn material_browse_add(material_id: &str) -> SimEvent {
    SimEvent::new("material_browse_add", json!({ "material_id": material_id }))
}

/// `group_chat_add` (群新增). Its page was not found: the body is assumed, only the `group_chat_id` of
/// the group family.
pub fn group_chat_add(group_chat_id: &str) -> SimEvent {
    SimEvent::new("group_chat_add", json!({ "group_chat_id": group_chat_id }))
}

/// `group_chat_update` (群更新), which names no customer.
pub fn group_chat_update(group_chat_id: &str, change: GroupChatChange) -> SimEvent {
    SimEvent::new(
        "group_chat_update",
        json!({
            "group_chat_id": group_chat_id,
            "group_chat_name": "客户交流群",
            "change_type": change.as_str(),
        }),
    )
}

/// `group_chat_dismiss` (群解散).
pub fn group_chat_dismiss(group_chat_id: &str) -> SimEvent {
    SimEvent::new(
        "group_chat_dismiss",
        json!({ "group_chat_id": group_chat_id, "group_chat_name": "客户交流群" }),
    )
}

/// `tag_update` (对象标签更新, 即将废弃) on the object `id` names. The page gives no item shape for the
/// tag lists; `tag_update_v2`'s is assumed.
pub fn tag_update(id: &str, object: TagObject) -> SimEvent {
    SimEvent::new("tag_update", tag_change(id, json!(object.as_str())))
}

/// `tag_update_v2` (对象标签更新-新版, 测试中). The lists are spelled as the field table spells them,
/// not as the example's `add_tage_list`.
pub fn tag_update_v2(id: &str, object: TagObjectV2) -> SimEvent {
    SimEvent::new("tag_update_v2", tag_change(id, json!(object.code())))
}

/// One tag added, another removed; `user_id` is the staff member (empty when the system changed them).
fn tag_change(id: &str, kind: Value) -> Value {
    let group = |tag_id: &str, tag_name: &str| {
        json!({
            "group_id": "etK3vYCAAAg1",
            "group_name": "意向度",
            "tag_info": [{ "tag_id": tag_id, "tag_name": tag_name, "type": 1 }],
            "type": 1,
        })
    };
    json!({
        "id": id,
        "type": kind,
        "user_id": staff_id(),
        "add_tag_list": [group("etK3vYCAAAx1", "高意向")],
        "delete_tag_list": [group("etK3vYCAAAx2", "中意向")],
    })
}

/// `add_moment` (发送客户朋友圈) by a staff member; names no customer.
pub fn add_moment(userid: &str) -> SimEvent {
    SimEvent::new(
        "add_moment",
        json!({
            "userid": userid,
            "content": "新品发布会回顾,欢迎咨询",
            "create_time": whole_second_ms(),
        }),
    )
}

/// `dept_add` (部门新增). `dept_id` is a number, as WeCom's department ids are; the page gives no type.
pub fn dept_add(dept_id: u64) -> SimEvent {
    SimEvent::new(
        "dept_add",
        json!({ "dept_id": dept_id, "name": "华东销售部", "create_time": whole_second_ms() }),
    )
}

/// `company_delete` (企业删除).
pub fn company_delete(company_id: &str) -> SimEvent {
    let company = Company::of(company_id);
    SimEvent::new(
        "company_delete",
        json!({ "company_id": company_id, "company_name": company.name }),
    )
}

/// `company_owner_change` (企业归属人变更): `user_id` is the new owner.
pub fn company_owner_change(company_id: &str, new_owner: &str) -> SimEvent {
    SimEvent::new(
        "company_owner_change",
        json!({ "company_id": company_id, "user_id": new_owner, "create_time": whole_second_ms() }),
    )
}

/// 联系人新增 for a contact record from the simulator. The name is assumed (the page shows no type
/// name); the body has the flat fields the page lists, inside the usual envelope. `level` is listed
/// without type or values, so it is sent empty.
pub fn contact_add(record: &Value) -> SimEvent {
    let field = |key: &str| record.get(key).cloned().unwrap_or(Value::Null);
    SimEvent::new(
        "contact_add",
        json!({
            "contact_id": field("contact_id"),
            "user_name": field("user_name"),
            "contact_ways": field("contact_ways"),
            "status": field("status"),
            "contact_source": field("contact_source"),
            "from_channel_name": field("from_channel_name"),
            "level": "",
            "corp_name": field("corp_name"),
            "position": field("position"),
            "create_time": field("create_time"),
        }),
    )
}

/// `contact_update` (联系人更新, 开发中; the name is the page's path slot) for a contact record from
/// the simulator: the flat fields the page names (the profile fields it only counts are left out).
/// `customer_id` is the contact's first related WeCom friend, empty when it has none; `sea_id` and
/// `remark` are not in a contact record and go empty.
pub fn contact_update(record: &Value) -> SimEvent {
    let field = |key: &str| record.get(key).cloned().unwrap_or(Value::Null);
    let customer_id = record
        .pointer("/related_customer/0/id")
        .cloned()
        .unwrap_or_else(|| json!(""));
    SimEvent::new(
        "contact_update",
        json!({
            "contact_id": field("contact_id"),
            "customer_id": customer_id,
            "owner_id": field("owner_id"),
            "create_user_id": field("create_user_id"),
            "sea_id": "",
            "status": field("status"),
            "is_useless": field("is_useless"),
            "is_repeat": field("is_repeat"),
            "contact_ways": field("contact_ways"),
            "contact_source": field("contact_source"),
            "remark": "",
        }),
    )
}

/// [`contact_update`] about an id the caller holds no record of: the fields are the ones the simulator
/// would make up for that id.
pub fn contact_update_for(contact_id: &str) -> SimEvent {
    contact_update(&new_contact_record("", contact_id, now_ms_i64()))
}

/// The ids the events of [`catalog_samples`] name. `new` makes fresh ids for everything but the
/// customer and the contact; every field can be overwritten.
#[derive(Clone, Debug)]
pub struct CatalogIds {
    pub customer_id: String,
    pub contact_id: String,
    pub clue_id: String,
    pub company_id: String,
    pub business_id: String,
    pub material_id: String,
    pub group_chat_id: String,
    /// A staff member.
    pub userid: String,
    pub dept_id: u64,
}

impl CatalogIds {
    pub fn new(customer_id: &str, contact_id: &str) -> Self {
        let mut rng = rand::rng();
        Self {
            customer_id: customer_id.to_owned(),
            contact_id: contact_id.to_owned(),
            clue_id: new_clue_id(),
            company_id: base64url_id(&mut rng, 32),
            business_id: base64url_id(&mut rng, 32),
            material_id: base64url_id(&mut rng, 32),
            group_chat_id: new_group_chat_id(),
            userid: pick(&mut rng, &STAFF, "zhangsan").to_owned(),
            dept_id: rng.random_range(2..1000),
        }
    }
}

/// One event of every type in [`CATALOG_EVENT_TYPES`], and one per value where a type has a documented
/// discriminator (`customer_update` and `clue_update`'s change types, `progress_add` on a customer, a
/// clue and a company, both kinds of group change, every tag object type). The customer id is named by
/// `add_customer`, `customer_update`, `history_add`, `progress_add` type 1, `tag_update` type "1" and
/// the converted `clue_update`; the contact id by `contact_add`, `contact_update`, `tag_update_v2`
/// type 0 and the company events' `customer_list` (type 0). Profile fields are made up for the ids.
pub fn catalog_samples(ids: &CatalogIds) -> Vec<SimEvent> {
    let now = now_ms_i64();
    let customer = new_record("", &ids.customer_id, now);
    let contact = new_contact_record("", &ids.contact_id, now);
    let (customer_id, contact_id, company_id) = (
        ids.customer_id.as_str(),
        ids.contact_id.as_str(),
        ids.company_id.as_str(),
    );
    let visitor = base64url_id(&mut rand::rng(), 32);
    let mut samples = vec![
        user_insert(&ids.userid),
        user_update(&ids.userid),
        add_customer(&customer),
    ];
    samples.extend(
        CustomerChange::ALL
            .into_iter()
            .map(|change| customer_update(&customer, change)),
    );
    samples.extend([
        history_add(customer_id, 201),
        clue_history(&ids.clue_id, 401),
        clue_add(&ids.clue_id),
    ]);
    samples.extend(ClueChange::ALL.into_iter().map(|change| {
        let converted = (change == ClueChange::Status).then_some(customer_id);
        clue_update(&ids.clue_id, converted, change)
    }));
    samples.extend([
        progress_add(1, customer_id),
        progress_add(0, &ids.clue_id),
        progress_add(3, company_id),
        company_add(company_id, &[(contact_id, 0), (&visitor, 4)]),
        company_update(company_id),
        company_delete(company_id),
        add_company_user(company_id),
        opportunity_add(&ids.business_id, company_id),
        opportunity_update(&ids.business_id, company_id),
        material_add(&ids.material_id),
        group_chat_add(&ids.group_chat_id),
    ]);
    samples.extend(
        GroupChatChange::ALL
            .into_iter()
            .map(|change| group_chat_update(&ids.group_chat_id, change)),
    );
    samples.push(group_chat_dismiss(&ids.group_chat_id));
    samples.extend(TagObject::ALL.into_iter().map(|object| {
        let id = match object {
            TagObject::Customer => customer_id,
            TagObject::Clue => &ids.clue_id,
            TagObject::Company => company_id,
        };
        tag_update(id, object)
    }));
    samples.extend([
        add_moment(&ids.userid),
        dept_add(ids.dept_id),
        company_owner_change(company_id, &ids.userid),
        material_browse_add(&ids.material_id),
        company_v2_update(company_id, &[contact_id]),
        company_customer_add(company_id, &[contact_id]),
    ]);
    samples.extend(TagObjectV2::ALL.into_iter().map(|object| {
        let id = match object {
            TagObjectV2::Contact => contact_id,
            TagObjectV2::Company => company_id,
        };
        tag_update_v2(id, object)
    }));
    samples.extend([contact_add(&contact), contact_update(&contact)]);
    samples
}

/// Every catalog event that names no customer (企微好友) and no contact (联系人), plus the
/// discriminator values of the customer and contact events that name something else (a clue, a
/// company, an opportunity, a visitor): what a receiver keeps on its raw event stream only.
pub fn samples_naming_neither(ids: &CatalogIds) -> Vec<SimEvent> {
    let company = ids.company_id.as_str();
    let visitor = base64url_id(&mut rand::rng(), 32);
    vec![
        user_insert(&ids.userid),
        user_update(&ids.userid),
        clue_history(&ids.clue_id, 401),
        clue_add(&ids.clue_id),
        clue_update(&ids.clue_id, None, ClueChange::Owner),
        progress_add(0, &ids.clue_id),
        progress_add(3, company),
        progress_add(7, &ids.business_id),
        company_update(company),
        add_company_user(company),
        opportunity_add(&ids.business_id, company),
        opportunity_update(&ids.business_id, company),
        material_add(&ids.material_id),
        material_browse_add(&ids.material_id),
        group_chat_add(&ids.group_chat_id),
        group_chat_update(&ids.group_chat_id, GroupChatChange::Company),
        group_chat_update(&ids.group_chat_id, GroupChatChange::Owner),
        group_chat_dismiss(&ids.group_chat_id),
        tag_update(&ids.clue_id, TagObject::Clue),
        tag_update(company, TagObject::Company),
        tag_update_v2(company, TagObjectV2::Company),
        add_moment(&ids.userid),
        dept_add(ids.dept_id),
        company_delete(company),
        company_owner_change(company, &ids.userid),
        company_add(company, &[(&visitor, 4)]),
    ]
}

/// A fresh clue id, for [`progress_add_clue`].
pub fn new_clue_id() -> String {
    base64url_id(&mut rand::rng(), 43)
}

/// A fresh WeCom group chat id (`wr…`), for [`group_chat_update`].
pub fn new_group_chat_id() -> String {
    format!("wr{}", Alphanumeric.sample_string(&mut rand::rng(), 30))
}

/// A company's profile, the same for the same id across events.
struct Company {
    name: &'static str,
    abbreviation: &'static str,
    credit_code: String,
    creator: &'static str,
    create_time: i64,
}

impl Company {
    fn of(company_id: &str) -> Self {
        let mut rng = seeded(&["company", company_id]);
        let (abbreviation, name) = CORPS.choose(&mut rng).copied().unwrap_or(("", ""));
        Self {
            name,
            abbreviation,
            credit_code: format!(
                "91330106MA{}",
                Alphanumeric.sample_string(&mut rng, 8).to_uppercase()
            ),
            creator: pick(&mut rng, &STAFF, "zhangsan"),
            create_time: (now_ms_i64() / 1000 - rng.random_range(0..365 * 86_400)) * 1000,
        }
    }

    fn creator(&self) -> Value {
        json!({ "id": self.creator, "nick_name": self.creator })
    }
}

fn contact_list(contact_ids: &[&str]) -> Vec<Value> {
    contact_ids
        .iter()
        .map(|id| json!({ "id": id, "nick_name": nick_name(), "type": 0 }))
        .collect()
}

fn staff_ref() -> Value {
    let staff = staff_id();
    json!({ "user_id": staff, "nick_name": staff })
}

fn nick_name() -> String {
    person_name(&mut rand::rng())
}

fn seeded(parts: &[&str]) -> StdRng {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    StdRng::from_seed(hash.finalize().into())
}

fn staff_id() -> String {
    pick(&mut rand::rng(), &STAFF, "zhangsan").to_owned()
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn now_ms_i64() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

/// Times inside events are whole seconds in milliseconds, as in Weiling's examples.
fn whole_second_ms() -> i64 {
    now_ms_i64() / 1000 * 1000
}

#[cfg(test)]
mod tests;
