//! Which inbox partitions this relay consumes. With `amqp.shared_inbox` (one inbox queue that
//! every replica consumes at once) it subscribes to all of them; otherwise it holds the partitions
//! it has claimed ([`claim`]) and balances them with the other relays every [`ROUND`] by the rules
//! of [`share`]. Handing a partition back never leaves two fetchers: its consumer is cancelled, its
//! windows are flushed, every delivery it took is confirmed and acked (or returned), and only then is
//! the claim given up and may another relay subscribe.
//!
//! [`claim`]: crate::amqp::claim
//! [`share`]: super::share

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use rand::seq::SliceRandom;
use tokio::time::Instant;
use tracing::{info, warn};

use super::share::{self, Step};
use crate::amqp::claim::{self, ClaimChannel};
use crate::config::AmqpSettings;

/// How often the share is checked; a join or a death is balanced within a few rounds.
pub const ROUND: Duration = Duration::from_secs(2);
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// A partition another relay turned out to hold (it is finishing a hand-back) is skipped for a round;
/// and one this relay handed back is left to the others for a few rounds.
const REFUSED_BACKOFF: Duration = ROUND;
const HANDED_BACK_BACKOFF: Duration = Duration::from_secs(10);

/// What one partition's consumer stream yields, tagged with the partition's index.
// Nearly every item is a delivery: boxing it would cost an allocation per delivery to shrink the rare
// end and error items.
#[allow(clippy::large_enum_variant)]
pub enum Inbound {
    Delivery(lapin::message::Delivery),
    Failed(String),
    /// The consumer ended: cancelled by this relay, or by the broker.
    Ended,
}

/// Sync as well as Send: the session is borrowed across awaits in a spawned task.
pub type Deliveries =
    std::pin::Pin<Box<dyn futures::Stream<Item = (usize, Inbound)> + Send + Sync>>;

#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error("the broker link is gone")]
    LinkLost,
    #[error("joining the relays' roster failed: {0}")]
    Roster(lapin::Error),
    #[error("subscribing to a partition failed: {0}")]
    Subscribe(#[from] lapin::Error),
    /// A subscription the broker never answered would leave the partition claimed and unconsumed.
    #[error("subscribing to a partition timed out")]
    SubscribeTimedOut,
    #[error("{0} shows no consumer although this relay holds it")]
    ConsumerGone(String),
}

#[derive(PartialEq, Eq)]
enum State {
    Free,
    Held {
        consumer_tag: String,
    },
    /// Cancelled; its deliveries are being finished before the claim is given up.
    Releasing,
}

pub struct Partitions {
    queues: Vec<String>,
    state: Vec<State>,
    refused_until: Vec<Option<Instant>>,
    unclaim_failed: Vec<bool>,
    balanced: bool,
    claims: ClaimChannel,
    tag_prefix: String,
    roster_tag: Option<String>,
    /// Kept so the roster subscription lives as long as the session.
    _roster: Option<lapin::Consumer>,
    last_ask: Option<Instant>,
    standby: bool,
}

