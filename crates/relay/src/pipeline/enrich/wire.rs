//! Stage 6 wire format: Weiling's envelope read leniently, capped bodies, Retry-After, URL-free errors.
//!
//! Transport errors are described without their URL because its query carries the token or secret.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;

use super::Fetched;
use crate::entity::Entity;

/// A hostile or confused Retry-After must not park an app for hours; five minutes is already far
/// beyond any documented Weiling limit window.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Weiling documents `code` as an int on most pages and as a string on one (weiling-api.md §1).
pub(crate) fn parse_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The top of a batch answer, read without building the records: only `code` is looked at.
#[derive(serde::Deserialize)]
pub(crate) struct Envelope {
    #[serde(default)]
    code: Value,
}

impl Envelope {
    pub(crate) fn code(&self) -> Option<i64> {
        parse_int(&self.code)
    }
}

/// The envelope's `code`, or `None` if the body is not an object with a usable code.
pub(crate) fn envelope_code(body: &Value) -> Option<i64> {
    body.get("code").and_then(parse_int)
}

/// `Retry-After` in delta-seconds. The HTTP-date form is ignored: Weiling and its proxies send
/// seconds, and a date would need a trusted clock to mean anything.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = raw.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    Transport(String),
}

/// Reads at most `cap` bytes; a longer body is refused without buffering it.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|len| len > cap as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::new();
    // The client-wide timeout also covers the body, so this loop cannot hang past it.
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(describe_transport(&e)))?
    {
        if buf.len().saturating_add(chunk.len()) > cap {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// A short description of a reqwest failure with the URL (and so the query) left out.
pub(crate) fn describe_transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect failed"
    } else if e.is_body() || e.is_decode() {
        "body read failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    // The innermost cause is the useful part ("Connection refused (os error 111)") and, unlike
    // reqwest's own Display, never contains the URL.
    let mut root = e.source();
    while let Some(next) = root.and_then(|r| r.source()) {
        root = Some(next);
    }
    match root {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

/// Records from a `code == 0` batch answer, keyed back to the requested ids (in request order), each
/// kept as the exact bytes Weiling sent for it. `None` means the answer is not the documented shape
/// (no `data` object, or no array under the entity's list): garbage, never "every id is missing",
/// which would mark real customers deleted downstream. An empty list does mean every id is missing.
pub(crate) fn records(body: &[u8], entity: Entity, requested: &[String]) -> Option<Fetched> {
    let envelope: BatchEnvelope<'_> = serde_json::from_slice(body).ok()?;
    let data = envelope.data?;
    let list = match entity {
        Entity::Customer => data.customer_list,
        Entity::Contact => data.contact_list,
    }?;
    let mut by_id: HashMap<String, &RawValue> = HashMap::with_capacity(list.len());
    for record in list {
        // A record without a usable id cannot be matched to a request, so it is dropped.
        if let Some(id) = record_id(record, entity) {
            by_id.entry(id).or_insert(record);
        }
    }
    let mut records = Vec::with_capacity(by_id.len());
    let mut missing = Vec::new();
    for id in requested {
        match by_id.get(id.as_str()) {
            Some(record) => records.push((id.clone(), (*record).to_owned())),
            None => missing.push(id.clone()),
        }
    }
    Some(Fetched { records, missing })
}

/// A batch answer down to its lists, each element kept as the raw text Weiling sent. Everything else
/// is skipped unread, which keeps a 100-record answer cheap.
#[derive(serde::Deserialize)]
struct BatchEnvelope<'a> {
    #[serde(borrow)]
    data: Option<BatchData<'a>>,
}

#[derive(serde::Deserialize)]
struct BatchData<'a> {
    #[serde(borrow, default)]
    customer_list: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    contact_list: Option<Vec<&'a RawValue>>,
}

/// The two id fields a record may carry; the entity decides which one counts.
#[derive(serde::Deserialize)]
struct RecordIds<'a> {
    #[serde(borrow, default)]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    contact_id: Option<&'a RawValue>,
}

