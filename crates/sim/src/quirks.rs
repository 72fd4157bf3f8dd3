//! Answers Weiling may give that the documents allow but do not promise: a whole batch refused
//! for one id, ids echoed as numbers, a `code` 0 without the list, records with fields and number
//! texts the relay has never seen. Off by default; tests switch them on.

use std::collections::{HashMap, HashSet};

use super::Simulator;
use weiling_proto::entity::Entity;

/// Quirk switches, read by the batch endpoints.
#[derive(Debug, Clone, Default)]
pub(super) struct Quirks {
    /// `Some(code)`: a batch holding an id the simulator does not know is refused as a whole with
    /// this code (3000 客户不存在) instead of leaving the id out (the assumed default).
    pub unknown_ids_refuse: Option<i64>,
    /// A batch holding one of these ids is refused as a whole with the mapped code.
    pub poisoned: HashMap<String, i64>,
    /// Ids of all digits are echoed back as JSON numbers.
    pub numeric_ids: bool,
    /// `code` 0 with `data` but no list in it.
    pub no_list: bool,
    /// (entity, app, id) → the exact JSON text served for that record instead of the stored one.
    pub raw_records: HashMap<(Entity, String, String), String>,
}

impl Quirks {
    /// The refusal code for a batch of `ids`, if any: a poisoned id first, then an unknown one.
    pub fn refusal(&self, ids: &[String], known: &HashSet<&str>) -> Option<i64> {
        if let Some(code) = ids.iter().find_map(|id| self.poisoned.get(id)) {
            return Some(*code);
        }
        let code = self.unknown_ids_refuse?;
        ids.iter()
            .any(|id| !known.contains(id.as_str()))
            .then_some(code)
    }
}

impl Simulator {
    /// `Some(code)`: refuse a whole batch that holds an unknown id with `code`; `None`: leave
    /// unknown ids out of the list and answer code 0 (weiling-api.md's assumption).
    pub fn set_unknown_ids_refused_with(&self, code: Option<i64>) {
        self.shared.lock().quirks.unknown_ids_refuse = code;
    }

    /// Every batch holding `id` is refused as a whole with `code` (a malformed or forbidden id).
    pub fn poison_id(&self, id: &str, code: i64) {
        self.shared
            .lock()
            .quirks
            .poisoned
            .insert(id.to_owned(), code);
    }

    /// Echo ids made only of digits as JSON numbers.
    pub fn set_numeric_ids(&self, on: bool) {
        self.shared.lock().quirks.numeric_ids = on;
    }

    /// Answer `code` 0 with `data` but without `customer_list` / `contact_list`.
    pub fn set_answer_without_list(&self, on: bool) {
        self.shared.lock().quirks.no_list = on;
    }

    /// Serve `json` verbatim as the record of `id` (which then counts as known). The text is not
    /// checked: a test chooses it to carry fields and number texts the relay has never seen.
    pub fn set_raw_record(&self, entity: Entity, app_id: &str, id: &str, json: &str) {
        self.shared
            .lock()
            .quirks
            .raw_records
            .insert((entity, app_id.to_owned(), id.to_owned()), json.to_owned());
    }
}
