//! One record message of the customers exchange (contract.md "Messages") as a typed [`MirrorRecord`],
//! or the reason it cannot be mirrored. Customers and contacts share the shape; the `schema` field
//! says which [`Entity`] a body is.

use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use relay::entity::Entity;

fn entity_of_schema(schema: &str) -> Option<Entity> {
    Entity::ALL.into_iter().find(|e| e.schema() == schema)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    /// Weiling did not return the id: the row is marked deleted.
    Missing,
}

/// Why a delivery cannot be mirrored. Every one of them is permanent: the same body fails the same way
/// on every redelivery, so it is dead-lettered instead of retried. The texts name fields, never their
/// values: they go into logs and the dead letter's `x-detail`.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("unknown schema (neither weiling-relay.customer.v1 nor weiling-relay.contact.v1)")]
    Schema,
    #[error("field `{0}` is missing, empty or of the wrong type")]
    Field(&'static str),
    #[error("op is neither upsert nor missing")]
    Op,
    #[error("an upsert needs a record object")]
    UpsertWithoutRecord,
    #[error("a missing message must have a null record")]
    MissingWithRecord,
    #[error("record.{0} differs from the message's {0}")]
    IdMismatch(&'static str),
    #[error("text contains a NUL character, which PostgreSQL cannot store")]
    Nul,
    #[error("x-signature header missing or not the HMAC of the body")]
    Signature,
}

impl MessageError {
    /// The `x-reason` of the dead letter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Signature => "mirror_signature",
            _ => "mirror_schema",
        }
    }
}

/// A parsed, validated record message: everything one row of the mirror needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRecord {
    pub entity: Entity,
    pub op: Op,
    pub app_id: String,
    pub id: String,
    /// Milliseconds since the epoch; orders the states of one entity.
    pub fetched_at: i64,
    /// The AMQP `message_id` (content hash); a hash of the body when a publisher left it out.
    pub message_id: String,
    /// `Some(object)` for upsert, `None` for missing.
    pub record: Option<Value>,
}

/// The customer columns users filter on, copied out of the record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerColumns {
    pub name: Option<String>,
    pub customer_stage: Option<String>,
    pub lost_state: Option<bool>,
    pub external_userid: Option<String>,
    pub follow_user_ids: Option<Vec<String>>,
}

/// The contact columns users filter on, copied out of the record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactColumns {
    pub user_name: Option<String>,
    pub customer_stage: Option<String>,
    pub owner_id: Option<String>,
    pub status: Option<String>,
}

impl MirrorRecord {
    /// Parses and validates a body. `message_id` is the AMQP property.
    pub fn parse(body: &[u8], message_id: Option<&str>) -> Result<Self, MessageError> {
        let Value::Object(mut map) = serde_json::from_slice::<Value>(body)? else {
            return Err(MessageError::NotAnObject);
        };
        let schema = map
            .get("schema")
            .and_then(Value::as_str)
            .ok_or(MessageError::Field("schema"))?;
        let entity = entity_of_schema(schema).ok_or(MessageError::Schema)?;
        let op = match text_field(&map, "op")? {
            "upsert" => Op::Upsert,
            "missing" => Op::Missing,
            _ => return Err(MessageError::Op),
        };
        let app_id = text_field(&map, "app_id")?.to_owned();
        let id = text_field(&map, entity.id_field())?.to_owned();
        let fetched_at = map
            .get("fetched_at")
            .and_then(Value::as_i64)
            .filter(|ms| *ms >= 0)
            .ok_or(MessageError::Field("fetched_at"))?;
        let record = match (op, map.remove("record").unwrap_or(Value::Null)) {
            (Op::Upsert, record @ Value::Object(_)) => Some(record),
            (Op::Upsert, _) => return Err(MessageError::UpsertWithoutRecord),
            (Op::Missing, Value::Null) => None,
            (Op::Missing, _) => return Err(MessageError::MissingWithRecord),
        };
        if let Some(inner) = record
            .as_ref()
            .and_then(|r| r.get(entity.id_field()))
            .and_then(Value::as_str)
            && inner != id
        {
            return Err(MessageError::IdMismatch(entity.id_field()));
        }
        let message_id = match message_id.filter(|m| !m.is_empty()) {
            Some(given) => given.to_owned(),
            None => hex::encode(Sha256::digest(body)),
        };
        if [&app_id, &id, &message_id].iter().any(|s| s.contains('\0'))
            || record.as_ref().is_some_and(contains_nul)
        {
            return Err(MessageError::Nul);
        }
        Ok(Self {
            entity,
            op,
            app_id,
            id,
            fetched_at,
            message_id,
            record,
        })
    }

