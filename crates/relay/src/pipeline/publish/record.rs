//! The record message of contract.md: schema v1, a `message_id` per publication, a content-hash header,
//! optional HMAC-SHA256 `x-signature`, routing key `<entity>.<app_id>.upsert|missing`. Customers and
//! contacts share the shape; only the schema name, the id field and the routing key's first word differ.

use hmac::{KeyInit, Mac};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::amqp::Outgoing;
use crate::amqp::message::{self, header};
use crate::entity::Entity;
use crate::pipeline::window::coalescer::IdSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    /// Weiling did not return the id: a tombstone candidate.
    Missing,
}

impl Op {
    pub const ALL: [Self; 2] = [Self::Upsert, Self::Missing];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Missing => "missing",
        }
    }
}

#[derive(Serialize)]
struct Source<'a> {
    events: u32,
    event_types: Vec<&'a str>,
    first_event_at: u64,
    /// Present (true) only on records `weiling-relay reconcile` published: an addition to the v1
    /// shape, so consumers that ignore unknown fields are unaffected.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reconcile: bool,
}

/// The id under the entity's own field name (`customer_id` or `contact_id`).
#[derive(Serialize)]
enum EntityId<'a> {
    #[serde(rename = "customer_id")]
    Customer(&'a str),
    #[serde(rename = "contact_id")]
    Contact(&'a str),
}

#[derive(Serialize)]
struct Body<'a> {
    schema: &'static str,
    op: &'static str,
    app_id: &'a str,
    #[serde(flatten)]
    id: EntityId<'a>,
    fetched_at: u64,
    source: Source<'a>,
    record: Option<&'a RawValue>,
}

/// Everything one record message needs.
pub struct Record<'a> {
    pub entity: Entity,
    pub app_id: &'a str,
    pub id: &'a str,
    pub op: Op,
    /// One element of the batch answer's list, exactly as Weiling returned it; `None` for `missing`.
    pub record: Option<&'a RawValue>,
    pub source: &'a IdSource,
    pub fetched_at_ms: u64,
}

pub fn routing_key(entity: Entity, app_id: &str, op: Op) -> String {
    format!("{}.{app_id}.{}", entity.as_str(), op.as_str())
}

/// The `x-content-sha256` header: identical states have identical hashes, so a consumer can skip a
/// state equal to the one it holds now. The record is hashed as Weiling's bytes for it. A contact's hash starts with
/// `contact` so a contact and a customer with the same id never share one; a customer's hash is
/// exactly contract.md's (app_id, customer_id, op, record).
pub fn content_hash(
    entity: Entity,
    app_id: &str,
    id: &str,
    op: Op,
    record: Option<&RawValue>,
) -> String {
    let content = record.map_or("null", RawValue::get);
    let mut hash = Sha256::new();
    if entity != Entity::Customer {
        hash.update(entity.as_str());
        hash.update([0u8]);
    }
    hex::encode(
        hash.chain_update(app_id)
            .chain_update([0u8])
            .chain_update(id)
            .chain_update([0u8])
            .chain_update(op.as_str())
            .chain_update([0u8])
            .chain_update(content)
            .finalize(),
    )
}

/// A fresh `message_id` for one publication: the message keeps it through publish retries and
/// broker redeliveries, but a new fetch of the same customer gets a new one, so a consumer that
/// drops ids it has seen never drops a real change (A → B → A included). Content equality is the
/// job of [`content_hash`].
fn publication_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub fn message(exchange: &str, r: &Record<'_>, sign_key: Option<&SecretString>) -> Outgoing {
    build(exchange, r, sign_key, false)
}

/// A record re-fetched by `reconcile` rather than named by events: the same message, with
/// `"reconcile": true` in its `source`.
pub fn reconcile_message(
    exchange: &str,
    r: &Record<'_>,
    sign_key: Option<&SecretString>,
) -> Outgoing {
    build(exchange, r, sign_key, true)
}

