//! The metrics of contract.md, declared once: name, kind, help line, histogram buckets, and the
//! small functions the stages call. Labels are bounded enums or configured app ids, never free text.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CALLBACKS: &str = "relay_callbacks_total";
pub const CALLBACK_ACK: &str = "relay_callback_ack_seconds";
pub const INBOX_PUBLISH: &str = "relay_inbox_publish_seconds";
pub const DEAD_LETTERS: &str = "relay_dead_letters_total";
pub const WINDOW_FLUSHES: &str = "relay_window_flush_total";
pub const WINDOW_IDS: &str = "relay_window_ids";
pub const UNMAPPED_EVENTS: &str = "relay_events_without_customers_total";
pub const DEFERRED: &str = "relay_deliveries_deferred_total";
pub const WEILING_REQUESTS: &str = "relay_weiling_requests_total";
pub const WEILING_REQUEST: &str = "relay_weiling_request_seconds";
pub const TOKEN_REFRESHES: &str = "relay_weiling_token_refresh_total";
pub const CIRCUIT_STATE: &str = "relay_circuit_state";
pub const RECORDS_PUBLISHED: &str = "relay_records_published_total";
pub const PUBLISH_CONFIRM: &str = "relay_publish_confirm_seconds";
pub const PUBLISH_FAILURES: &str = "relay_publish_failures_total";
pub const COALESCING_RATIO: &str = "relay_coalescing_ratio";
pub const END_TO_END: &str = "relay_end_to_end_seconds";
pub const HTTP_REQUESTS: &str = "relay_http_requests_total";
pub const HTTP_REQUEST: &str = "relay_http_request_seconds";
pub const MIRROR_RECORDS: &str = "relay_mirror_records_total";
pub const MIRROR_DEAD_LETTERS: &str = "relay_mirror_dead_letters_total";
pub const MIRROR_BATCH: &str = "relay_mirror_batch_seconds";
pub const MIRROR_LAG: &str = "relay_mirror_lag_seconds";
pub const READY: &str = "relay_ready";
pub const QUEUE_MESSAGES: &str = "relay_queue_messages";
pub const OLDEST_HELD: &str = "relay_inbox_oldest_held_seconds";
pub const PARTITIONS_HELD: &str = "relay_inbox_partitions_held";

const FAST: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5,
];
const REMOTE: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const LAG: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const IDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 75.0, 99.0, 100.0];