    pub fn customer_columns(&self) -> CustomerColumns {
        let Some(r) = &self.record else {
            return CustomerColumns::default();
        };
        CustomerColumns {
            name: lenient_text(r.get("name")),
            customer_stage: lenient_text(r.get("customer_stage")),
            lost_state: match r.get("lost_state") {
                Some(Value::Bool(b)) => Some(*b),
                Some(Value::Number(n)) => n.as_i64().map(|n| n != 0),
                _ => None,
            },
            external_userid: lenient_text(r.get("external_userid")),
            follow_user_ids: Some(
                r.get("follow_users")
                    .and_then(Value::as_array)
                    .map(|users| {
                        users
                            .iter()
                            .filter_map(|u| u.get("userid").and_then(Value::as_str))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
        }
    }

    pub fn contact_columns(&self) -> ContactColumns {
        let Some(r) = &self.record else {
            return ContactColumns::default();
        };
        ContactColumns {
            user_name: lenient_text(r.get("user_name")),
            customer_stage: lenient_text(r.get("customer_stage")),
            owner_id: lenient_text(r.get("owner_id")),
            status: lenient_text(r.get("status")),
        }
    }
}

/// Checks the `x-signature` header (hex HMAC-SHA256 of the body) in constant time.
pub fn verify_signature(
    key: &[u8],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), MessageError> {
    let expected = signature
        .and_then(|s| hex::decode(s).ok())
        .ok_or(MessageError::Signature)?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).map_err(|_| MessageError::Signature)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| MessageError::Signature)
}

fn text_field<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, MessageError> {
    map.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(MessageError::Field(field))
}

/// Strings as they are, numbers and booleans as their JSON text; anything else is no value.
fn lenient_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::pipeline::publish::record::{self, Record};
    use relay::pipeline::window::coalescer::IdSource;
    use serde_json::json;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    fn customer(op: &str, record: Value) -> Value {
        json!({
            "schema": Entity::Customer.schema(), "op": op, "app_id": "wloa1", "customer_id": "c1",
            "fetched_at": 1_745_818_724_012u64,
            "source": {"events": 1, "event_types": ["add_customer"], "first_event_at": 1},
            "record": record,
        })
    }

    #[test]
    fn the_relays_own_customer_message_parses_with_its_message_id() {
        let data = json!({
            "customer_id": "c1", "name": "张三", "customer_stage": "赢单", "lost_state": false,
            "external_userid": "wmABC",
            "follow_users": [{"userid": "zhangsan", "create_time": 1}, {"userid": "lisi"}, {"remark": "no id"}],
        });
        let source = IdSource {
            events: 2,
            event_types: ["add_customer".to_owned()].into(),
            first_event_at_ms: 5,
            deliveries: Vec::new(),
        };
        let out = record::message(
            "ex",
            &Record {
                entity: Entity::Customer,
                app_id: "wloa1",
                id: "c1",
                op: record::Op::Upsert,
                record: Some(&*serde_json::value::to_raw_value(&data).unwrap()),
                source: &source,
                fetched_at_ms: 1_745_818_724_012,
            },
            None,
        );
        let id = out.properties.message_id().as_ref().unwrap().to_string();
        let r = MirrorRecord::parse(&out.body, Some(&id)).unwrap();
        assert_eq!(r.entity, Entity::Customer);
        assert_eq!(r.op, Op::Upsert);
        assert_eq!((r.app_id.as_str(), r.id.as_str()), ("wloa1", "c1"));
        assert_eq!(r.fetched_at, 1_745_818_724_012);
        assert_eq!(r.message_id, id);
        assert_eq!(r.record.as_ref(), Some(&data));
        assert_eq!(
            r.customer_columns(),
            CustomerColumns {
                name: Some("张三".into()),
                customer_stage: Some("赢单".into()),
                lost_state: Some(false),
                external_userid: Some("wmABC".into()),
                follow_user_ids: Some(vec!["zhangsan".into(), "lisi".into()]),
            }
        );
    }

    #[test]
    fn missing_has_no_record_and_no_columns() {
        let r = MirrorRecord::parse(&body(customer("missing", Value::Null)), Some("m")).unwrap();
        assert_eq!(r.op, Op::Missing);
        assert_eq!(r.record, None);
        assert_eq!(r.customer_columns(), CustomerColumns::default());
        // A missing body without the record key at all is just as good.
        let mut v = customer("missing", Value::Null);
        v.as_object_mut().unwrap().remove("record");
        assert!(MirrorRecord::parse(&body(v), Some("m")).is_ok());
    }