/// The record's id as the event named it: a string as is, a number by its exact decimal text (an
/// id echoed back as a JSON number is the same customer, even beyond 2^53).
fn record_id(record: &RawValue, entity: Entity) -> Option<String> {
    let ids: RecordIds<'_> = serde_json::from_str(record.get()).ok()?;
    let raw = match entity {
        Entity::Customer => ids.customer_id,
        Entity::Contact => ids.contact_id,
    }?
    .get();
    let id = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).ok()?
    } else if raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        raw.to_owned()
    } else {
        return None;
    };
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn code_is_read_as_number_or_numeric_string() {
        assert_eq!(envelope_code(&json!({"code": 0})), Some(0));
        assert_eq!(envelope_code(&json!({"code": "1015"})), Some(1015));
        assert_eq!(envelope_code(&json!({"code": " 403 "})), Some(403));
        assert_eq!(envelope_code(&json!({"code": 0.0})), Some(0));
        assert_eq!(envelope_code(&json!({"code": "x"})), None);
        assert_eq!(envelope_code(&json!({"code": null})), None);
        assert_eq!(envelope_code(&json!({"msg": "no code"})), None);
        assert_eq!(envelope_code(&json!([1, 2])), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_caps_them() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(5)));
        h.insert(RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    fn raw(v: &Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn text(fetched: &Fetched) -> Vec<(String, String)> {
        fetched
            .records
            .iter()
            .map(|(id, r)| (id.clone(), r.get().to_owned()))
            .collect()
    }

    #[test]
    fn records_are_matched_to_requested_ids_tolerantly() {
        let ids = vec![
            "a".to_owned(),
            "b".to_owned(),
            "c".to_owned(),
            "7".to_owned(),
        ];
        let body = json!({"code": 0, "data": {"customer_list": [
            {"customer_id": "b", "name": "B"},
            {"name": "no id"},
            {"customer_id": 7},
            {"customer_id": "zz", "name": "not requested"},
            {"customer_id": "a", "name": "A"},
            {"customer_id": "a", "name": "A again"},
        ]}});
        let fetched = records(&raw(&body), Entity::Customer, &ids).unwrap();
        assert_eq!(
            text(&fetched),
            vec![
                (
                    "a".to_owned(),
                    r#"{"customer_id":"a","name":"A"}"#.to_owned()
                ),
                (
                    "b".to_owned(),
                    r#"{"customer_id":"b","name":"B"}"#.to_owned()
                ),
                ("7".to_owned(), r#"{"customer_id":7}"#.to_owned()),
            ],
            "an id echoed as a number is the string id the event named"
        );
        assert_eq!(fetched.missing, vec!["c".to_owned()]);
    }

    #[test]
    fn a_record_keeps_weilings_bytes_and_big_numeric_ids_match_exactly() {
        let body = br#"{"msg":"ok","code":0,"data":{"customer_list":[ {"z":1,"customer_id":12345678901234567890, "a": 1.50, "n": {"x": [1e3]}} ]}}"#;
        let ids = vec!["12345678901234567890".to_owned()];
        let fetched = records(body, Entity::Customer, &ids).unwrap();
        assert_eq!(
            text(&fetched),
            vec![(
                ids[0].clone(),
                r#"{"z":1,"customer_id":12345678901234567890, "a": 1.50, "n": {"x": [1e3]}}"#
                    .to_owned()
            )]
        );
    }

    #[test]
    fn contacts_are_read_from_contact_list_by_contact_id() {
        let ids = vec!["k1".to_owned(), "k2".to_owned()];
        let body = json!({"code": 0, "data": {
            "contact_list": [{"contact_id": "k2", "user_name": "B"}],
            "customer_list": [{"customer_id": "k1"}],
        }});
        let fetched = records(&raw(&body), Entity::Contact, &ids).unwrap();
        assert_eq!(
            text(&fetched),
            vec![(
                "k2".to_owned(),
                r#"{"contact_id":"k2","user_name":"B"}"#.to_owned()
            )]
        );
        assert_eq!(fetched.missing, vec!["k1".to_owned()]);
    }

    #[test]
    fn an_empty_list_means_missing_but_an_absent_one_is_garbage() {
        let ids = vec!["a".to_owned()];
        let empty = json!({"code": 0, "data": {"customer_list": []}});
        let fetched = records(&raw(&empty), Entity::Customer, &ids).unwrap();
        assert!(fetched.records.is_empty());
        assert_eq!(fetched.missing, ids);
        for body in [
            json!({"code": 0}),
            json!({"code": 0, "data": {}}),
            json!({"code": 0, "data": null}),
            json!({"code": 0, "data": {"customer_list": null}}),
            json!({"code": 0, "data": "x"}),
            json!({"code": 0, "data": {"customer_list": {}}}),
            json!({"code": 0, "data": {"contact_list": []}}),
        ] {
            assert!(
                records(&raw(&body), Entity::Customer, &ids).is_none(),
                "{body}"
            );
        }
    }
}