enum Kind {
    Counter,
    Gauge,
    Histogram(&'static [f64], Unit),
}

struct Def {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

const DEFS: &[Def] = &[
    Def {
        name: CALLBACKS,
        kind: Kind::Counter,
        help: "Callbacks answered, by app and outcome (stored, replay, dead_lettered, unauthorized, bad_request, broker_unavailable, …).",
    },
    Def {
        name: CALLBACK_ACK,
        kind: Kind::Histogram(FAST, Unit::Seconds),
        help: "Time from a callback's arrival to its `success` answer.",
    },
    Def {
        name: INBOX_PUBLISH,
        kind: Kind::Histogram(FAST, Unit::Seconds),
        help: "Time from publishing a verified event to the broker's confirm.",
    },
    Def {
        name: DEAD_LETTERS,
        kind: Kind::Counter,
        help: "Events dead-lettered, by reason (decrypt, receive_id, json: authentic callbacks; weiling_refused: an id Weiling refused for good).",
    },
    Def {
        name: WINDOW_FLUSHES,
        kind: Kind::Counter,
        help: "Windows closed, by reason (max_ids, quiet, max_wait, drain).",
    },
    Def {
        name: WINDOW_IDS,
        kind: Kind::Histogram(IDS, Unit::Count),
        help: "Distinct customer ids per closed window.",
    },
    Def {
        name: DEFERRED,
        kind: Kind::Counter,
        help: "Inbox deliveries moved to the retry queue because their app held amqp.max_unacked_per_app already, by app.",
    },
    Def {
        name: UNMAPPED_EVENTS,
        kind: Kind::Counter,
        help: "Inbox events acked without enrichment: unmapped event type or no customer id.",
    },
    Def {
        name: WEILING_REQUESTS,
        kind: Kind::Counter,
        help: "Weiling API calls, by endpoint and answer code (0 = success, a configured code, other, http_<status>, transport).",
    },
    Def {
        name: WEILING_REQUEST,
        kind: Kind::Histogram(REMOTE, Unit::Seconds),
        help: "Duration of one Weiling API call.",
    },
    Def {
        name: TOKEN_REFRESHES,
        kind: Kind::Counter,
        help: "Access tokens fetched from Weiling.",
    },
    Def {
        name: CIRCUIT_STATE,
        kind: Kind::Gauge,
        help: "Circuit breaker per app: 0 closed, 1 open, 2 half-open.",
    },
    Def {
        name: RECORDS_PUBLISHED,
        kind: Kind::Counter,
        help: "Customer records confirmed by the broker, by op (upsert, missing).",
    },
    Def {
        name: PUBLISH_CONFIRM,
        kind: Kind::Histogram(FAST, Unit::Seconds),
        help: "Time from publishing a customer record to the broker's confirm.",
    },
    Def {
        name: PUBLISH_FAILURES,
        kind: Kind::Counter,
        help: "Record publishes that failed and were retried, by reason (nack, returned, timeout, unavailable, …).",
    },
    Def {
        name: COALESCING_RATIO,
        kind: Kind::Gauge,
        help: "Events per published record since start.",
    },
    Def {
        name: END_TO_END,
        kind: Kind::Histogram(LAG, Unit::Seconds),
        help: "Time from the first callback about a customer to its record's confirm.",
    },
    Def {
        name: HTTP_REQUESTS,
        kind: Kind::Counter,
        help: "HTTP requests, by method, route pattern and status.",
    },
    Def {
        name: HTTP_REQUEST,
        kind: Kind::Histogram(FAST, Unit::Seconds),
        help: "HTTP request duration, by route pattern.",
    },
    Def {
        name: MIRROR_RECORDS,
        kind: Kind::Counter,
        help: "Records the mirror committed, by entity (customer, contact) and outcome (applied, deleted, stale, duplicate).",
    },
    Def {
        name: MIRROR_DEAD_LETTERS,
        kind: Kind::Counter,
        help: "Records the mirror could not apply and dead-lettered, by reason (mirror_schema, mirror_signature, mirror_data).",
    },
    Def {
        name: MIRROR_BATCH,
        kind: Kind::Histogram(FAST, Unit::Seconds),
        help: "Time to apply and commit one batch of records in PostgreSQL.",
    },
    Def {
        name: MIRROR_LAG,
        kind: Kind::Histogram(LAG, Unit::Seconds),
        help: "Time from a record's fetch from Weiling (fetched_at) to the mirror's commit of it.",
    },
    Def {
        name: READY,
        kind: Kind::Gauge,
        help: "1 while /readyz answers 200 (the broker link can make callbacks durable, no drain), else 0; set at each scrape.",
    },
    Def {
        name: QUEUE_MESSAGES,
        kind: Kind::Gauge,
        help: "Messages ready in the relay's queues, by queue role (inbox: all partitions, retry, dead_letter, unrouted), counted every 15 s.",
    },
    Def {
        name: OLDEST_HELD,
        kind: Kind::Gauge,
        help: "Age of the oldest inbox delivery this relay holds unacked (in a window, being enriched or published); 0 when none.",
    },
    Def {
        name: PARTITIONS_HELD,
        kind: Kind::Gauge,
        help: "Inbox queues (partitions) this relay holds and consumes; the relays of one inbox share them.",
    },
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static EVENTS_WINDOWED: AtomicU64 = AtomicU64::new(0);
static RECORDS_CONFIRMED: AtomicU64 = AtomicU64::new(0);

/// Installs the process-wide Prometheus recorder once (several relays in one test process share it).
/// `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for def in DEFS {
                if let Kind::Histogram(buckets, _) = def.kind {
                    builder = builder
                        .set_buckets_for_metric(Matcher::Full(def.name.to_owned()), buckets)
                        .ok()?;
                }
            }
            let handle = builder.install_recorder().ok()?;
            for def in DEFS {
                match def.kind {
                    Kind::Counter => describe_counter!(def.name, def.help),
                    Kind::Gauge => describe_gauge!(def.name, def.help),
                    Kind::Histogram(_, unit) => describe_histogram!(def.name, unit, def.help),
                }
            }
            // Without upkeep the exporter's histogram buffers grow without bound.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Creates every series whose labels are known before anything happened, at 0: a dashboard shows
/// 0 instead of no data, and `increase()` in an alert sees the first dead letter or publish failure
/// (a series that is born at 1 has no earlier sample to increase from).
pub fn zero_known_series<'a>(apps: impl IntoIterator<Item = &'a str>) {
    use crate::amqp::PublishError;
    use crate::pipeline::publish::record::Op;
    use crate::pipeline::window::coalescer::FlushReason;
    use crate::verify::DeadLetterReason;

    let dead = DeadLetterReason::ALL.map(DeadLetterReason::as_str);
    for reason in dead
        .into_iter()
        .chain([crate::persist::dead_letter::WEILING_REFUSED])
    {
        counter!(DEAD_LETTERS, "reason" => reason).increment(0);
    }
    for reason in PublishError::ALL.map(PublishError::as_str) {
        counter!(PUBLISH_FAILURES, "reason" => reason).increment(0);
    }
    for reason in FlushReason::ALL.map(FlushReason::as_str) {
        counter!(WINDOW_FLUSHES, "reason" => reason).increment(0);
    }
    for op in Op::ALL.map(Op::as_str) {
        counter!(RECORDS_PUBLISHED, "op" => op).increment(0);
    }
    counter!(TOKEN_REFRESHES).increment(0);
    counter!(UNMAPPED_EVENTS).increment(0);
    for app in apps {
        gauge!(CIRCUIT_STATE, "app" => app.to_owned()).increment(0.0);
    }
}

/// The exposition text for `GET /metrics`.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

pub fn callback(app: &str, outcome: &'static str, elapsed: Duration, answered_success: bool) {
    counter!(CALLBACKS, "app" => app.to_owned(), "outcome" => outcome).increment(1);
    if answered_success {
        histogram!(CALLBACK_ACK).record(elapsed.as_secs_f64());
    }
}

pub fn inbox_publish(elapsed: Duration) {
    histogram!(INBOX_PUBLISH).record(elapsed.as_secs_f64());
}

pub fn dead_letter(reason: &'static str) {
    counter!(DEAD_LETTERS, "reason" => reason).increment(1);
}

pub fn window_flushed(reason: &'static str, ids: usize, events: u64) {
    counter!(WINDOW_FLUSHES, "reason" => reason).increment(1);
    histogram!(WINDOW_IDS).record(ids as f64);
    EVENTS_WINDOWED.fetch_add(events, Ordering::Relaxed);
}

pub fn deferred(app: &str) {
    counter!(DEFERRED, "app" => app.to_owned()).increment(1);
}

pub fn event_without_customers() {
    counter!(UNMAPPED_EVENTS).increment(1);
}

/// Weiling answer codes that become labels as themselves: success and the configured lists.
static KNOWN_WEILING_CODES: Mutex<BTreeSet<i64>> = Mutex::new(BTreeSet::new());

/// Adds the codes a client was configured with (auth, rate-limit and missing codes) to the codes
/// labelled by value.
pub fn know_weiling_codes(codes: impl IntoIterator<Item = i64>) {
    KNOWN_WEILING_CODES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(codes);
}

/// The `code` label of a Weiling answer code: the code itself when it is 0 or configured, `other`
/// for anything else (the code is in the warning log), so a peer answering ever new codes cannot
/// grow the label set, and with it the relay's memory.
pub fn weiling_code_label(code: i64) -> String {
    let known = code == 0
        || KNOWN_WEILING_CODES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&code);
    if known {
        code.to_string()
    } else {
        "other".to_owned()
    }
}

