//! event_type → the entity it changed and the affected ids, from the `[events]` table of JSON pointers
//! and conditions.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::config::EventMapping;
use crate::entity::Entity;

/// What an inbox event means for the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    /// The event type is not in `[events]`: stored for subscribers, nothing to enrich.
    Unmapped,
    /// The type is mapped but this event carries no id (a condition did not hold, or the field is absent).
    NoIds,
    /// Distinct ids of the configured entity, in the order found.
    Ids(Entity, Vec<String>),
}

struct Rule {
    entity: Entity,
    ids: Vec<String>,
    when: BTreeMap<String, Value>,
}

pub struct Mapping {
    rules: HashMap<String, Rule>,
}

impl Mapping {
    pub fn new(events: &BTreeMap<String, EventMapping>) -> Self {
        let rules = events
            .iter()
            .map(|(event_type, mapping)| {
                let when = match mapping {
                    EventMapping::Pointers(_) => BTreeMap::new(),
                    EventMapping::Conditional { when, .. } => when.clone(),
                };
                let rule = Rule {
                    entity: mapping.entity(),
                    ids: mapping.pointers().to_vec(),
                    when,
                };
                (event_type.clone(), rule)
            })
            .collect();
        Self { rules }
    }

    /// Pointers and conditions address the event's `event` object.
    pub fn extract(&self, event_type: &str, message: &Value) -> Extracted {
        let Some(rule) = self.rules.get(event_type) else {
            return Extracted::Unmapped;
        };
        let Some(event) = message.get("event") else {
            return Extracted::NoIds;
        };
        let conditions_hold = rule.when.iter().all(|(pointer, expected)| {
            event
                .pointer(pointer)
                .is_some_and(|v| loosely_equal(v, expected))
        });
        if !conditions_hold {
            return Extracted::NoIds;
        }
        let mut ids: Vec<String> = Vec::new();
        for pointer in &rule.ids {
            match event.pointer(pointer) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(as_id)
                    .for_each(|id| push_distinct(&mut ids, id)),
                Some(value) => {
                    if let Some(id) = as_id(value) {
                        push_distinct(&mut ids, id);
                    }
                }
                None => {}
            }
        }
        if ids.is_empty() {
            Extracted::NoIds
        } else {
            Extracted::Ids(rule.entity, ids)
        }
    }
}

impl Mapping {
    /// The entity and first id an event names, if any: what a partitioned inbox routes by.
    pub fn first_id(&self, event_type: &str, message: &Value) -> Option<(Entity, String)> {
        match self.extract(event_type, message) {
            Extracted::Ids(entity, ids) => ids.into_iter().next().map(|id| (entity, id)),
            Extracted::Unmapped | Extracted::NoIds => None,
        }
    }
}

fn push_distinct(ids: &mut Vec<String>, id: String) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}

/// Ids are strings; a number is accepted as its decimal text. Empty or oversized values are not ids
/// (they would become routing keys and header values).
fn as_id(value: &Value) -> Option<String> {
    let id = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!id.is_empty() && id.len() <= 128).then_some(id)
}

/// Weiling sends the same field as a number on one page and a string on another, so `1` and `"1"`
/// match.
fn loosely_equal(actual: &Value, expected: &Value) -> bool {
    if actual == expected {
        return true;
    }
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    matches!((text(actual), text(expected)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping() -> Mapping {
        Mapping::new(&BTreeMap::from([
            (
                "add_customer".to_owned(),
                EventMapping::Pointers(vec!["/customer_id".into()]),
            ),
            (
                "tagged".to_owned(),
                EventMapping::Pointers(vec!["/customer_ids".into(), "/also".into()]),
            ),
            (
                "progress_add".to_owned(),
                EventMapping::Conditional {
                    entity: Entity::Customer,
                    ids: vec!["/business_related_id".into()],
                    when: BTreeMap::from([("/type".to_owned(), json!(1))]),
                },
            ),
            (
                "contact_add".to_owned(),
                EventMapping::Conditional {
                    entity: Entity::Contact,
                    ids: vec!["/contact_id".into()],
                    when: BTreeMap::new(),
                },
            ),
        ]))
    }

    #[test]
    fn a_table_mapping_names_its_entity() {
        assert_eq!(
            mapping().extract("contact_add", &json!({"event": {"contact_id": "k1"}})),
            Extracted::Ids(Entity::Contact, vec!["k1".into()])
        );
    }

    #[test]
    fn extracts_ids_by_pointer_arrays_and_conditions() {
        let m = mapping();
        assert_eq!(
            m.extract("add_customer", &json!({"event": {"customer_id": "c1"}})),
            Extracted::Ids(Entity::Customer, vec!["c1".into()])
        );
        assert_eq!(
            m.extract(
                "tagged",
                &json!({"event": {"customer_ids": ["a", "b", "a", 7, null], "also": "b"}})
            ),
            Extracted::Ids(Entity::Customer, vec!["a".into(), "b".into(), "7".into()])
        );
        assert_eq!(
            m.extract(
                "progress_add",
                &json!({"event": {"type": 1, "business_related_id": "c9"}})
            ),
            Extracted::Ids(Entity::Customer, vec!["c9".into()])
        );
        assert_eq!(
            m.extract(
                "progress_add",
                &json!({"event": {"type": "1", "business_related_id": "c9"}})
            ),
            Extracted::Ids(Entity::Customer, vec!["c9".into()]),
            "a numeric field sent as a string still matches"
        );
        assert_eq!(
            m.extract(
                "progress_add",
                &json!({"event": {"type": 0, "business_related_id": "clue"}})
            ),
            Extracted::NoIds,
            "type 0 names a clue, not a customer"
        );
    }

    #[test]
    fn unmapped_and_idless_events_are_told_apart() {
        let m = mapping();
        assert_eq!(
            m.extract("group_chat_update", &json!({"event": {}})),
            Extracted::Unmapped
        );
        assert_eq!(
            m.extract("add_customer", &json!({"event": {}})),
            Extracted::NoIds
        );
        assert_eq!(
            m.extract("add_customer", &json!({"header": {}})),
            Extracted::NoIds
        );
        assert_eq!(
            m.extract("add_customer", &json!({"event": {"customer_id": ""}})),
            Extracted::NoIds
        );
    }
}
