//! Decrypted callback events as Weiling builds them: the `{header, event}` JSON and realistic event bodies.

use std::time::SystemTime;

use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{Map, Value, json};

use super::records::base64url_id;
use crate::verify::unix_ms;

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

/// `add_customer` for a record from the simulator, so the event and a later `customer/batch` agree.
pub fn add_customer(record: &Value) -> SimEvent {
    let field = |key: &str| record.get(key).cloned().unwrap_or(Value::Null);
    let userid = record
        .pointer("/follow_users/0/userid")
        .cloned()
        .unwrap_or_else(|| json!("zhangsan"));
    SimEvent::new(
        "add_customer",
        json!({
            "customer_id": field("customer_id"),
            "external_userid": field("external_userid"),
            "userid": userid,
            "name": field("name"),
            "type": field("type"),
            "gender": field("gender"),
            "avatar": field("avatar"),
            "lost_state": field("lost_state"),
            "remark_mobiles": field("remark_mobiles"),
        }),
    )
}

/// The 企微好友更新 event; its real type name is unconfirmed, `update_customer` is the agreed placeholder.
pub fn update_customer(customer_id: &str) -> SimEvent {
    SimEvent::new("update_customer", json!({ "customer_id": customer_id }))
}

/// 联系人新增 for a contact record from the simulator. The real type name and body are unconfirmed
/// (weiling-api.md §12); `contact_add` with `contact_id` is the agreed placeholder.
pub fn contact_add(record: &Value) -> SimEvent {
    let field = |key: &str| record.get(key).cloned().unwrap_or(Value::Null);
    SimEvent::new(
        "contact_add",
        json!({
            "contact_id": field("contact_id"),
            "user_name": field("user_name"),
            "owner_id": field("owner_id"),
            "create_time": field("create_time"),
        }),
    )
}

/// 联系人更新; `contact_update` with `contact_id` is the agreed placeholder.
pub fn contact_update(contact_id: &str) -> SimEvent {
    SimEvent::new("contact_update", json!({ "contact_id": contact_id }))
}

/// A journey entry: 201 follow-up, 202 friend added, 208 churned, … (weiling-api.md §6.4).
pub fn history_add(customer_id: &str, history_type: i64) -> SimEvent {
    let (title, contents) = match history_type {
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
                "title": title,
                "contents": contents,
                "create_time": whole_second_ms(),
                "create_user_id": staff_id(),
            },
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

fn progress_add(kind: i64, related_id: &str) -> SimEvent {
    SimEvent::new(
        "progress_add",
        json!({
            "progress_id": base64url_id(&mut rand::rng(), 32),
            "create_user_id": staff_id(),
            "type": kind,
            "business_related_id": related_id,
            "content": "电话回访,客户对方案感兴趣",
            "remark": "",
            "create_time": whole_second_ms(),
        }),
    )
}

/// A group chat event, which names no customer.
pub fn group_chat_update(group_chat_id: &str) -> SimEvent {
    SimEvent::new(
        "group_chat_update",
        json!({ "group_chat_id": group_chat_id, "change_type": "change_owner" }),
    )
}

/// An employee event, which names no customer.
pub fn user_update(userid: &str) -> SimEvent {
    SimEvent::new(
        "user_update",
        json!({ "userid": userid, "name": "张三", "department": [1], "status": 1 }),
    )
}

/// A fresh clue id, for [`progress_add_clue`].
pub fn new_clue_id() -> String {
    base64url_id(&mut rand::rng(), 43)
}

/// A fresh WeCom group chat id (`wr…`), for [`group_chat_update`].
pub fn new_group_chat_id() -> String {
    format!("wr{}", Alphanumeric.sample_string(&mut rand::rng(), 30))
}

fn staff_id() -> String {
    let staff = ["zhangsan", "lisi", "wangwu", "zhaoliu"];
    let index = rand::rng().random_range(0..staff.len());
    staff.get(index).copied().unwrap_or("zhangsan").to_owned()
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Times inside events are whole seconds in milliseconds, as in Weiling's examples.
fn whole_second_ms() -> u64 {
    now_ms() / 1000 * 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::records::new_record;

    fn parse(json: &[u8]) -> Value {
        serde_json::from_slice(json).unwrap()
    }

    #[test]
    fn the_default_header_has_a_13_digit_ms_string() {
        let json = parse(&event_json("wloa1", "user_update", json!({"userid": "x"})));
        assert_eq!(json["header"]["to_app"], "wloa1");
        assert_eq!(json["header"]["event_type"], "user_update");
        let stamp = json["header"]["time_stamp"].as_str().unwrap();
        assert_eq!(stamp.len(), 13);
        assert!(stamp.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(json["event"]["userid"], "x");
    }

    #[test]
    fn every_header_style_puts_the_time_under_its_key_and_type() {
        for style in HeaderStyle::ALL {
            let json = parse(&update_customer("c1").to_json_with("wloa1", style));
            let header = json["header"].as_object().unwrap();
            assert_eq!(header.len(), 3, "{style:?}");
            let value = &header[style.key()];
            match style {
                HeaderStyle::TimeStampString | HeaderStyle::TimestampString => {
                    assert_eq!(value.as_str().unwrap().len(), 13)
                }
                _ => assert!(value.as_u64().unwrap() > 1_000_000_000_000),
            }
        }
        let quirky = (0..10)
            .filter(|&n| HeaderStyle::varied(n) != HeaderStyle::TimeStampString)
            .count();
        assert_eq!(quirky, 3);
    }

    #[test]
    fn helpers_build_the_documented_event_shapes() {
        let record = new_record("wloa1", "cust-1", 1_745_818_723_000);
        let add = add_customer(&record);
        assert_eq!(add.event_type, "add_customer");
        for key in [
            "customer_id",
            "external_userid",
            "userid",
            "name",
            "type",
            "gender",
            "avatar",
            "lost_state",
            "remark_mobiles",
        ] {
            assert!(!add.event[key].is_null(), "{key}");
        }
        assert_eq!(add.event["customer_id"], "cust-1");
        assert_eq!(add.event["external_userid"], record["external_userid"]);

        let history = history_add("cust-1", 208).event;
        assert_eq!(history["customer_id"], "cust-1");
        assert_eq!(history["history"]["history_type"], 208);
        assert!(
            history["history"]["create_time"]
                .as_u64()
                .unwrap()
                .is_multiple_of(1000)
        );
        assert!(history["history"]["create_user_id"].is_string());

        let progress = progress_add_customer("cust-1").event;
        assert_eq!(progress["type"], 1);
        assert_eq!(progress["business_related_id"], "cust-1");
        assert_eq!(progress_add_clue(&new_clue_id()).event["type"], 0);
        assert_eq!(
            group_chat_update(&new_group_chat_id()).event_type,
            "group_chat_update"
        );
        assert_eq!(user_update("lisi").event["userid"], "lisi");

        let contact = crate::simulator::contacts::new_contact_record("wloa1", "k1", 0);
        let add = contact_add(&contact);
        assert_eq!(add.event_type, "contact_add");
        assert_eq!(add.event["contact_id"], "k1");
        assert_eq!(add.event["user_name"], contact["user_name"]);
        assert_eq!(contact_update("k1").event["contact_id"], "k1");
    }
}