pub fn weiling_request(endpoint: &'static str, code: &str, elapsed: Duration) {
    counter!(WEILING_REQUESTS, "endpoint" => endpoint, "code" => code.to_owned()).increment(1);
    histogram!(WEILING_REQUEST, "endpoint" => endpoint).record(elapsed.as_secs_f64());
}

pub fn token_refreshed() {
    counter!(TOKEN_REFRESHES).increment(1);
}

pub fn circuit_state(app: &str, state: f64) {
    gauge!(CIRCUIT_STATE, "app" => app.to_owned()).set(state);
}

pub fn record_confirmed(op: &'static str, confirm: Duration, since_first_event: Duration) {
    counter!(RECORDS_PUBLISHED, "op" => op).increment(1);
    histogram!(PUBLISH_CONFIRM).record(confirm.as_secs_f64());
    histogram!(END_TO_END).record(since_first_event.as_secs_f64());
    let records = RECORDS_CONFIRMED.fetch_add(1, Ordering::Relaxed) + 1;
    let events = EVENTS_WINDOWED.load(Ordering::Relaxed);
    gauge!(COALESCING_RATIO).set(events as f64 / records as f64);
}

pub fn publish_failed(reason: &'static str) {
    counter!(PUBLISH_FAILURES, "reason" => reason).increment(1);
}

pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    counter!(HTTP_REQUESTS, "method" => method.to_owned(), "route" => route.to_owned(), "status" => status.to_string()).increment(1);
    histogram!(HTTP_REQUEST, "route" => route.to_owned()).record(elapsed.as_secs_f64());
}

pub fn mirror_record(entity: &'static str, outcome: &'static str) {
    counter!(MIRROR_RECORDS, "entity" => entity, "outcome" => outcome).increment(1);
}

pub fn mirror_dead_letter(reason: &'static str) {
    counter!(MIRROR_DEAD_LETTERS, "reason" => reason).increment(1);
}

pub fn mirror_batch(elapsed: Duration) {
    histogram!(MIRROR_BATCH).record(elapsed.as_secs_f64());
}

pub fn mirror_lag(since_fetch: Duration) {
    histogram!(MIRROR_LAG).record(since_fetch.as_secs_f64());
}

pub fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// `role` is one of a fixed few (inbox, retry, dead_letter, unrouted), not a queue name: the
/// names are configurable, the dashboards and alerts are not.
pub fn queue_messages(role: &'static str, messages: u32) {
    gauge!(QUEUE_MESSAGES, "queue" => role).set(f64::from(messages));
}

pub fn oldest_held(age: Duration) {
    gauge!(OLDEST_HELD).set(age.as_secs_f64());
}

pub fn partitions_held(count: usize) {
    gauge!(PARTITIONS_HELD).set(count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weiling_codes_are_labels_only_when_known() {
        assert_eq!(weiling_code_label(0), "0");
        // Far outside any configured list, so no other test's client can have made it known.
        assert_eq!(weiling_code_label(-987_654_321), "other");
        know_weiling_codes([-987_654_320]);
        assert_eq!(weiling_code_label(-987_654_320), "-987654320");
        assert_eq!(weiling_code_label(i64::MAX), "other");
    }

    #[test]
    fn every_contract_metric_is_declared_once() {
        let contract = [
            "relay_callbacks_total",
            "relay_callback_ack_seconds",
            "relay_inbox_publish_seconds",
            "relay_window_flush_total",
            "relay_window_ids",
            "relay_weiling_requests_total",
            "relay_weiling_request_seconds",
            "relay_weiling_token_refresh_total",
            "relay_circuit_state",
            "relay_records_published_total",
            "relay_publish_confirm_seconds",
            "relay_publish_failures_total",
            "relay_dead_letters_total",
            "relay_coalescing_ratio",
            "relay_end_to_end_seconds",
        ];
        for name in contract {
            assert_eq!(DEFS.iter().filter(|d| d.name == name).count(), 1, "{name}");
        }
        let mut names: Vec<&str> = DEFS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DEFS.len(), "no name declared twice");
    }
}
