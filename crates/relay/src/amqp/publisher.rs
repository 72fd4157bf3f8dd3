//! Supervised confirmed publisher: one connection and confirm channel, many confirms in flight,
//! reconnect with capped backoff, topology re-declared, returns matched by `message_id`.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, Event};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::link::Reconnect;
use super::topology;
use crate::config::AmqpSettings;

/// Confirms awaited at once on one channel; beyond this, new publishes wait in the request queue
/// (and their callers hit their own deadline), so memory stays bounded while the broker is slow.
const MAX_PENDING_CONFIRMS: usize = 8192;
const REQUEST_QUEUE: usize = 4096;
/// Writing one publish into lapin's buffers should take microseconds; longer means the link is stuck.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// A confirm that takes this long while the broker is not blocking us means a dead or stalled link;
/// reconnecting is faster than waiting for the heartbeat to notice.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const LIVENESS_CHECK: Duration = Duration::from_millis(500);

/// A message to publish. `properties.message_id` must be set: a returned message is matched to its
/// publish by that id, because lapin may attach a return to the wrong confirm.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub mandatory: bool,
}

/// What the broker link can do right now; readiness and admission are derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Ready,
    /// The broker raised a memory or disk alarm and blocks publishers.
    Blocked,
    Down,
    Closed,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Ready => "ready",
            Self::Blocked => "blocked",
            Self::Down => "down",
            Self::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("broker connection is not available")]
    Unavailable,
    #[error("broker is blocking publishers (resource alarm)")]
    Blocked,
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message could not be routed to any queue and was returned")]
    Returned,
    #[error("no confirm from the broker in time")]
    Timeout,
    #[error("connection to the broker was lost before the confirm")]
    ConnectionLost,
    #[error("publisher has shut down")]
    Closed,
}

impl PublishError {
    pub const ALL: [Self; 7] = [
        Self::Unavailable,
        Self::Blocked,
        Self::Nacked,
        Self::Returned,
        Self::Timeout,
        Self::ConnectionLost,
        Self::Closed,
    ];

    /// A bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Blocked => "blocked",
            Self::Nacked => "nack",
            Self::Returned => "returned",
            Self::Timeout => "timeout",
            Self::ConnectionLost => "connection_lost",
            Self::Closed => "closed",
        }
    }
}

type Reply = oneshot::Sender<Result<(), PublishError>>;

struct Request {
    message: Outgoing,
    reply: Reply,
}

/// Cheap to clone; every clone talks to the same supervised link. The link task ends once every
/// clone is dropped and its confirms are settled, which is how a drain finishes outstanding work.
#[derive(Clone)]
pub struct Publisher {
    requests: mpsc::Sender<Request>,
    state: watch::Receiver<LinkState>,
}

impl Publisher {
    /// Starts the supervisor. `abort` ends it at once (after the drain deadline); normally it ends when
    /// the last `Publisher` is dropped.
    pub fn spawn(
        settings: AmqpSettings,
        connection_name: String,
        abort: CancellationToken,
    ) -> (Publisher, JoinHandle<()>) {
        let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
        let (state_tx, state) = watch::channel(LinkState::Connecting);
        let handle = tokio::spawn(supervise(settings, connection_name, rx, state_tx, abort));
        (Publisher { requests, state }, handle)
    }

    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    pub fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Publishes and waits for the broker's verdict. The caller bounds the wait with its own deadline;
    /// a message whose caller already gave up is not published at all.
    pub async fn publish(&self, message: Outgoing) -> Result<(), PublishError> {
        match self.state() {
            LinkState::Ready => {}
            LinkState::Blocked => return Err(PublishError::Blocked),
            LinkState::Closed => return Err(PublishError::Closed),
            LinkState::Connecting | LinkState::Down => return Err(PublishError::Unavailable),
        }
        let (reply, verdict) = oneshot::channel();
        self.requests
            .send(Request { message, reply })
            .await
            .map_err(|_| PublishError::Closed)?;
        verdict.await.unwrap_or(Err(PublishError::ConnectionLost))
    }
}

