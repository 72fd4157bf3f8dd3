//! Rows 1–14 and 39: the HTTP edge under a full load of valid callbacks, with bad requests mixed in.
//! Every bad request names an id of its own; any record for such an id is counted as unexpected.
//! Each row checks the HTTP answer of every bad request it sends and reports the counts in its note;
//! `restored_at` marks the last bad request, so the harness fails a round whose load did not outlast
//! them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use relay::verify::AppKeys;
use relay::verify::seal::{SealedCallback, seal_ciphertext, seal_echostr, seal_event};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weiling_sim::events::{self, CustomerChange};
use weiling_sim::new_customer_id;

use crate::fault::{Dead, FaultOutcome, FaultRig, Load, RigOptions, run_row};
use crate::support::in_process::{OTHER_AES_KEY, SHARED_BROKER, nonce, now_s};

/// Bad requests start once this many load callbacks were answered (about 0.7 s into the load)…
const START: usize = 100;
/// …and follow each other at this pace, so 60 of them end well before the load's ~7 s.
const EVERY: Duration = Duration::from_millis(50);

/// One answer of the relay.
pub(super) struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn success(&self) -> bool {
        self.status == 200 && self.body == "success"
    }
}

/// Per case, how often each status was answered; every answer is checked when it is counted.
#[derive(Default)]
pub(super) struct Tally(BTreeMap<&'static str, BTreeMap<u16, usize>>);

impl Tally {
    /// Asserts that `reply` is one of `allowed` (a 200 must say `success`, a 401 must be generic)
    /// and counts it.
    pub fn check(&mut self, case: &'static str, reply: &Reply, allowed: &[u16]) {
        assert!(
            allowed.contains(&reply.status),
            "{case}: answered {} {:?}, expected one of {allowed:?}",
            reply.status,
            reply.body
        );
        match reply.status {
            200 => assert_eq!(reply.body, "success", "{case}"),
            401 => assert_eq!(reply.body, "unauthorized", "{case}: a generic body"),
            _ => {}
        }
        self.count(case, reply.status);
    }

    pub fn count(&mut self, case: &'static str, status: u16) {
        *self.0.entry(case).or_default().entry(status).or_default() += 1;
    }

    pub fn total(&self) -> usize {
        self.0.values().flat_map(BTreeMap::values).sum()
    }

    /// `case: 401×30; other case: 413×10`.
    pub fn note(&self) -> String {
        self.0
            .iter()
            .map(|(case, statuses)| {
                let statuses: Vec<String> = statuses
                    .iter()
                    .map(|(status, n)| format!("{status}×{n}"))
                    .collect();
                format!("{case}: {}", statuses.join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

pub(super) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub(super) async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let started = Instant::now();
    let mut request = http.request(method.clone(), url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: no answer: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, retry_after, content_type) = (
        response.status().as_u16(),
        header("retry-after"),
        header("content-type"),
    );
    let body = response.text().await.unwrap();
    Reply {
        status,
        retry_after,
        content_type,
        body,
        elapsed: started.elapsed(),
    }
}

pub(super) fn callback_url(rig: &FaultRig, query: &str) -> String {
    format!("{}/weiling/callback?{query}", rig.base)
}

/// POSTs a sealed callback the way Weiling does.
pub(super) async fn post(http: &reqwest::Client, rig: &FaultRig, sealed: &SealedCallback) -> Reply {
    send(
        http,
        Method::POST,
        &callback_url(rig, &sealed.query.to_query_string()),
        &[("content-type", "application/json")],
        sealed.body.clone(),
    )
    .await
}

/// Posts `sealed` as Weiling's sender does: a 429 or 503 (both carry Retry-After) is sent again
/// after a short pause, up to 10 times. Returns every answer, the last one first-class.
pub(super) async fn post_retrying(
    http: &reqwest::Client,
    rig: &FaultRig,
    sealed: &SealedCallback,
) -> Vec<Reply> {
    let mut replies = Vec::new();
    for _ in 0..10 {
        let reply = post(http, rig, sealed).await;
        let again = matches!(reply.status, 429 | 503);
        if again {
            assert!(
                reply.retry_after.is_some(),
                "{} without Retry-After",
                reply.status
            );
        }
        replies.push(reply);
        if !again {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    replies
}

/// An id no load callback names: a record for it is an "unexpected" in the ledger.
pub(super) fn poison_id(tag: &str) -> String {
    format!("poison-{tag}-{}", new_customer_id())
}

/// A well-formed `customer_update` about a poison id.
pub(super) fn poison(rig: &FaultRig, tag: &str) -> Vec<u8> {
    events::customer_update_for(&poison_id(tag), CustomerChange::Remark).to_json(&rig.app_id)
}

/// A well-formed event of a type the relay stores but does not enrich (it names a poison id, so if
/// it were enriched after all, the record would be counted as unexpected).
pub(super) fn unmapped(rig: &FaultRig, tag: &str) -> Vec<u8> {
    events::event_json(
        &rig.app_id,
        "fault_probe",
        json!({ "customer_id": poison_id(tag) }),
    )
}

/// `history_add` about a customer the load already created: enriching it makes records only for
/// ids the ledger knows, and each call is a distinct event (a random history id).
pub(super) fn history_of_load_customer(rig: &FaultRig) -> Vec<u8> {
    let customers = rig.sim.customers(&rig.app_id);
    let pick = &customers[rand::random_range(0..customers.len())];
    let id = pick["customer_id"].as_str().unwrap();
    events::history_add(id, 201).to_json(&rig.app_id)
}

/// Sealed for the rig's app with a fresh nonce, signed `skew_s` seconds away from now.
pub(super) fn seal_at(rig: &FaultRig, event: &[u8], skew_s: i64) -> SealedCallback {
    seal_event(&rig.app, event, &(now_s() + skew_s).to_string(), &nonce())
}

/// Keys with the rig's app id but another Token and EncodingAESKey.
pub(super) fn stranger_keys(rig: &FaultRig) -> AppKeys {
    AppKeys::new(
        &rig.app_id,
        &SecretString::from("AnotherTokenAnother1"),
        &SecretString::from(OTHER_AES_KEY),
        true,
    )
    .unwrap()
}

/// Waits for the load to be under way; the returned ticker paces the bad requests.
pub(super) async fn paced(rig: &FaultRig) -> tokio::time::Interval {
    rig.progress_at_least(START).await;
    tokio::time::interval(EVERY)
}

/// A private queue bound to the round's events exchange for one event type: every copy the relay
/// publishes to the inbox lands here too. Exclusive, so it vanishes with its connection.
pub(super) struct Probe {
    connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
}

impl Probe {
    pub async fn bind(rig: &FaultRig, event_type: &str) -> Probe {
        let key = format!("event.{}.{event_type}", rig.app_id);
        Probe::bind_to(rig, &rig.settings.amqp.events_exchange, &key).await
    }

    /// A private queue on any exchange of the round, e.g. the records exchange with `customer.#`.
    pub async fn bind_to(rig: &FaultRig, exchange: &str, key: &str) -> Probe {
        let (connection, channel) = rig.inspect().await;
        let queue = format!(
            "{}.probe-{}",
            rig.settings.amqp.inbox_queue,
            key.replace(['#', '*'], "all")
        );
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Probe {
            connection,
            channel,
            queue,
        }
    }

    /// Messages waiting in the probe queue.
    pub async fn depth(&self) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// Takes every stored copy: (message_id, body).
    pub async fn take(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut idle = 0;
        while idle < 5 {
            let got = self
                .channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            let Some(message) = got else {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            idle = 0;
            let properties = &message.delivery.properties;
            let id = properties.message_id().as_ref().map(|m| m.to_string());
            let body = serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null);
            out.push((id.expect("every stored event has a message_id"), body));
        }
        out
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "probe done".into()).await;
    }
}

/// The `x-reason` of every letter now in the dead-letter queue (the letters are returned), and the
/// start of each letter that has none, to say what it was.
async fn dead_reasons(rig: &FaultRig) -> (BTreeMap<String, usize>, Vec<String>) {
    let (connection, channel) = rig.inspect().await;
    let queue = rig.settings.amqp.dead_letter_queue.as_str();
    let mut reasons = BTreeMap::new();
    let mut unexplained = Vec::new();
    while let Ok(Some(letter)) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
    {
        let headers = letter
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let reason = match headers.inner().get("x-reason") {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            Some(AMQPValue::ShortString(s)) => s.to_string(),
            _ if headers.inner().contains_key("x-death") => {
                let body = &letter.delivery.data;
                unexplained.push(String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned());
                "(none: rejected from the inbox)".into()
            }
            _ => "(none)".into(),
        };
        *reasons.entry(reason).or_default() += 1;
    }
    // Closing the channel returns every unacked letter to the queue.
    let _ = connection.close(200, "counted".into()).await;
    (reasons, unexplained)
}

/// Authentic callbacks (right Token) that cannot become events: `bad(n)` builds the n-th. Each must
/// be answered `success` once it is in the dead-letter queue with `reason`; the harness then counts
/// exactly that many letters.
async fn dead_letter_row(
    row: u32,
    name: &str,
    count: u32,
    reason: &'static str,
    bad: fn(&FaultRig, usize) -> (&'static str, SealedCallback),
) {
    run_row(
        row,
        name,
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        move |rig, _round| async move {
            let http = http();
            let mut tally = Tally::default();
            let mut tick = paced(&rig).await;
            for n in 0..count as usize {
                tick.tick().await;
                let (case, sealed) = bad(&rig, n);
                tally.check(case, &post(&http, &rig, &sealed).await, &[200]);
            }
            let restored_at = Some(Instant::now());
            let (reasons, unexplained) = dead_reasons(&rig).await;
            assert_eq!(
                reasons,
                BTreeMap::from([(reason.to_owned(), count as usize)]),
                "one letter per request, all with x-reason {reason}; letters without one: {unexplained:?}"
            );
            FaultOutcome {
                restored_at,
                expected_dead: Dead::Exactly(count),
                note: format!("{}; {count} letters with x-reason={reason}", tally.note()),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_01_baseline_valid_callbacks() {
    run_row(
        1,
        "baseline valid callbacks",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |_rig, _round| async { FaultOutcome::default() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_02_wrong_signature() {
    run_row(
        2,
        "wrong signature",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let (http, stranger) = (http(), stranger_keys(&rig));
            let mut tally = Tally::default();
            let mut tick = paced(&rig).await;
            for n in 0..60 {
                tick.tick().await;
                let (case, sealed) = if n % 2 == 0 {
                    // One hex character flipped, at a different place each time.
                    let mut sealed = seal_at(&rig, &poison(&rig, "flip"), 0);
                    let at = (n / 2) % sealed.query.msg_signature.len();
                    let old = sealed.query.msg_signature.as_bytes()[at];
                    let new = if old == b'0' { "1" } else { "0" };
                    sealed.query.msg_signature.replace_range(at..=at, new);
                    ("one hex char flipped", sealed)
                } else {
                    // Encrypted with the app's key, signed with another Token.
                    let event = poison(&rig, "token");
                    let encrypted = rig.app.key().encrypt(&event, &rig.app_id);
                    let ts = now_s().to_string();
                    let sealed = seal_ciphertext(&stranger, &rig.app_id, &encrypted, &ts, &nonce());
                    ("wrong token", sealed)
                };
                tally.check(case, &post(&http, &rig, &sealed).await, &[401]);
            }
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: tally.note(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_03_missing_or_duplicated_query_params() {
    run_row(
        3,
        "missing or duplicated query params",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let http = http();
            let mut tally = Tally::default();
            let mut tick = paced(&rig).await;
            for n in 0..63 {
                tick.tick().await;
                let sealed = seal_at(&rig, &poison(&rig, "query"), 0);
                let q = &sealed.query;
                let (sig, ts, nonce) = (
                    format!("msg_signature={}", q.msg_signature),
                    format!("timestamp={}", q.timestamp),
                    format!("nonce={}", q.nonce),
                );
                let (case, query) = match n % 9 {
                    0 => ("no msg_signature", format!("{ts}&{nonce}")),
                    1 => ("no timestamp", format!("{sig}&{nonce}")),
                    2 => ("no nonce", format!("{sig}&{ts}")),
                    3 => ("msg_signature twice", format!("{sig}&{ts}&{nonce}&{sig}")),
                    4 => ("timestamp twice", format!("{sig}&{ts}&{nonce}&timestamp=1")),
                    5 => ("nonce twice", format!("{sig}&{ts}&{nonce}&{nonce}")),
                    6 => (
                        "empty msg_signature",
                        format!("msg_signature=&{ts}&{nonce}"),
                    ),
                    7 => ("empty nonce", format!("{sig}&{ts}&nonce=")),
                    _ => ("no query", String::new()),
                };
                let url = if query.is_empty() {
                    format!("{}/weiling/callback", rig.base)
                } else {
                    callback_url(&rig, &query)
                };
                let reply = send(
                    &http,
                    Method::POST,
                    &url,
                    &[("content-type", "application/json")],
                    sealed.body.clone(),
                )
                .await;
                tally.check(case, &reply, &[400, 401]);
            }
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: tally.note(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_04_timestamp_outside_tolerance() {
    run_row(
        4,
        "timestamp outside tolerance",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let http = http();
            let mut tally = Tally::default();
            let mut tick = paced(&rig).await;
            for n in 0..60 {
                tick.tick().await;
                let (case, skew) = if n % 2 == 0 {
                    ("signed now-600 s", -600)
                } else {
                    ("signed now+600 s", 600)
                };
                let sealed = seal_at(&rig, &poison(&rig, "stale"), skew);
                tally.check(case, &post(&http, &rig, &sealed).await, &[401]);
            }
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: tally.note(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_05_exact_replay() {
    run_row(
        5,
        "exact replay inside the window",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let http = http();
            // history_add is a type the load never sends, so this queue sees only these requests.
            let probe = Probe::bind(&rig, "history_add").await;
            let mut tally = Tally::default();
            let mut distinct = 0;
            rig.progress_at_least(START).await;
            // Every request is sent as Weiling's sender does: on a busy machine a 503 (the confirm
            // took longer than the answer budget) is possible and retried. The relay finishes such a
            // store in the background and remembers it, so the retry is still not stored twice.
            let mut check = |case: &'static str, replies: Vec<Reply>| {
                for reply in &replies {
                    tally.check(case, reply, &[200, 503]);
                }
                assert!(
                    replies.last().is_some_and(Reply::success),
                    "{case}: never answered success"
                );
            };
            for _ in 0..3 {
                let copies = |sealed: SealedCallback| {
                    let http = http.clone();
                    let rig = rig.clone();
                    async move {
                        let all = (0..100).map(|_| post_retrying(&http, &rig, &sealed));
                        join_all(all).await
                    }
                };
                // First sight as 100 concurrent copies.
                let burst = seal_at(&rig, &history_of_load_customer(&rig), 0);
                distinct += 1;
                for replies in copies(burst).await {
                    check("new request, 100 concurrent copies", replies);
                }
                // Captured, resent 1 s later, then 100 times at once.
                let captured = seal_at(&rig, &history_of_load_customer(&rig), 0);
                distinct += 1;
                check("original", post_retrying(&http, &rig, &captured).await);
                tokio::time::sleep(Duration::from_secs(1)).await;
                check(
                    "resent 1 s later",
                    post_retrying(&http, &rig, &captured).await,
                );
                for replies in copies(captured).await {
                    check("resent, 100 concurrent copies", replies);
                }
            }
            let restored_at = Some(Instant::now());
            let stored = probe.take().await;
            probe.close().await;
            let mut ids: Vec<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(
                (stored.len(), ids.len()),
                (distinct, distinct),
                "each distinct request is stored exactly once"
            );
            FaultOutcome {
                restored_at,
                note: format!(
                    "{}; {} requests of {distinct} distinct ones stored {} inbox messages",
                    tally.note(),
                    tally.total(),
                    stored.len()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_06_sender_retry_with_new_nonce() {
    run_row(
        6,
        "legitimate sender retry (new nonce and timestamp)",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let http = http();
            let probe = Probe::bind(&rig, "history_add").await;
            let mut tally = Tally::default();
            let mut tick = paced(&rig).await;
            let events = 40;
            for _ in 0..events {
                tick.tick().await;
                // The same event, sealed again as Weiling's sender does when our reply was late.
                let event = history_of_load_customer(&rig);
                let first = seal_at(&rig, &event, 0);
                tally.check("first send", &post(&http, &rig, &first).await, &[200]);
                let retry = seal_at(&rig, &event, 1);
                tally.check("retry", &post(&http, &rig, &retry).await, &[200]);
            }
            let restored_at = Some(Instant::now());
            let stored = probe.take().await;
            probe.close().await;
            let mut copies: HashMap<&str, usize> = HashMap::new();
            for (id, _) in &stored {
                *copies.entry(id).or_default() += 1;
            }
            assert_eq!(copies.len(), events, "one message_id per event");
            assert!(
                copies.values().all(|n| *n == 2),
                "each event stored twice under one message_id: {copies:?}"
            );
            FaultOutcome {
                restored_at,
                note: format!(
                    "{}; {events} events sent twice: {} inbox copies under {} message_ids (downstream dedupes by message_id)",
                    tally.note(),
                    stored.len(),
                    copies.len()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

/// IEEE CRC-32, for the gzip trailers.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn gzip(deflate: &[u8], plain_crc: u32, plain_len: usize) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(deflate);
    out.extend_from_slice(&plain_crc.to_le_bytes());
    out.extend_from_slice(&(plain_len as u32).to_le_bytes());
    out
}

/// A valid gzip member holding `data` (< 64 KiB) in one stored deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).unwrap();
    let mut deflate = vec![1];
    deflate.extend_from_slice(&len.to_le_bytes());
    deflate.extend_from_slice(&(!len).to_le_bytes());
    deflate.extend_from_slice(data);
    gzip(&deflate, crc32(data), data.len())
}

/// A gzip bomb: `n` zero bytes as fixed-Huffman deflate (one literal 0, then length-258 matches at
/// distance 1, 13 bits each), about 160:1.
fn gzip_zeros(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    // Header fields and extra bits go LSB first, Huffman codes MSB first.
    let mut put = |value: u64, len: u32, out: &mut Vec<u8>| {
        acc |= value << bits;
        bits += len;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    };
    let code = |c: u64, len: u32| (0..len).fold(0u64, |r, i| (r << 1) | ((c >> i) & 1));
    put(1, 1, &mut out); // BFINAL
    put(1, 2, &mut out); // BTYPE = fixed Huffman
    put(code(0x30, 8), 8, &mut out); // literal 0
    let mut left = n - 1;
    while left >= 258 {
        put(code(0xC5, 8), 8, &mut out); // length 258 (symbol 285)
        put(code(0, 5), 5, &mut out); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        put(code(0x30, 8), 8, &mut out);
    }
    put(code(0, 7), 7, &mut out); // end of block
    put(0, 7, &mut out); // flush the last byte
    gzip(&out, crc32(&vec![0; n]), n)
}

/// A valid poison callback whose JSON body is padded with trailing spaces to exactly `size` bytes.
fn padded(rig: &FaultRig, size: usize) -> (String, Vec<u8>) {
    let sealed = seal_at(rig, &poison(rig, "big"), 0);
    let mut body = sealed.body;
    body.resize(size, b' ');
    (sealed.query.to_query_string(), body)
}

/// POSTs `body` with `Transfer-Encoding: chunked` and no Content-Length over a raw socket, 8 KiB per
/// millisecond, and returns the status the relay answered (it stops sending once the answer is in).
async fn post_chunked(rig: &FaultRig, query: &str, body: Vec<u8>) -> u16 {
    let addr = rig.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /weiling/callback?{query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(8192) {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(chunk);
            framed.extend_from_slice(b"\r\n");
            write.write_all(&framed).await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        write.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await;
        let n = read.expect("the relay answers a chunked body").unwrap();
        assert!(n > 0, "connection closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    writer.abort();
    let line = String::from_utf8_lossy(&answer);
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_07_oversized_or_compressed_body() {
    run_row(
        7,
        "oversized or compressed body",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let http = http();
            let limit = rig.settings.server.max_body_bytes;
            let bomb = gzip_zeros(8 << 20);
            assert!(bomb.len() < limit, "the bomb fits under the size limit");
            let mut tally = Tally::default();
            let mut tick = paced(&rig).await;
            for n in 0..50 {
                tick.tick().await;
                let json = ("content-type", "application/json");
                let (case, status) = match n % 5 {
                    0 => {
                        let (query, body) = padded(&rig, limit + 1);
                        let url = callback_url(&rig, &query);
                        let reply = send(&http, Method::POST, &url, &[json], body).await;
                        ("64 KiB + 1 B", reply.status)
                    }
                    1 => {
                        let (query, body) = padded(&rig, 10 << 20);
                        let url = callback_url(&rig, &query);
                        let reply = send(&http, Method::POST, &url, &[json], body).await;
                        ("10 MiB", reply.status)
                    }
                    2 => {
                        let (query, body) = padded(&rig, 1 << 20);
                        (
                            "1 MiB chunked, no Content-Length",
                            post_chunked(&rig, &query, body).await,
                        )
                    }
                    3 => {
                        // A valid callback, gzipped: refused, not inflated.
                        let sealed = seal_at(&rig, &poison(&rig, "gzip"), 0);
                        let url = callback_url(&rig, &sealed.query.to_query_string());
                        let headers = [json, ("content-encoding", "gzip")];
                        let body = gzip_stored(&sealed.body);
                        let reply = send(&http, Method::POST, &url, &headers, body).await;
                        ("gzip-encoded valid callback", reply.status)
                    }
                    _ => {
                        let sealed = seal_at(&rig, &poison(&rig, "bomb"), 0);
                        let url = callback_url(&rig, &sealed.query.to_query_string());
                        let headers = [json, ("content-encoding", "gzip")];
                        let reply = send(&http, Method::POST, &url, &headers, bomb.clone()).await;
                        ("gzip bomb", reply.status)
                    }
                };
                let allowed: &[u16] = if n % 5 < 3 { &[413] } else { &[413, 415] };
                assert!(allowed.contains(&status), "{case}: answered {status}");
                tally.count(case, status);
            }
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: format!(
                    "{}; the bomb is 8 MiB of zeros in {} bytes",
                    tally.note(),
                    bomb.len()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_08_wrong_method_or_content_type() {
    run_row(
        8,
        "wrong method or content type",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let http = http();
            let mut tally = Tally::default();
            let mut tick = paced(&rig).await;
            for n in 0..63 {
                tick.tick().await;
                let sealed = seal_at(&rig, &poison(&rig, "method"), 0);
                let url = callback_url(&rig, &sealed.query.to_query_string());
                let (case, method, content_type, expected) = match n % 7 {
                    0 => ("PUT", Method::PUT, "application/json", 405),
                    1 => ("DELETE", Method::DELETE, "application/json", 405),
                    2 => ("PATCH", Method::PATCH, "application/json", 405),
                    3 => ("POST application/xml", Method::POST, "application/xml", 415),
                    4 => ("POST text/html", Method::POST, "text/html", 415),
                    5 => (
                        "POST form-urlencoded",
                        Method::POST,
                        "application/x-www-form-urlencoded",
                        415,
                    ),
                    // GET is URL verification only: a POST's signature without echostr is refused.
                    _ => ("GET without echostr", Method::GET, "application/json", 400),
                };
                let headers = [("content-type", content_type)];
                let reply = send(&http, method, &url, &headers, sealed.body.clone()).await;
                tally.check(case, &reply, &[expected]);
            }
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: tally.note(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_09_url_verification() {
    run_row(
        9,
        "URL verification (GET echostr)",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let (http, stranger) = (http(), stranger_keys(&rig));
            let mut tally = Tally::default();
            let mut slowest = Duration::ZERO;
            let mut tick = paced(&rig).await;
            for n in 0..60 {
                tick.tick().await;
                let echo = rand::random_range(10u64.pow(17)..10u64.pow(19)).to_string();
                let ts = now_s().to_string();
                let (case, query) = match n % 4 {
                    0 | 1 => (
                        "valid",
                        seal_echostr(&rig.app, echo.as_bytes(), &ts, &nonce()),
                    ),
                    2 => {
                        let mut query = seal_echostr(&rig.app, echo.as_bytes(), &ts, &nonce());
                        query.nonce.push('x');
                        ("signature does not match", query)
                    }
                    _ => (
                        "signed with another Token",
                        seal_echostr(&stranger, echo.as_bytes(), &ts, &nonce()),
                    ),
                };
                let url = callback_url(&rig, &query.to_query_string());
                let reply = send(&http, Method::GET, &url, &[], Vec::new()).await;
                if case == "valid" {
                    assert_eq!(reply.status, 200, "{case}");
                    assert_eq!(
                        reply.body, echo,
                        "the raw plaintext: no quotes, BOM or newline"
                    );
                    let content_type = reply.content_type.as_deref().unwrap_or_default();
                    assert!(content_type.starts_with("text/plain"), "{content_type}");
                    slowest = slowest.max(reply.elapsed);
                    tally.count(case, reply.status);
                } else {
                    tally.check(case, &reply, &[401]);
                }
            }
            assert!(
                slowest < Duration::from_secs(1),
                "echo within 1 s: {slowest:?}"
            );
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: format!(
                    "{}; valid echoes exact, text/plain, slowest {} ms",
                    tally.note(),
                    slowest.as_millis()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_10_valid_signature_wrong_aes_key() {
    dead_letter_row(
        10,
        "valid signature, wrong AES key",
        40,
        "decrypt",
        |rig, _| {
            let other = stranger_keys(rig);
            let encrypted = other.key().encrypt(&poison(rig, "key"), &rig.app_id);
            let ts = now_s().to_string();
            let sealed = seal_ciphertext(&rig.app, &rig.app_id, &encrypted, &ts, &nonce());
            ("encrypted with another key", sealed)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_11_receive_id_mismatch() {
    dead_letter_row(11, "receive_id mismatch", 40, "receive_id", |rig, _| {
        let encrypted = rig
            .app
            .key()
            .encrypt(&poison(rig, "tenant"), "wloaAnotherTenant");
        let ts = now_s().to_string();
        let sealed = seal_ciphertext(&rig.app, &rig.app_id, &encrypted, &ts, &nonce());
        ("encrypted for another receive_id", sealed)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_13_malformed_json_after_decrypt() {
    dead_letter_row(
        13,
        "malformed JSON after a valid decrypt",
        60,
        "json",
        |rig, n| {
            let id = poison_id("json");
            let whole =
                events::customer_update_for(&id, CustomerChange::Remark).to_json(&rig.app_id);
            let (case, plain): (&'static str, Vec<u8>) = match n % 6 {
                0 => ("truncated", whole[..whole.len() - 3].to_vec()),
                1 => (
                    "event_type a number",
                    json!({"header": {"event_type": 5}, "event": {"customer_id": id}})
                        .to_string()
                        .into_bytes(),
                ),
                2 => (
                    "no header",
                    json!({"event": {"customer_id": id}})
                        .to_string()
                        .into_bytes(),
                ),
                3 => (
                    "an array",
                    json!([{"event_type": "customer_update", "customer_id": id}])
                        .to_string()
                        .into_bytes(),
                ),
                4 => ("not JSON", format!("customer_id={id}").into_bytes()),
                _ => (
                    "invalid UTF-8",
                    [&whole[..20], &[0xffu8, 0xfe][..], &whole[20..]].concat(),
                ),
            };
            (case, seal_at(rig, &plain, 0))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_14_burst_above_capacity() {
    let load = Load {
        callbacks: 3000,
        concurrency: 64,
        per_second: 2000,
        ..Load::default()
    };
    run_row(
        14,
        "burst above capacity",
        RigOptions::on(SHARED_BROKER).set("WEILING_RELAY__SERVER__MAX_IN_FLIGHT", 8),
        load,
        |rig, _round| async move {
            let http = http();
            let probe = Probe::bind(&rig, "fault_probe").await;
            rig.progress_at_least(200).await;
            // 300 more at once, on top of the load; each names its own id.
            let sent = (0..300).map(|_| {
                let (http, rig) = (http.clone(), rig.clone());
                async move {
                    let event = unmapped(&rig, "burst");
                    let id = serde_json::from_slice::<Value>(&event).unwrap()["event"]
                        ["customer_id"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    (id, post(&http, &rig, &seal_at(&rig, &event, 0)).await)
                }
            });
            let answers = join_all(sent).await;
            let restored_at = Some(Instant::now());
            let mut tally = Tally::default();
            let mut slowest_ok = Duration::ZERO;
            for (_, reply) in &answers {
                tally.check("burst of 300", reply, &[200, 429, 503]);
                if reply.status == 200 {
                    slowest_ok = slowest_ok.max(reply.elapsed);
                } else {
                    assert!(reply.retry_after.is_some(), "{} without Retry-After", reply.status);
                }
            }
            let stored = probe.take().await;
            probe.close().await;
            let stored: Vec<&str> = stored
                .iter()
                .map(|(_, body)| body["event"]["customer_id"].as_str().unwrap())
                .collect();
            for (id, reply) in &answers {
                let in_inbox = stored.contains(&id.as_str());
                match reply.status {
                    200 => assert!(in_inbox, "answered success but not stored"),
                    429 => assert!(!in_inbox, "answered 429 but stored"),
                    _ => {}
                }
            }
            let refused = answers.iter().filter(|(_, r)| r.status == 429).count();
            assert!(refused > 0, "the burst never reached max_in_flight");
            FaultOutcome {
                restored_at,
                note: format!(
                    "max_in_flight 8; {}, every refusal with Retry-After; {} of them stored, each success among them, no 429; slowest success {} ms",
                    tally.note(),
                    stored.len(),
                    slowest_ok.as_millis()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_39_clock_skew() {
    run_row(
        39,
        "clock skew beyond the tolerance",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let http = http();
            let mut tally = Tally::default();
            let mut tick = paced(&rig).await;
            // A sender whose clock is off; the tolerance is 300 s.
            let skews: [(&str, i64); 6] = [
                ("sender 330 s fast", 330),
                ("sender 330 s slow", -330),
                ("sender 10 min fast", 600),
                ("sender 10 min slow", -600),
                ("sender 1 h fast", 3600),
                ("sender 1 day slow", -86_400),
            ];
            for n in 0..72 {
                tick.tick().await;
                let (case, skew) = skews[n % skews.len()];
                let reply = if n % 12 < 6 {
                    post(&http, &rig, &seal_at(&rig, &poison(&rig, "skew"), skew)).await
                } else {
                    // The same clock in milliseconds, and on the GET verification path.
                    let ms = ((now_s() + skew) * 1000).to_string();
                    if n % 2 == 0 {
                        let sealed = seal_event(&rig.app, &poison(&rig, "skew-ms"), &ms, &nonce());
                        post(&http, &rig, &sealed).await
                    } else {
                        let ts = (now_s() + skew).to_string();
                        let query = seal_echostr(&rig.app, b"12345", &ts, &nonce());
                        let url = callback_url(&rig, &query.to_query_string());
                        send(&http, Method::GET, &url, &[], Vec::new()).await
                    }
                };
                tally.check(case, &reply, &[401]);
            }
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: format!(
                    "{} (POST in s and ms, GET echostr): all refused",
                    tally.note()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}
