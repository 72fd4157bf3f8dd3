//! Customer records against Weiling's own page: the seed's example is parsed, its field order held to
//! [`SCHEMA`], and every record's field names and JSON types compared with it, so the simulator and the
//! documentation cannot drift apart.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::*;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/spec/seed-customer-batch.txt"
);
const NOW: i64 = 1_745_818_723_565;

/// The response example of the seed page: the JSON block after its second `示例` heading.
fn seed_example() -> Option<String> {
    if !Path::new(SEED).exists() {
        eprintln!("SKIPPED: {SEED} is absent, the records are not compared with Weiling's page");
        return None;
    }
    let text = std::fs::read_to_string(SEED).unwrap();
    let mut headings = text.match_indices('\n').filter_map(|(at, _)| {
        let rest = &text[at + 1..];
        let line = rest.lines().next().unwrap_or_default();
        (line.trim() == "示例").then_some(at + 1 + line.len())
    });
    let after = headings.nth(1).expect("the seed has two 示例 headings");
    let block = json_block(&text[after..]).expect("a JSON block follows the second 示例");
    Some(block.to_owned())
}

/// The first balanced `{…}` of `text` (strings may hold braces).
fn json_block(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text[start..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..=start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// JSON with the objects' key order kept, which a `Value` does not keep.
enum Ordered {
    Leaf,
    List(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
        Ok(Ordered::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
        Ok(Ordered::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
        Ok(Ordered::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
        Ok(Ordered::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<Ordered, E> {
        Ok(Ordered::Leaf)
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Ordered::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Ordered::Object(entries))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Every object under `value` by path, with its keys in document order.
fn key_orders(path: &str, value: &Ordered, out: &mut Vec<(String, Vec<String>)>) {
    match value {
        Ordered::Leaf => {}
        Ordered::List(items) => {
            if let Some(first) = items.first() {
                key_orders(&format!("{path}[]"), first, out);
            }
        }
        Ordered::Object(entries) => {
            out.push((
                path.to_owned(),
                entries.iter().map(|(k, _)| k.clone()).collect(),
            ));
            for (key, value) in entries {
                key_orders(&join(path, key), value, out);
            }
        }
    }
}

fn field<'a>(value: &'a Ordered, key: &str) -> Option<&'a Ordered> {
    match value {
        Ordered::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

fn the_record(seed: &Ordered) -> &Ordered {
    let list = field(seed, "data")
        .and_then(|data| field(data, "customer_list"))
        .expect("data.customer_list");
    match list {
        Ordered::List(items) => items.first().expect("one example record"),
        _ => panic!("customer_list is not a list"),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "float",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every difference of names and types between the seed's `expected` and `actual`. The seed's first
/// array element is the schema of every element of the simulator's array; `filled` collects the array
/// paths that had elements to check.
fn compare(
    path: &str,
    expected: &Value,
    actual: &Value,
    problems: &mut Vec<String>,
    filled: &mut BTreeSet<String>,
) {
    if kind(expected) != kind(actual) {
        problems.push(format!(
            "{path}: {} in the seed, {} in the simulator",
            kind(expected),
            kind(actual)
        ));
        return;
    }
    match (expected, actual) {
        (Value::Object(expected), Value::Object(actual)) => {
            let want: Vec<&String> = expected.keys().collect();
            let have: Vec<&String> = actual.keys().collect();
            if want != have {
                problems.push(format!("{path}: keys {have:?}, the seed has {want:?}"));
            }
            for (key, value) in expected {
                if let Some(other) = actual.get(key) {
                    compare(&join(path, key), value, other, problems, filled);
                }
            }
        }
        (Value::Array(expected), Value::Array(actual)) => {
            let Some(schema) = expected.first() else {
                return;
            };
            if !actual.is_empty() {
                filled.insert(path.to_owned());
            }
            for item in actual {
                compare(&format!("{path}[]"), schema, item, problems, filled);
            }
        }
        _ => {}
    }
}

fn array_paths(path: &str, value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                array_paths(&join(path, key), value, out);
            }
        }
        Value::Array(items) => {
            if let Some(first) = items.first() {
                out.insert(path.to_owned());
                array_paths(&format!("{path}[]"), first, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_schema_has_the_seed_pages_objects_and_field_order() {
    let Some(example) = seed_example() else {
        return;
    };
    let seed: Ordered = serde_json::from_str(&example).unwrap();
    let mut orders = Vec::new();
    key_orders("", the_record(&seed), &mut orders);
    let schema: Vec<(String, Vec<String>)> = SCHEMA
        .iter()
        .map(|(path, keys)| {
            (
                (*path).to_owned(),
                keys.iter().map(|k| (*k).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(schema, orders);
    assert_eq!(
        RECORD_FIELDS.len(),
        19,
        "the page's `array [object {{19}}]`"
    );
}

#[test]
fn records_have_the_seed_pages_fields_and_json_types() {
    let Some(example) = seed_example() else {
        return;
    };
    let seed: Value = serde_json::from_str(&example).unwrap();
    let expected = &seed["data"]["customer_list"][0];
    // Lists are often empty, so many customers (new and changed) are needed to check every element type.
    let mut problems = Vec::new();
    let mut filled = BTreeSet::new();
    for n in 0..300 {
        let mut record = new_record("wloa1", &format!("customer-{n}"), NOW);
        compare("", expected, &record, &mut problems, &mut filled);
        for revision in 1..=3 {
            change(&mut record, revision, NOW + revision as i64 * 1000);
            compare("", expected, &record, &mut problems, &mut filled);
        }
    }
    let problems: BTreeSet<String> = problems.into_iter().collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let mut arrays = BTreeSet::new();
    array_paths("", expected, &mut arrays);
    assert_eq!(
        filled, arrays,
        "every list of the seed was checked with elements"
    );
}

#[test]
fn the_comparison_catches_a_missing_a_renamed_and_a_retyped_field() {
    let seed = json!({"a": "s", "b": 0, "c": [{"d": true}]});
    let check = |actual: Value| {
        let (mut problems, mut filled) = (Vec::new(), BTreeSet::new());
        compare("r", &seed, &actual, &mut problems, &mut filled);
        problems.len()
    };
    assert_eq!(check(json!({"a": "x", "b": 1, "c": [{"d": false}]})), 0);
    assert_eq!(check(json!({"a": "x", "c": []})), 1);
    assert_eq!(check(json!({"a": "x", "b": 1.5, "c": []})), 1);
    assert_eq!(check(json!({"a": "x", "b": 1, "c": [{"e": false}]})), 1);
    assert_eq!(check(json!({"a": "x", "b": "1", "c": [{"d": 0}]})), 2);
    assert_eq!(
        check(json!({"a": "x", "b": 1, "c": [{"d": false}, {"d": 1}]})),
        1
    );
    assert_eq!(
        json_block("x {\"a\": \"}{\", \"b\": {}} y"),
        Some("{\"a\": \"}{\", \"b\": {}}")
    );
    let ordered: Ordered = serde_json::from_str(r#"{"z": 1, "a": {"y": [], "b": null}}"#).unwrap();
    let mut orders = Vec::new();
    key_orders("", &ordered, &mut orders);
    let orders: Vec<(&str, Vec<&str>)> = orders
        .iter()
        .map(|(p, k)| (p.as_str(), k.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(orders, [("", vec!["z", "a"]), ("a", vec!["y", "b"])]);
}

#[test]
fn a_record_has_realistic_values() {
    for n in 0..50 {
        let record = new_record("wloa1", &format!("id-{n}"), NOW);
        let wecom_user = record["type"] == 2;
        assert!(matches!(record["type"].as_i64(), Some(1 | 2)));
        assert!(matches!(record["gender"].as_i64(), Some(0..=2)));
        let external = record["external_userid"].as_str().unwrap();
        assert_eq!(external.len(), 32);
        assert!(external.starts_with(if wecom_user { "wo" } else { "wm" }));
        assert!(record["avatar"].as_str().unwrap().starts_with("https://"));
        assert_eq!(record["corp_name"] == "", !wecom_user, "{record}");
        assert_eq!(record["unionid"] == "", wecom_user);
        let follow = &record["follow_users"][0];
        let created = follow["create_time"].as_i64().unwrap();
        assert_eq!(created % 1000, 0);
        assert!(created <= NOW);
        assert!(STAFF.contains(&follow["userid"].as_str().unwrap()));
        assert!(
            follow["remark"]
                .as_str()
                .unwrap()
                .starts_with(record["name"].as_str().unwrap())
        );
        for tag in follow["tags"].as_array().unwrap() {
            assert_eq!(tag["type"], "1");
        }
        assert_eq!(record["remark_mobiles"], follow["remark_mobiles"]);
        let first = record["first_progress_time"].as_i64().unwrap();
        assert_eq!(first == 0, record["latest_progress_id"] == "");
        assert_eq!(revision(&record), Some(0));
    }
    assert_eq!(new_customer_id().len(), 43);
}

#[test]
fn the_same_customer_id_gives_the_same_person() {
    let a = new_record("wloa1", "same-id", 1_745_818_723_000);
    let b = new_record("wloa1", "same-id", 1_745_818_723_000);
    assert_eq!(a, b);
    assert_ne!(a, new_record("wloa2", "same-id", 1_745_818_723_000));
}

#[test]
fn every_change_raises_the_revision_and_keeps_the_shape() {
    let mut record = new_record("wloa1", "id", NOW);
    let keys = |r: &Value| -> Vec<String> { r.as_object().unwrap().keys().cloned().collect() };
    let shape = keys(&record);
    let base = record["follow_users"][0]["remark"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 1..=12 {
        let before = record.clone();
        change(&mut record, n, NOW);
        assert_ne!(record, before);
        assert_eq!(revision(&record), Some(n));
        assert_eq!(
            record["follow_users"][0]["remark"],
            format!("{base} #{n}"),
            "the suffix replaces the previous one"
        );
        assert_eq!(keys(&record), shape);
        assert_eq!(record["customer_id"], "id");
        let lost = record["lost_state"].as_bool().unwrap();
        for user in record["follow_users"].as_array().unwrap() {
            assert_eq!(user["lost_state"], i64::from(lost));
        }
    }
}

#[test]
fn revision_reads_only_customer_records() {
    assert_eq!(revision(&json!({})), None);
    assert_eq!(revision(&json!({"follow_users": []})), None);
    assert_eq!(revision(&json!({"follow_users": [{"remark": 3}]})), None);
    assert_eq!(
        revision(&json!({"follow_users": [{"remark": "王伟"}]})),
        Some(0)
    );
    assert_eq!(
        revision(&json!({"follow_users": [{"remark": "王伟 #12"}]})),
        Some(12)
    );
    assert_eq!(
        revision(&json!({"follow_users": [{"remark": "A #b"}]})),
        Some(0)
    );
}