impl Partitions {
    /// Subscribes: to every inbox queue with `shared_inbox`, else to the roster only (the first
    /// [`Partitions::round`] claims).
    pub async fn open(
        channel: &Channel,
        amqp: &AmqpSettings,
        tag_prefix: String,
        consumer: &mut futures::stream::SelectAll<Deliveries>,
    ) -> Result<Partitions, RoundError> {
        let queues = amqp.inbox_queues();
        let balanced = !amqp.shared_inbox;
        let mut partitions = Partitions {
            state: queues.iter().map(|_| State::Free).collect(),
            refused_until: vec![None; queues.len()],
            unclaim_failed: vec![false; queues.len()],
            queues,
            balanced,
            claims: ClaimChannel::default(),
            tag_prefix,
            roster_tag: None,
            _roster: None,
            last_ask: None,
            standby: false,
        };
        if !balanced {
            for index in 0..partitions.queues.len() {
                partitions.subscribe(channel, index, consumer).await?;
            }
            crate::metrics::partitions_held(partitions.queues.len());
            return Ok(partitions);
        }
        claim::declare(channel, amqp)
            .await
            .map_err(RoundError::Roster)?;
        let tag = format!("{}-roster", partitions.tag_prefix);
        let roster = channel
            .basic_consume(
                claim::roster_queue(amqp).as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(RoundError::Roster)?;
        partitions.roster_tag = Some(tag);
        partitions._roster = Some(roster);
        Ok(partitions)
    }

    /// Whether balancing rounds run at all.
    pub fn balanced(&self) -> bool {
        self.balanced
    }

    pub fn queue(&self, index: usize) -> &str {
        self.queues.get(index).map_or("?", String::as_str)
    }

    pub fn count(&self) -> usize {
        self.queues.len()
    }

    /// Whether a consumer's end is this relay's own doing (a hand-back or the drain).
    pub fn expects_end(&self, index: usize) -> bool {
        !matches!(self.state.get(index), Some(State::Held { .. }))
    }

    async fn subscribe(
        &mut self,
        channel: &Channel,
        index: usize,
        consumer: &mut futures::stream::SelectAll<Deliveries>,
    ) -> Result<(), RoundError> {
        let Some(queue) = self.queues.get(index) else {
            return Ok(());
        };
        let consumer_tag = format!("{}-{queue}", self.tag_prefix);
        let subscribing = channel.basic_consume(
            queue.as_str().into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let deliveries = tokio::time::timeout(OP_TIMEOUT, subscribing)
            .await
            .map_err(|_| RoundError::SubscribeTimedOut)??;
        // The end is an item of its own, so a consumer the broker cancels (its queue deleted, say)
        // ends the session and the reconnect re-declares the topology.
        let stream: Deliveries = Box::pin(
            deliveries
                .map(move |next| match next {
                    Ok(delivery) => (index, Inbound::Delivery(delivery)),
                    Err(error) => (index, Inbound::Failed(format!("consumer error: {error}"))),
                })
                .chain(futures::stream::once(
                    async move { (index, Inbound::Ended) },
                )),
        );
        consumer.push(stream);
        if let Some(state) = self.state.get_mut(index) {
            *state = State::Held { consumer_tag };
        }
        Ok(())
    }

    /// Cancels the consumer of every held partition (the drain), and leaves the roster.
    pub async fn cancel_all(&mut self, channel: &Channel) {
        for index in 0..self.state.len() {
            self.cancel(channel, index).await;
        }
        if let Some(tag) = self.roster_tag.take() {
            let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            let _ = tokio::time::timeout(OP_TIMEOUT, cancel).await;
        }
        crate::metrics::partitions_held(0);
    }

    async fn cancel(&mut self, channel: &Channel, index: usize) {
        // Only a held partition is handed back; a free or releasing one stays as it is.
        let Some(state) = self
            .state
            .get_mut(index)
            .filter(|state| matches!(state, State::Held { .. }))
        else {
            return;
        };
        let State::Held { consumer_tag } = std::mem::replace(state, State::Releasing) else {
            return;
        };
        let cancel =
            channel.basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default());
        let failure = match tokio::time::timeout(OP_TIMEOUT, cancel).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        warn!(error = %failure, queue = %self.queue(index), "cancelling a partition's consumer failed");
    }

    /// Every partition this relay holds must show its consumer on the broker. The broker cancels
    /// the consumer of a deleted queue; were that cancel never to reach the session, the partition
    /// would stay claimed and unconsumed for the relay's lifetime while the re-declared queue filled
    /// up. No consumer ends the session, and the reconnect subscribes afresh. A failed read only
    /// skips the check: the queue may be missing until the publisher re-declares it.
    async fn check_held(&mut self, connection: &Connection) -> Result<(), RoundError> {
        let held: Vec<String> = self
            .state
            .iter()
            .zip(&self.queues)
            .filter(|(state, _)| matches!(state, State::Held { .. }))
            .map(|(_, queue)| queue.clone())
            .collect();
        for queue in held {
            if let Ok(0) = self.claims.consumers(connection, &queue).await {
                return Err(RoundError::ConsumerGone(queue));
            }
        }
        Ok(())
    }

    fn held(&self) -> usize {
        self.state
            .iter()
            .filter(|state| matches!(state, State::Held { .. }))
            .count()
    }

    /// One balancing round. `open[i]` is how many deliveries of partition `i` are not settled yet.
    /// Returns whether a hand-back started, so the caller flushes its windows now instead of
    /// waiting for their timers. A broker error here only skips the round; an error on the
    /// consumer's channel, or a link that is gone, ends the session.
    pub async fn round(
        &mut self,
        connection: &Connection,
        channel: &Channel,
        amqp: &AmqpSettings,
        consumer: &mut futures::stream::SelectAll<Deliveries>,
        open: &[usize],
    ) -> Result<bool, RoundError> {
        // A relay holding no partition has no consumer stream to report a dead link: without this
        // a standby (or a relay whose claims failed while the broker restarted) would wait on a
        // connection that no longer exists.
        if !connection.status().connected() || !channel.status().connected() {
            return Err(RoundError::LinkLost);
        }
        if !self.balanced {
            return Ok(false);
        }
        self.check_held(connection).await?;
        self.finish_releases(connection, open, true).await;
        let relays = match self
            .claims
            .consumers(connection, &claim::roster_queue(amqp))
            .await
        {
            Ok(relays) => relays as usize,
            Err(error) => {
                warn!(%error, "balancing round skipped: the roster is not readable");
                return Ok(false);
            }
        };
        let asked = match self.claims.rebalance_asked(connection, amqp).await {
            Ok(asked) => asked,
            Err(error) => {
                warn!(%error, "balancing round skipped: the rebalance queue is not readable");
                return Ok(false);
            }
        };
        let held = self.held();
        let mut released = false;
        match share::step(self.queues.len(), relays, held, asked) {
            Step::Hold => {}
            Step::Release(count) => {
                let mut mine: Vec<usize> = (0..self.state.len())
                    .filter(|i| matches!(self.state.get(*i), Some(State::Held { .. })))
                    .collect();
                mine.shuffle(&mut rand::rng());
                for index in mine.into_iter().take(count) {
                    info!(queue = %self.queue(index), relays, held, "handing a partition back");
                    self.cancel(channel, index).await;
                    released = true;
                }
            }
            Step::Claim { up_to, starving } => {
                let got = self
                    .claim_free(connection, channel, consumer, up_to)
                    .await?;
                if starving && got < up_to {
                    self.ask_rebalance(connection, amqp).await;
                }
                // Said once per stretch: more relays than partitions, or one inbox queue that
                // another relay consumes.
                if got == 0 && !self.standby {
                    info!(
                        relays,
                        partitions = self.queues.len(),
                        "every inbox partition is held by another relay: serving callbacks, on standby for the inbox"
                    );
                }
                self.standby = got == 0;
            }
        }
        crate::metrics::partitions_held(self.held());
        Ok(released)
    }

    /// Whether a hand-back waits for its partition's deliveries to settle.
    pub fn releasing(&self) -> bool {
        self.state.contains(&State::Releasing)
    }

    /// Gives up the claims of released partitions whose deliveries are all settled; the consumer
    /// calls it as soon as they are, so the next relay need not wait for a round.
    /// A claim that could not be given up is tried again by the next round only (`retry_failed`),
    /// so a broken balancer channel never holds the consumer up.
    pub async fn finish_releases(
        &mut self,
        connection: &Connection,
        open: &[usize],
        retry_failed: bool,
    ) {
        for index in 0..self.state.len() {
            let settled = open.get(index).copied().unwrap_or(0) == 0;
            let failed_before = self.unclaim_failed.get(index).copied().unwrap_or(false);
            if self.state.get(index) != Some(&State::Releasing)
                || !settled
                || (failed_before && !retry_failed)
            {
                continue;
            }
            let Some(queue) = self.queues.get(index).cloned() else {
                continue;
            };
            let result = self.claims.unclaim(connection, &queue).await;
            if let Some(failed) = self.unclaim_failed.get_mut(index) {
                *failed = result.is_err();
            }
            match result {
                Ok(()) => {
                    if let Some(state) = self.state.get_mut(index) {
                        *state = State::Free;
                    }
                    // Not straight back: the relay it was handed to needs a round to take it.
                    if let Some(until) = self.refused_until.get_mut(index) {
                        *until = Some(Instant::now() + HANDED_BACK_BACKOFF);
                    }
                    info!(queue = %queue, "partition handed back");
                }
                Err(error) => warn!(%error, queue = %queue, "giving a claim up failed; next round"),
            }
        }
    }

    /// Claims free partitions (no consumer, claim not held) in a random order until `up_to` are
    /// held; returns how many are held.
    async fn claim_free(
        &mut self,
        connection: &Connection,
        channel: &Channel,
        consumer: &mut futures::stream::SelectAll<Deliveries>,
        up_to: usize,
    ) -> Result<usize, RoundError> {
        let now = Instant::now();
        let mut candidates: Vec<usize> = (0..self.state.len())
            .filter(|i| self.state.get(*i) == Some(&State::Free))
            .filter(|i| {
                self.refused_until
                    .get(*i)
                    .copied()
                    .flatten()
                    .is_none_or(|until| until <= now)
            })
            .collect();
        candidates.shuffle(&mut rand::rng());
        for index in candidates {
            if self.held() >= up_to {
                break;
            }
            let Some(queue) = self.queues.get(index).cloned() else {
                continue;
            };
            // A consumer means another relay holds it: asking the broker costs no channel.
            match self.claims.consumers(connection, &queue).await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(error) => {
                    warn!(%error, queue = %queue, "partition not readable; next round");
                    continue;
                }
            }
            match self.claims.claim(connection, &queue).await {
                Ok(true) => {
                    info!(queue = %queue, "partition claimed");
                    self.subscribe(channel, index, consumer).await?;
                }
                Ok(false) => {
                    if let Some(until) = self.refused_until.get_mut(index) {
                        *until = Some(now + REFUSED_BACKOFF);
                    }
                }
                Err(error) => warn!(%error, queue = %queue, "claim failed; next round"),
            }
        }
        Ok(self.held())
    }

    async fn ask_rebalance(&mut self, connection: &Connection, amqp: &AmqpSettings) {
        let recently = self
            .last_ask
            .is_some_and(|at| at.elapsed() < claim::ASK_TTL / 2);
        if recently {
            return;
        }
        match self.claims.ask_rebalance(connection, amqp).await {
            Ok(()) => {
                info!(
                    held = self.held(),
                    "below this relay's share with none free: asked the others to rebalance"
                );
                self.last_ask = Some(Instant::now());
            }
            Err(error) => warn!(%error, "rebalance ask failed; next round"),
        }
    }
}