fn build(
    exchange: &str,
    r: &Record<'_>,
    sign_key: Option<&SecretString>,
    reconcile: bool,
) -> Outgoing {
    let body = Body {
        schema: r.entity.schema(),
        op: r.op.as_str(),
        app_id: r.app_id,
        id: match r.entity {
            Entity::Customer => EntityId::Customer(r.id),
            Entity::Contact => EntityId::Contact(r.id),
        },
        fetched_at: r.fetched_at_ms,
        source: Source {
            events: r.source.events,
            event_types: r.source.event_types.iter().map(String::as_str).collect(),
            first_event_at: r.source.first_event_at_ms,
            reconcile,
        },
        record: r.record,
    };
    // Serialising these plain structs cannot fail; an empty body would be refused downstream anyway.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut headers = FieldTable::default();
    message::put_text(&mut headers, header::APP_ID, r.app_id);
    message::put_text(&mut headers, r.entity.id_field(), r.id);
    message::put_integer(&mut headers, header::FETCHED_AT, r.fetched_at_ms);
    let hash = content_hash(r.entity, r.app_id, r.id, r.op, r.record);
    message::put_text(&mut headers, header::CONTENT_HASH, &hash);
    if let Some(signature) = sign_key.and_then(|key| sign(key, &body)) {
        message::put_text(&mut headers, header::SIGNATURE, &signature);
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(message::PERSISTENT)
        .with_content_type("application/json".into())
        .with_message_id(publication_id().as_str().into())
        .with_timestamp(r.fetched_at_ms / 1000)
        .with_type(
            format!("{}.{}", r.entity.as_str(), r.op.as_str())
                .as_str()
                .into(),
        )
        .with_headers(headers);
    Outgoing {
        exchange: exchange.to_owned(),
        routing_key: routing_key(r.entity, r.app_id, r.op),
        body,
        properties,
        mandatory: true,
    }
}

/// Hex HMAC-SHA256 of the body; `None` when no key is configured.
fn sign(key: &SecretString, body: &[u8]) -> Option<String> {
    let key = key.expose_secret();
    if key.is_empty() {
        return None;
    }
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok()?;
    mac.update(body);
    Some(hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;
    use serde_json::Value;

    fn header(out: &Outgoing, name: &str) -> String {
        match out.properties.headers().as_ref().unwrap().inner().get(name) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }
    use serde_json::json;

    const C: Entity = Entity::Customer;

    fn source() -> IdSource {
        IdSource {
            events: 3,
            event_types: ["add_customer".to_owned(), "history_add".to_owned()].into(),
            first_event_at_ms: 1_745_818_723_565,
            deliveries: vec![1, 2],
        }
    }

    #[test]
    fn an_upsert_matches_the_contract() {
        let record = raw(json!({"customer_id": "c1", "name": "张三"}));
        let src = source();
        let r = Record {
            entity: Entity::Customer,
            app_id: "wloa1",
            id: "c1",
            op: Op::Upsert,
            record: Some(&*record),
            source: &src,
            fetched_at_ms: 1_745_818_724_012,
        };
        let out = message("weiling.customers", &r, None);
        assert_eq!(out.routing_key, "customer.wloa1.upsert");
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body,
            json!({
                "schema": "weiling-relay.customer.v1", "op": "upsert", "app_id": "wloa1", "customer_id": "c1",
                "fetched_at": 1_745_818_724_012u64,
                "source": {"events": 3, "event_types": ["add_customer", "history_add"], "first_event_at": 1_745_818_723_565u64},
                "record": {"customer_id": "c1", "name": "张三"}
            })
        );
        let p = &out.properties;
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.timestamp(), &Some(1_745_818_724));
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some("customer.upsert")
        );
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str().len()), Some(32));
        assert_eq!(header(&out, header::CONTENT_HASH).len(), 64);
        assert!(
            p.headers()
                .as_ref()
                .unwrap()
                .inner()
                .get("x-signature")
                .is_none()
        );
    }

    #[test]
    fn a_reconciled_record_says_so_and_carries_the_content_hash() {
        let record = raw(json!({"customer_id": "c1"}));
        let src = IdSource {
            events: 0,
            event_types: ["reconcile".to_owned()].into(),
            first_event_at_ms: 7,
            deliveries: Vec::new(),
        };
        let r = Record {
            entity: Entity::Customer,
            app_id: "wloa1",
            id: "c1",
            op: Op::Upsert,
            record: Some(&*record),
            source: &src,
            fetched_at_ms: 9,
        };
        let out = reconcile_message("ex", &r, None);
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body["source"],
            json!({"events": 0, "event_types": ["reconcile"], "first_event_at": 7, "reconcile": true})
        );
        let again = message("ex", &r, None);
        assert_ne!(
            out.properties.message_id(),
            again.properties.message_id(),
            "each publication has its own message_id"
        );
        assert_eq!(
            header(&out, header::CONTENT_HASH),
            header(&again, header::CONTENT_HASH),
            "the same state has the same content hash"
        );
        assert_eq!(out.routing_key, "customer.wloa1.upsert");
    }

    #[test]
    fn identical_states_share_a_content_hash_and_different_ones_do_not() {
        let a = raw(json!({"b": 1, "a": 2}));
        let b = raw(json!({"b": 1, "a": 2}));
        assert_eq!(
            content_hash(C, "x", "c", Op::Upsert, Some(&*a)),
            content_hash(C, "x", "c", Op::Upsert, Some(&*b))
        );
        let c = raw(json!({"b": 1, "a": 3}));
        assert_ne!(
            content_hash(C, "x", "c", Op::Upsert, Some(&*a)),
            content_hash(C, "x", "c", Op::Upsert, Some(&*c))
        );
        assert_ne!(
            content_hash(C, "x", "c", Op::Upsert, Some(&*a)),
            content_hash(C, "x", "c", Op::Missing, None)
        );
        assert_ne!(
            content_hash(C, "x", "c", Op::Upsert, Some(&*a)),
            content_hash(C, "x", "d", Op::Upsert, Some(&*a))
        );
    }

    #[test]
    fn a_contact_carries_its_own_schema_id_field_type_and_routing_key() {
        let record = raw(json!({"contact_id": "k1", "user_name": "李四"}));
        let src = source();
        let r = Record {
            entity: Entity::Contact,
            app_id: "wloa1",
            id: "k1",
            op: Op::Upsert,
            record: Some(&*record),
            source: &src,
            fetched_at_ms: 1_745_818_724_012,
        };
        let out = message("weiling.customers", &r, None);
        assert_eq!(out.routing_key, "contact.wloa1.upsert");
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["schema"], "weiling-relay.contact.v1");
        assert_eq!(body["contact_id"], "k1");
        assert!(body.get("customer_id").is_none());
        assert_eq!(body["record"].to_string(), record.get());
        let p = &out.properties;
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some("contact.upsert")
        );
        let headers = p.headers().as_ref().unwrap().inner();
        assert!(headers.get("contact_id").is_some() && headers.get("customer_id").is_none());
        assert_ne!(
            content_hash(Entity::Contact, "wloa1", "k1", Op::Upsert, Some(&*record)),
            content_hash(C, "wloa1", "k1", Op::Upsert, Some(&*record)),
            "a contact and a customer with one id never share a message id"
        );
    }

    #[test]
    fn missing_has_a_null_record_and_the_signature_verifies() {
        let src = source();
        let r = Record {
            entity: Entity::Customer,
            app_id: "wloa1",
            id: "gone",
            op: Op::Missing,
            record: None,
            source: &src,
            fetched_at_ms: 5,
        };
        let key = SecretString::from("rec0rd-key");
        let out = message("ex", &r, Some(&key));
        assert_eq!(out.routing_key, "customer.wloa1.missing");
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["record"], Value::Null);
        let Some(AMQPValue::LongString(sig)) = out
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("x-signature")
            .cloned()
        else {
            panic!("signature header expected")
        };
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(b"rec0rd-key").unwrap();
        mac.update(&out.body);
        assert!(
            mac.verify_slice(&hex::decode(sig.to_string()).unwrap())
                .is_ok()
        );
    }
}