    #[test]
    fn a_contact_parses_with_lenient_columns() {
        let v = json!({
            "schema": Entity::Contact.schema(), "op": "upsert", "app_id": "wloa1", "contact_id": "k1",
            "fetched_at": 7, "source": {},
            "record": {"contact_id": "k1", "user_name": "李四", "customer_stage": "需求确认",
                       "owner_id": "zhangsan", "status": 1, "related_customer": [{"id": "c1", "type": 1}]},
        });
        let r = MirrorRecord::parse(&body(v), None).unwrap();
        assert_eq!(r.entity, Entity::Contact);
        assert_eq!(r.id, "k1");
        // No AMQP message_id: the body's hash stands in, so a redelivery still deduplicates.
        assert_eq!(r.message_id.len(), 64);
        assert_eq!(
            r.contact_columns(),
            ContactColumns {
                user_name: Some("李四".into()),
                customer_stage: Some("需求确认".into()),
                owner_id: Some("zhangsan".into()),
                status: Some("1".into()),
            }
        );
    }

    #[test]
    fn odd_customer_fields_become_no_value_instead_of_failing() {
        let r = MirrorRecord::parse(
            &body(customer(
                "upsert",
                json!({"name": null, "lost_state": 1, "follow_users": "x", "customer_stage": 3}),
            )),
            Some("m"),
        )
        .unwrap();
        let c = r.customer_columns();
        assert_eq!(c.name, None);
        assert_eq!(c.lost_state, Some(true));
        assert_eq!(c.follow_user_ids, Some(Vec::new()));
        assert_eq!(c.customer_stage.as_deref(), Some("3"));
    }

    #[test]
    fn every_malformed_body_names_its_problem() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{not json".to_vec(), "body is not JSON"),
            (b"[1,2]".to_vec(), "not a JSON object"),
            (
                body(json!({"schema": "weiling-relay.customer.v2"})),
                "unknown schema",
            ),
            (body(json!({"op": "upsert"})), "`schema`"),
            (
                {
                    let mut v = customer("upsert", json!({}));
                    v["op"] = json!("delete");
                    body(v)
                },
                "op is neither",
            ),
            (
                {
                    let mut v = customer("upsert", json!({}));
                    v["app_id"] = json!("");
                    body(v)
                },
                "`app_id`",
            ),
            (
                {
                    let mut v = customer("upsert", json!({}));
                    v.as_object_mut().unwrap().remove("customer_id");
                    body(v)
                },
                "`customer_id`",
            ),
            (
                {
                    let mut v = customer("upsert", json!({}));
                    v["fetched_at"] = json!(-1);
                    body(v)
                },
                "`fetched_at`",
            ),
            (
                {
                    let mut v = customer("upsert", json!({}));
                    v["fetched_at"] = json!("1745818724012");
                    body(v)
                },
                "`fetched_at`",
            ),
            (body(customer("upsert", Value::Null)), "needs a record"),
            (body(customer("upsert", json!([1]))), "needs a record"),
            (
                body(customer("missing", json!({"customer_id": "c1"}))),
                "null record",
            ),
            (
                body(customer("upsert", json!({"customer_id": "c2"}))),
                "record.customer_id differs",
            ),
            (
                body(customer("upsert", json!({"remark": "a\u{0}b"}))),
                "NUL",
            ),
            (
                body(customer("upsert", json!({"tags": [{"k\u{0}": 1}]}))),
                "NUL",
            ),
        ];
        for (input, expected) in cases {
            let error = MirrorRecord::parse(&input, Some("m")).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{error} should mention {expected}"
            );
            assert_eq!(error.reason(), "mirror_schema");
        }
        // A contact body needs contact_id, not customer_id.
        let v = json!({"schema": Entity::Contact.schema(), "op": "missing", "app_id": "a", "customer_id": "c", "fetched_at": 1});
        assert!(
            MirrorRecord::parse(&body(v), None)
                .unwrap_err()
                .to_string()
                .contains("`contact_id`")
        );
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_body() {
        let key = b"rec0rd-key";
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(b"body");
        let good = hex::encode(mac.finalize().into_bytes());
        assert!(verify_signature(key, b"body", Some(&good)).is_ok());
        assert!(verify_signature(key, b"other", Some(&good)).is_err());
        assert!(verify_signature(b"other-key", b"body", Some(&good)).is_err());
        assert!(verify_signature(key, b"body", Some("zz")).is_err());
        let missing = verify_signature(key, b"body", None).unwrap_err();
        assert_eq!(missing.reason(), "mirror_signature");
    }
}
