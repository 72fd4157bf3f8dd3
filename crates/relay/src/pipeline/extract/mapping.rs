//! event_type → the entity it changed and the affected ids, from the `[events]` table of JSON pointers
//! and conditions.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::config::{EventMapping, EventRule};
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

pub struct Mapping {
    rules: HashMap<String, Vec<EventRule>>,
}

impl Mapping {
    pub fn new(events: &BTreeMap<String, EventMapping>) -> Self {
        let rules = events
            .iter()
            .filter(|(_, mapping)| !mapping.rules.is_empty())
            .map(|(event_type, mapping)| (event_type.clone(), mapping.rules.clone()))
            .collect();
        Self { rules }
    }

    /// Pointers and conditions address the event's `event` object (or, for a rule with `each`, each
    /// element of that array). The first rule whose condition holds decides; later ones are not tried.
    pub fn extract(&self, event_type: &str, message: &Value) -> Extracted {
        let Some(rules) = self.rules.get(event_type) else {
            return Extracted::Unmapped;
        };
        let Some(event) = message.get("event") else {
            return Extracted::NoIds;
        };
        for rule in rules {
            let mut matched = false;
            let mut ids: Vec<String> = Vec::new();
            for scope in scopes(rule, event) {
                if !conditions_hold(rule, scope) {
                    continue;
                }
                matched = true;
                for pointer in &rule.ids {
                    collect_ids(scope.pointer(pointer), &mut ids);
                }
            }
            if matched {
                return if ids.is_empty() {
                    Extracted::NoIds
                } else {
                    Extracted::Ids(rule.entity, ids)
                };
            }
        }
        Extracted::NoIds
    }
}

/// The objects a rule reads: the event itself, or every element of its `each` array.
fn scopes<'a>(rule: &EventRule, event: &'a Value) -> Vec<&'a Value> {
    match &rule.each {
        None => vec![event],
        Some(pointer) => match event.pointer(pointer) {
            Some(Value::Array(items)) => items.iter().collect(),
            _ => Vec::new(),
        },
    }
}

fn conditions_hold(rule: &EventRule, scope: &Value) -> bool {
    rule.when.iter().all(|(pointer, expected)| {
        scope
            .pointer(pointer)
            .is_some_and(|v| loosely_equal(v, expected))
    })
}

/// A pointer to an array takes every element.
fn collect_ids(value: Option<&Value>, ids: &mut Vec<String>) {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(as_id)
            .for_each(|id| push_distinct(ids, id)),
        Some(value) => {
            if let Some(id) = as_id(value) {
                push_distinct(ids, id);
            }
        }
        None => {}
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

    /// Mappings in the file form, so the tests read like `[events]`.
    fn mapping() -> Mapping {
        let events: BTreeMap<String, EventMapping> = toml::from_str(
            r#"
            add_customer = ["/customer_id"]
            tagged = ["/customer_ids", "/also"]
            progress_add = { ids = ["/business_related_id"], when = { "/type" = 1 } }
            contact_add = { entity = "contact", ids = ["/contact_id"] }
            turned_off = []
            company_add = [
                { entity = "contact", each = "/customer_list", ids = ["/id"], when = { "/type" = 0 } },
            ]
            tag_update = [
                { ids = ["/id"], when = { "/type" = 1 } },
                { entity = "contact", ids = ["/id"], when = { "/type" = 1 } },
                { entity = "contact", ids = ["/id"], when = { "/type" = 0 } },
            ]
            "#,
        )
        .unwrap();
        Mapping::new(&events)
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
    fn each_applies_the_condition_to_every_element_of_a_list() {
        let event = json!({"event": {"company_id": "co1", "customer_list": [
            {"id": "k1", "type": 0, "nick_name": "a"},
            {"id": "visitor", "type": 4, "nick_name": "b"},
            {"id": "k2", "type": "0"},
            {"id": "k1", "type": 0},
            "not an object",
        ]}});
        assert_eq!(
            mapping().extract("company_add", &event),
            Extracted::Ids(Entity::Contact, vec!["k1".into(), "k2".into()]),
            "visitors (type 4) are not contacts"
        );
        let only_visitors = json!({"event": {"customer_list": [{"id": "v", "type": 4}]}});
        assert_eq!(
            mapping().extract("company_add", &only_visitors),
            Extracted::NoIds
        );
        assert_eq!(
            mapping().extract("company_add", &json!({"event": {"customer_list": "x"}})),
            Extracted::NoIds
        );
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let m = mapping();
        assert_eq!(
            m.extract("tag_update", &json!({"event": {"id": "c1", "type": "1"}})),
            Extracted::Ids(Entity::Customer, vec!["c1".into()]),
            "the contact rule for type 1 comes second and is never reached"
        );
        assert_eq!(
            m.extract("tag_update", &json!({"event": {"id": "k1", "type": 0}})),
            Extracted::Ids(Entity::Contact, vec!["k1".into()])
        );
        assert_eq!(
            m.extract("tag_update", &json!({"event": {"id": "co", "type": "3"}})),
            Extracted::NoIds,
            "a company tag names neither"
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
            m.extract("turned_off", &json!({"event": {"customer_id": "c"}})),
            Extracted::Unmapped,
            "an empty list turns a mapping off"
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
