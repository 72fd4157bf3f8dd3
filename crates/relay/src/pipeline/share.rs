//! How many inbox partitions one relay should hold, from nothing but what the broker tells every
//! relay alike: how many relays consume ([`crate::amqp::claim`]'s roster) and whether one of them
//! asked for a rebalance. Pure, so the rules are tested without a broker.
//!
//! With P partitions and R relays each relay ends with ⌊P/R⌋ or ⌈P/R⌉:
//! - above ⌈P/R⌉ (a relay joined) it hands the extras back;
//! - below ⌊P/R⌋ it claims free partitions at once, and asks for a rebalance when none is free;
//! - while a rebalance is asked for, relays above ⌊P/R⌋ hand back down to it and nobody claims
//!   beyond it, so the starving relay finds partitions free;
//! - otherwise a relay at ⌊P/R⌋ may claim one more free partition, up to ⌈P/R⌉, which places the
//!   P mod R partitions left over.

/// What one balancing round should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Hand this many partitions back.
    Release(usize),
    /// Claim free partitions until holding this many; `starving` when fewer than ⌊P/R⌋ are held,
    /// so a round that finds none free should ask the others to rebalance.
    Claim {
        up_to: usize,
        starving: bool,
    },
    Hold,
}

/// The next step for a relay that holds `held` of `partitions` while `relays` relays (itself
/// included) consume.
pub fn step(partitions: usize, relays: usize, held: usize, rebalance_asked: bool) -> Step {
    // The roster can lag behind this relay's own arrival; it counts at least itself.
    let relays = relays.max(1);
    let floor = partitions / relays;
    let ceil = partitions.div_ceil(relays);
    if held > ceil {
        return Step::Release(held - ceil);
    }
    if rebalance_asked && held > floor {
        return Step::Release(held - floor);
    }
    if held < floor {
        return Step::Claim {
            up_to: floor,
            starving: true,
        };
    }
    if !rebalance_asked && held < ceil {
        return Step::Claim {
            up_to: ceil,
            starving: false,
        };
    }
    Step::Hold
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs rounds of `step` for every relay until nothing changes, claiming from a shared pool
    /// in relay order; returns what each holds.
    fn settle(partitions: usize, mut held: Vec<usize>) -> Vec<usize> {
        let relays = held.len();
        let mut asked_rounds: u32 = 0;
        for _ in 0..50 {
            let before = held.clone();
            let asked = asked_rounds > 0;
            asked_rounds = asked_rounds.saturating_sub(1);
            for me in 0..relays {
                let free = partitions - held.iter().sum::<usize>();
                match step(partitions, relays, held[me], asked) {
                    Step::Release(n) => held[me] -= n,
                    Step::Claim { up_to, starving } => {
                        let got = (up_to - held[me]).min(free);
                        held[me] += got;
                        if starving && held[me] < up_to {
                            asked_rounds = 3;
                        }
                    }
                    Step::Hold => {}
                }
            }
            if held == before && !asked && asked_rounds == 0 {
                break;
            }
        }
        held
    }

    fn is_fair(partitions: usize, held: &[usize]) -> bool {
        let floor = partitions / held.len();
        let ceil = partitions.div_ceil(held.len());
        held.iter().sum::<usize>() == partitions && held.iter().all(|h| (floor..=ceil).contains(h))
    }

    #[test]
    fn a_lone_relay_claims_every_partition() {
        assert_eq!(
            step(8, 1, 0, false),
            Step::Claim {
                up_to: 8,
                starving: true
            }
        );
        assert_eq!(step(8, 1, 8, false), Step::Hold);
        assert_eq!(step(1, 0, 0, false), step(1, 1, 0, false));
    }

    #[test]
    fn a_joining_relay_makes_the_others_hand_back() {
        // 8 on 2 relays, a third joins: 4 > ⌈8/3⌉ = 3.
        assert_eq!(step(8, 3, 4, false), Step::Release(1));
        assert_eq!(settle(8, vec![4, 4, 0]), vec![3, 3, 2]);
    }

    #[test]
    fn a_starving_relay_gets_its_floor_through_a_rebalance() {
        // 10 on 4: ⌊⌋ = 2, ⌈⌉ = 3. Three relays at 3 leave 1 for the fourth; only the ask helps.
        assert_eq!(
            step(10, 4, 1, false),
            Step::Claim {
                up_to: 2,
                starving: true
            }
        );
        assert_eq!(step(10, 4, 3, true), Step::Release(1));
        assert_eq!(step(10, 4, 2, true), Step::Hold);
        let held = settle(10, vec![3, 3, 3, 1]);
        assert!(is_fair(10, &held), "{held:?}");
    }

    #[test]
    fn survivors_split_a_dead_relays_partitions() {
        assert_eq!(settle(8, vec![3, 3]), vec![4, 4]);
        assert_eq!(settle(8, vec![3, 2]), vec![4, 4]);
    }

    #[test]
    fn one_partition_has_one_holder_and_standbys() {
        assert_eq!(step(1, 2, 1, false), Step::Hold);
        assert_eq!(
            step(1, 2, 0, false),
            Step::Claim {
                up_to: 1,
                starving: false
            }
        );
        assert_eq!(settle(1, vec![0, 0, 0]), vec![1, 0, 0]);
    }

    #[test]
    fn every_start_ends_fair() {
        for partitions in 1..=12 {
            for relays in 1..=5 {
                let mut start = vec![0; relays];
                start[0] = partitions;
                let held = settle(partitions, start);
                assert!(is_fair(partitions, &held), "P={partitions}: {held:?}");
            }
        }
    }
}