async fn supervise(
    settings: AmqpSettings,
    connection_name: String,
    mut requests: mpsc::Receiver<Request>,
    state: watch::Sender<LinkState>,
    abort: CancellationToken,
) {
    let mut reconnect = Reconnect::new(&settings, connection_name);
    loop {
        state.send_replace(LinkState::Connecting);
        let opened = tokio::select! {
            opened = Link::open(&reconnect, &settings) => opened,
            _ = abort.cancelled() => break,
        };
        match opened {
            Ok((link, mut events)) => {
                reconnect.up();
                state.send_replace(LinkState::Ready);
                let end = link
                    .run(&mut events, &settings, &mut requests, &state, &abort)
                    .await;
                link.close().await;
                match end {
                    LinkEnd::Finished => break,
                    LinkEnd::Broken(reason) => reconnect.lost(&reason),
                }
            }
            Err(error) => reconnect.failed(&error),
        }
        state.send_replace(LinkState::Down);
        let wait = tokio::time::sleep(reconnect.next_delay());
        tokio::pin!(wait);
        // While down, callers get an immediate answer instead of waiting for their deadline.
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = abort.cancelled() => {
                    state.send_replace(LinkState::Closed);
                    return;
                }
                request = requests.recv() => match request {
                    Some(request) => {
                        let _ = request.reply.send(Err(PublishError::Unavailable));
                    }
                    None => {
                        state.send_replace(LinkState::Closed);
                        return;
                    }
                },
            }
        }
    }
    state.send_replace(LinkState::Closed);
}

enum LinkEnd {
    /// Every publisher handle is gone and every confirm settled (or the abort token fired).
    Finished,
    Broken(String),
}

type Settled = (
    Reply,
    Option<ShortString>,
    Result<Result<Confirmation, lapin::Error>, tokio::time::error::Elapsed>,
);

struct Link {
    connection: Connection,
    channel: Channel,
}

/// Connection events (errors, blocked, unblocked); kept apart from `Link` because the stream is
/// `Send` but not `Sync`.
type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

impl Link {
    /// Connects (over the configured addresses), then sets the channel up within the connect timeout.
    async fn open(
        reconnect: &Reconnect,
        settings: &AmqpSettings,
    ) -> Result<(Link, Events), String> {
        let connection = reconnect.attempt().await?;
        let events: Events = Box::pin(connection.events_listener());
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            topology::declare(&connection, settings).await?;
            Ok::<_, lapin::Error>(channel)
        };
        let timeout = Duration::from_millis(settings.connect_timeout_ms);
        let channel = match tokio::time::timeout(timeout, setup).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("channel set-up timed out".to_owned()),
        };
        Ok((
            Link {
                connection,
                channel,
            },
            events,
        ))
    }

    async fn close(&self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close(200, "bye".into())).await;
    }

    async fn run(
        &self,
        events: &mut Events,
        settings: &AmqpSettings,
        requests: &mut mpsc::Receiver<Request>,
        state: &watch::Sender<LinkState>,
        abort: &CancellationToken,
    ) -> LinkEnd {
        let mut pending: FuturesUnordered<BoxFuture<'static, Settled>> = FuturesUnordered::new();
        // Returned message ids not yet matched to their own confirm (see `settle`).
        let mut returned: HashMap<ShortString, usize> = HashMap::new();
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        let mut accepting = true;
        loop {
            if !accepting && pending.is_empty() {
                return LinkEnd::Finished;
            }
            tokio::select! {
                biased;
                _ = abort.cancelled() => return LinkEnd::Finished,
                event = events.next() => match event {
                    Some(Event::Error(error)) => return LinkEnd::Broken(format!("connection error: {error}")),
                    Some(Event::ConnectionBlocked(reason)) => {
                        warn!(reason = %reason, "broker blocks publishers");
                        state.send_replace(LinkState::Blocked);
                    }
                    Some(Event::ConnectionUnblocked) => {
                        info!("broker unblocked publishers");
                        state.send_replace(LinkState::Ready);
                    }
                    Some(_) => {}
                    None => return LinkEnd::Broken("connection event stream ended".into()),
                },
                Some(first) = pending.next(), if !pending.is_empty() => {
                    // Everything lapin completed together is settled together: a return can ride on
                    // another message's confirm from the same ack.
                    let mut batch = vec![first];
                    while let Some(Some(more)) = pending.next().now_or_never() {
                        batch.push(more);
                    }
                    let blocked = *state.borrow() == LinkState::Blocked;
                    let outcome = settle(batch, &mut returned, blocked);
                    if outcome.saw_return {
                        warn!("a publish came back unroutable; re-declaring the topology");
                        match tokio::time::timeout(PUBLISH_TIMEOUT, topology::declare(&self.connection, settings)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => return LinkEnd::Broken(format!("topology re-declare failed: {error}")),
                            Err(_) => return LinkEnd::Broken("topology re-declare timed out".into()),
                        }
                    }
                    if let Some(reason) = outcome.broken {
                        return LinkEnd::Broken(reason);
                    }
                }
                request = requests.recv(), if accepting && pending.len() < MAX_PENDING_CONFIRMS => match request {
                    None => accepting = false,
                    Some(request) => {
                        match self.start_publish(request, state).await {
                            Ok(Some(confirm)) => pending.push(confirm),
                            Ok(None) => {}
                            Err(end) => return end,
                        }
                    }
                },
                _ = liveness.tick() => {
                    if !self.connection.status().connected() {
                        return LinkEnd::Broken("connection no longer connected".into());
                    }
                }
            }
        }
    }

    /// Hands the message to lapin and returns the confirm to await, or answers the caller at once.
    async fn start_publish(
        &self,
        request: Request,
        state: &watch::Sender<LinkState>,
    ) -> Result<Option<BoxFuture<'static, Settled>>, LinkEnd> {
        let Request { message, reply } = request;
        if reply.is_closed() {
            // The caller already answered 503; storing the message now would only create a duplicate.
            return Ok(None);
        }
        if *state.borrow() == LinkState::Blocked {
            let _ = reply.send(Err(PublishError::Blocked));
            return Ok(None);
        }
        let message_id = message.properties.message_id().clone();
        let publish = self.channel.basic_publish(
            topology::short(&message.exchange),
            topology::short(&message.routing_key),
            BasicPublishOptions {
                mandatory: message.mandatory,
                ..BasicPublishOptions::default()
            },
            &message.body,
            message.properties,
        );
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(confirm)) => Ok(Some(
                async move {
                    let result = tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await;
                    (reply, message_id, result)
                }
                .boxed(),
            )),
            Ok(Err(error)) => {
                let _ = reply.send(Err(PublishError::ConnectionLost));
                Err(LinkEnd::Broken(format!("publish failed: {error}")))
            }
            Err(_) => {
                let _ = reply.send(Err(PublishError::Timeout));
                Err(LinkEnd::Broken("publish stalled".into()))
            }
        }
    }
}

