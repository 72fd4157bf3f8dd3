//! Stage 8: an inbox delivery is acked only when every customer id it named is confirmed downstream.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::time::Instant;

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

/// Which deliveries of one channel may be acked now, and how: one `multiple` ack for the longest run
/// of ready deliveries from the oldest unsettled one (a window's worth in one frame instead of one
/// frame each), single acks for the ready ones behind a delivery still being worked on.
///
/// A `multiple` ack settles every unacked delivery up to its tag on the channel, so it must never
/// reach a delivery this consumer has not seen yet: with several partitions on one channel, a
/// lower tag may still sit in another partition's stream. The run therefore stops at the first tag
/// not yet received (tags of a channel are consecutive from 1).
#[derive(Debug, Default)]
pub struct Settlements {
    /// Every tag below this one has been received.
    received_below: DeliveryTag,
    /// Received tags above a gap.
    received_early: BTreeSet<DeliveryTag>,
    /// Received and neither acked nor returned, with when it was received.
    open: BTreeMap<DeliveryTag, Instant>,
    /// Open tags whose work is done: to be acked.
    ready: BTreeSet<DeliveryTag>,
}

/// One ack frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub tag: DeliveryTag,
    pub multiple: bool,
}

impl Settlements {
    pub fn received(&mut self, tag: DeliveryTag, at: Instant) {
        self.open.insert(tag, at);
        if self.received_below == 0 {
            self.received_below = 1;
        }
        if tag == self.received_below {
            self.received_below += 1;
            while self.received_early.remove(&self.received_below) {
                self.received_below += 1;
            }
        } else if tag > self.received_below {
            self.received_early.insert(tag);
        }
    }

    /// The delivery's work is done; it is acked by the next [`Settlements::take_acks`].
    pub fn ready(&mut self, tag: DeliveryTag) {
        if self.open.contains_key(&tag) {
            self.ready.insert(tag);
        }
    }

    /// The delivery was returned (nack, reject) on its own: it is settled and never acked.
    pub fn returned(&mut self, tag: DeliveryTag) {
        self.open.remove(&tag);
        self.ready.remove(&tag);
    }

    /// The acks that settle every ready delivery, oldest first; each tag is acked once.
    pub fn take_acks(&mut self) -> Vec<Ack> {
        let mut acks = Vec::new();
        let mut run_end = None;
        while let Some((&oldest, _)) = self.open.first_key_value() {
            if oldest >= self.received_below || !self.ready.remove(&oldest) {
                break;
            }
            self.open.remove(&oldest);
            run_end = Some(oldest);
        }
        if let Some(tag) = run_end {
            acks.push(Ack {
                tag,
                multiple: true,
            });
        }
        for tag in std::mem::take(&mut self.ready) {
            self.open.remove(&tag);
            acks.push(Ack {
                tag,
                multiple: false,
            });
        }
        acks
    }

    /// Received and not yet acked or returned.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// When the oldest open delivery was received (tags grow in the order of receipt).
    pub fn oldest_open_since(&self) -> Option<Instant> {
        self.open.first_key_value().map(|(_, &at)| at)
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

    #[test]
    fn the_oldest_open_delivery_is_the_lowest_tag_not_settled() {
        let start = Instant::now();
        let later = start + std::time::Duration::from_secs(1);
        let mut s = Settlements::default();
        assert_eq!(s.oldest_open_since(), None);
        s.received(1, start);
        s.received(2, later);
        assert_eq!(s.oldest_open_since(), Some(start));
        s.ready(1);
        s.take_acks();
        assert_eq!(s.oldest_open_since(), Some(later), "1 is acked");
        s.returned(2);
        assert_eq!(s.oldest_open_since(), None, "2 is returned");
    }

    fn settlements(received: &[DeliveryTag]) -> Settlements {
        let mut s = Settlements::default();
        for tag in received {
            s.received(*tag, Instant::now());
        }
        s
    }

    #[test]
    fn a_window_of_ready_deliveries_is_one_multiple_ack() {
        let mut s = settlements(&[1, 2, 3, 4]);
        for tag in [3, 1, 2] {
            s.ready(tag);
        }
        assert_eq!(
            s.take_acks(),
            vec![Ack {
                tag: 3,
                multiple: true
            }]
        );
        assert!(s.take_acks().is_empty(), "each tag is acked once");
        assert_eq!(s.open(), 1);
    }

    #[test]
    fn ready_deliveries_behind_an_open_one_are_acked_one_by_one() {
        let mut s = settlements(&[1, 2, 3]);
        s.ready(2);
        s.ready(3);
        assert_eq!(
            s.take_acks(),
            vec![
                Ack {
                    tag: 2,
                    multiple: false
                },
                Ack {
                    tag: 3,
                    multiple: false
                }
            ],
            "delivery 1 is still being worked on: a multiple ack would settle it"
        );
        s.ready(1);
        assert_eq!(
            s.take_acks(),
            vec![Ack {
                tag: 1,
                multiple: true
            }]
        );
    }

    #[test]
    fn a_multiple_ack_never_reaches_a_tag_not_yet_received() {
        // Tag 2 is still in another partition's stream on the same channel.
        let mut s = settlements(&[1, 3]);
        s.ready(1);
        s.ready(3);
        assert_eq!(
            s.take_acks(),
            vec![
                Ack {
                    tag: 1,
                    multiple: true
                },
                Ack {
                    tag: 3,
                    multiple: false
                }
            ]
        );
        s.received(2, Instant::now());
        s.received(4, Instant::now());
        s.ready(4);
        s.ready(2);
        assert_eq!(
            s.take_acks(),
            vec![Ack {
                tag: 4,
                multiple: true
            }],
            "2 and 4 are the only open tags and every tag up to 4 is received"
        );
    }

    #[test]
    fn returned_deliveries_do_not_hold_back_the_run() {
        let mut s = settlements(&[1, 2, 3]);
        s.returned(1);
        s.ready(2);
        s.ready(3);
        assert_eq!(
            s.take_acks(),
            vec![Ack {
                tag: 3,
                multiple: true
            }],
            "1 is already settled on the channel, so the multiple ack does not touch it"
        );
        s.ready(1);
        assert!(s.take_acks().is_empty(), "a returned tag is never acked");
    }
}
