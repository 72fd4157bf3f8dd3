//! Stage 6 wire format: Weiling's envelope read leniently, capped bodies, Retry-After, URL-free errors.
//!
//! Transport errors are described without their URL because its query carries the token or secret.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

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

/// Records from a `code == 0` batch answer, keyed back to the requested ids (in request order).
/// `None` means the schema is wrong (data or the entity's list of the wrong type): garbage.
pub(crate) fn records(body: &Value, entity: Entity, requested: &[String]) -> Option<Fetched> {
    let list: &[Value] = match body.get("data") {
        None | Some(Value::Null) => &[],
        Some(Value::Object(data)) => match data.get(entity.list_field()) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(list)) => list,
            Some(_) => return None,
        },
        Some(_) => return None,
    };
    let mut by_id: std::collections::HashMap<&str, &Value> = std::collections::HashMap::new();
    for record in list {
        // A record without a usable id cannot be matched to a request, so it is dropped.
        if let Some(id) = record.get(entity.id_field()).and_then(Value::as_str) {
            by_id.entry(id).or_insert(record);
        }
    }
    let mut records = Vec::with_capacity(by_id.len());
    let mut missing = Vec::new();
    for id in requested {
        match by_id.get(id.as_str()) {
            Some(record) => records.push((id.clone(), (*record).clone())),
            None => missing.push(id.clone()),
        }
    }
    Some(Fetched { records, missing })
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

    #[test]
    fn records_are_matched_to_requested_ids_tolerantly() {
        let ids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let body = json!({"code": 0, "data": {"customer_list": [
            {"customer_id": "b", "name": "B"},
            {"name": "no id"},
            {"customer_id": 7},
            {"customer_id": "zz", "name": "not requested"},
            {"customer_id": "a", "name": "A"},
            {"customer_id": "a", "name": "A again"},
        ]}});
        let Fetched { records, missing } = records(&body, Entity::Customer, &ids).unwrap();
        assert_eq!(
            records,
            vec![
                ("a".to_owned(), json!({"customer_id": "a", "name": "A"})),
                ("b".to_owned(), json!({"customer_id": "b", "name": "B"})),
            ]
        );
        assert_eq!(missing, vec!["c".to_owned()]);
    }

    #[test]
    fn contacts_are_read_from_contact_list_by_contact_id() {
        let ids = vec!["k1".to_owned(), "k2".to_owned()];
        let body = json!({"code": 0, "data": {
            "contact_list": [{"contact_id": "k2", "user_name": "B"}],
            "customer_list": [{"customer_id": "k1"}],
        }});
        let Fetched { records, missing } = records(&body, Entity::Contact, &ids).unwrap();
        assert_eq!(
            records,
            vec![(
                "k2".to_owned(),
                json!({"contact_id": "k2", "user_name": "B"})
            )]
        );
        assert_eq!(missing, vec!["k1".to_owned()]);
    }

    #[test]
    fn absent_list_is_empty_but_wrong_types_are_garbage() {
        let ids = vec!["a".to_owned()];
        for body in [
            json!({"code": 0}),
            json!({"code": 0, "data": {}}),
            json!({"code": 0, "data": null}),
        ] {
            let Fetched { records, missing } = records(&body, Entity::Customer, &ids).unwrap();
            assert!(records.is_empty());
            assert_eq!(missing, ids);
        }
        assert!(records(&json!({"code": 0, "data": "x"}), Entity::Customer, &ids).is_none());
        assert!(
            records(
                &json!({"code": 0, "data": {"customer_list": {}}}),
                Entity::Customer,
                &ids
            )
            .is_none()
        );
    }
}