struct SettleOutcome {
    saw_return: bool,
    broken: Option<String>,
}

/// Answers every caller of a batch of completed confirms. Returns are collected from the whole batch
/// first and matched by message id, so a return lapin attached to a neighbour's confirm still fails
/// the message it belongs to. A return always arrives before its own message's ack, so it is seen in
/// the same batch as that message or an earlier one.
fn settle(
    batch: Vec<Settled>,
    returned: &mut HashMap<ShortString, usize>,
    blocked: bool,
) -> SettleOutcome {
    let mut outcome = SettleOutcome {
        saw_return: false,
        broken: None,
    };
    let mut verdicts = Vec::with_capacity(batch.len());
    for (reply, message_id, result) in batch {
        let verdict = match result {
            Ok(Ok(Confirmation::Ack(returned_message))) => {
                if let Some(message) = returned_message {
                    outcome.saw_return = true;
                    if let Some(id) = message.delivery.properties.message_id().clone() {
                        *returned.entry(id).or_default() += 1;
                    }
                }
                Ok(())
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => {
                outcome.broken = Some("channel is not in confirm mode".into());
                Err(PublishError::Unavailable)
            }
            Ok(Err(error)) => {
                outcome.broken = Some(format!("confirm failed: {error}"));
                Err(PublishError::ConnectionLost)
            }
            Err(_) => {
                if !blocked {
                    outcome.broken = Some("confirm timed out".into());
                }
                Err(PublishError::Timeout)
            }
        };
        verdicts.push((reply, message_id, verdict));
    }
    for (reply, message_id, verdict) in verdicts {
        let verdict =
            verdict.and_then(
                |()| match message_id.and_then(|id| take_one(returned, id)) {
                    Some(()) => Err(PublishError::Returned),
                    None => Ok(()),
                },
            );
        let _ = reply.send(verdict);
    }
    outcome
}

fn take_one(returned: &mut HashMap<ShortString, usize>, id: ShortString) -> Option<()> {
    let count = returned.get_mut(&id)?;
    *count -= 1;
    if *count == 0 {
        returned.remove(&id);
    }
    Some(())
}
