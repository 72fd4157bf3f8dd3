//! Stage 8: an inbox delivery is acked only when every customer id it named is confirmed downstream.

use std::collections::HashMap;

use crate::pipeline::window::coalescer::DeliveryTag;

/// Counts, per delivery, the distinct ids still waiting for their records' confirms.
#[derive(Debug, Default)]
pub struct AckTracker {
    waiting: HashMap<DeliveryTag, usize>,
}

impl AckTracker {
    /// Registers a delivery that named `distinct_ids` ids (at least one).
    pub fn expect(&mut self, delivery: DeliveryTag, distinct_ids: usize) {
        self.waiting.insert(delivery, distinct_ids.max(1));
    }

    /// One id's records are confirmed; `deliveries` are those that named it. Returns the deliveries
    /// whose every id is now confirmed: those may be acked.
    pub fn confirmed(&mut self, deliveries: &[DeliveryTag]) -> Vec<DeliveryTag> {
        let mut complete = Vec::new();
        for delivery in deliveries {
            if let Some(count) = self.waiting.get_mut(delivery) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.waiting.remove(delivery);
                    complete.push(*delivery);
                }
            }
        }
        complete
    }

    /// An id could not be enriched or published; its deliveries will not be acked. Returns those that
    /// were still waiting (each exactly once), to be returned to the broker.
    pub fn failed(&mut self, deliveries: &[DeliveryTag]) -> Vec<DeliveryTag> {
        deliveries
            .iter()
            .filter(|d| self.waiting.remove(d).is_some())
            .copied()
            .collect()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_acked_after_its_last_id() {
        let mut t = AckTracker::default();
        t.expect(1, 2);
        t.expect(2, 1);
        assert_eq!(t.confirmed(&[1, 2]), vec![2], "delivery 2 named one id");
        assert_eq!(t.confirmed(&[1]), vec![1]);
        assert_eq!(t.waiting(), 0);
        assert!(
            t.confirmed(&[1]).is_empty(),
            "an acked delivery is never acked twice"
        );
    }

    #[test]
    fn a_failed_id_keeps_its_deliveries_from_being_acked() {
        let mut t = AckTracker::default();
        t.expect(7, 2);
        t.expect(8, 1);
        assert_eq!(t.failed(&[7, 8]), vec![7, 8]);
        assert!(
            t.confirmed(&[7]).is_empty(),
            "a failed delivery is not acked later"
        );
        assert!(t.failed(&[7]).is_empty(), "nor returned twice");
    }
}
