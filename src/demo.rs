//! `weiling-relay demo`: a relay on the local RabbitMQ, driven by real encrypted, signed callbacks,
//! checked by an independent consumer, summarised in a table. Exits non-zero if anything was lost.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};

use crate::app::{Relay, RelayError};
use crate::config::{ConfigError, Settings};
use crate::verify::AppKeys;
use crate::verify::seal::{SealedCallback, seal_ciphertext, seal_event};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Valid callbacks to send.
    #[arg(long, default_value_t = 1000)]
    pub callbacks: usize,
    /// Callbacks in flight at once (1 = strictly sequential).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Distinct customers the callbacks are about.
    #[arg(long, default_value_t = 300)]
    pub customers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("could not bind a local port: {0}")]
    Bind(#[from] std::io::Error),
    #[error("{0}")]
    Key(#[from] crate::verify::cipher::KeyError),
}

const EVENT_TYPES: [&str; 4] = [
    "add_customer",
    "history_add",
    "update_customer",
    "progress_add",
];
const REPLAYS: usize = 20;
const FORGED: usize = 20;
const WRONG_KEY: usize = 5;

struct Sent {
    latencies: Vec<Duration>,
    acknowledged: usize,
    failed: usize,
}

/// Runs the demo and returns whether nothing was lost.
pub async fn run(args: DemoArgs) -> Result<bool, DemoError> {
    let run_id = Alphanumeric
        .sample_string(&mut rand::rng(), 8)
        .to_lowercase();
    let app_id = format!("wloademo{run_id}");
    let token = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let aes = Alphanumeric.sample_string(&mut rand::rng(), 43);
    let prefix = format!("demo-{run_id}");
    let mut env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k == "WEILING_RELAY__AMQP__URL")
        .collect();
    for (key, value) in [
        ("WEILING_RELAY__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "WEILING_RELAY__AMQP__INBOX_QUEUE",
            format!("{prefix}.inbox"),
        ),
        (
            "WEILING_RELAY__AMQP__DEAD_LETTER_QUEUE",
            format!("{prefix}.dead"),
        ),
        (
            "WEILING_RELAY__AMQP__EVENTS_EXCHANGE",
            format!("{prefix}.events"),
        ),
        (
            "WEILING_RELAY__AMQP__CUSTOMERS_EXCHANGE",
            format!("{prefix}.customers"),
        ),
        (
            "WEILING_RELAY__AMQP__UNROUTED_EXCHANGE",
            format!("{prefix}.unrouted"),
        ),
        ("WEILING_RELAY_APP_ID", app_id.clone()),
        ("WEILING_RELAY_APP_SECRET", "demo-secret".to_owned()),
        ("WEILING_RELAY_TOKEN", token.clone()),
        ("WEILING_RELAY_ENCODING_AES_KEY", aes.clone()),
    ] {
        env.insert(key.to_owned(), value);
    }
    let settings = Settings::load(None, &env)?;
    let amqp = settings.amqp.clone();
    let app = AppKeys::new(
        &app_id,
        &SecretString::from(token),
        &SecretString::from(aes),
        true,
    )?;

    println!(
        "weiling-relay demo: run {run_id}, broker {}",
        crate::config::mask_url_password(amqp.url.expose_secret())
    );
    let relay = Relay::start(settings, TcpListener::bind("127.0.0.1:0")?)?;
    let base = format!("http://{}", relay.addr());

    // The checking consumer is an ordinary subscriber of the events exchange with its own queue.
    let connection =
        Connection::connect(amqp.url.expose_secret(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let check_queue = format!("{prefix}.check");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    wait_ready(&client, &base).await;
    channel
        .queue_declare(
            check_queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            check_queue.as_str().into(),
            amqp.events_exchange.as_str().into(),
            "event.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let callbacks: Vec<SealedCallback> = (0..args.callbacks)
        .map(|i| {
            let customer = skewed_customer(args.customers.max(1));
            let event_type = EVENT_TYPES.get(i % EVENT_TYPES.len()).copied().unwrap_or("add_customer");
            let event = serde_json::json!({
                "header": {"to_app": app_id, "event_type": event_type, "time_stamp": now_ms().to_string()},
                "event": {"customer_id": format!("cust-{customer:05}"), "type": 1, "business_related_id": format!("cust-{customer:05}"), "seq": i},
            });
            seal_event(&app, event.to_string().as_bytes(), &now_s(), &nonce())
        })
        .collect();

    println!(
        "sending {} callbacks ({} in flight)…",
        callbacks.len(),
        args.concurrency.max(1)
    );
    let started = Instant::now();
    let sent = send_all(&client, &base, &callbacks, args.concurrency.max(1)).await;
    let elapsed = started.elapsed();

    // Exact resends: answered `success`, stored once.
    let replays = send_all(
        &client,
        &base,
        callbacks
            .get(..REPLAYS.min(callbacks.len()))
            .unwrap_or_default(),
        4,
    )
    .await;
    // Forged signatures: refused with 401, never stored.
    let forged: Vec<SealedCallback> = callbacks
        .iter()
        .take(FORGED)
        .map(|c| {
            let mut forged = c.clone();
            forged.query.nonce.push('x');
            forged
        })
        .collect();
    let forged_answers = statuses(&client, &base, &forged).await;
    // Authentic but encrypted with a key the relay does not have: dead-lettered, never dropped.
    let stranger = AppKeys::new(
        &app_id,
        &SecretString::from("x".repeat(16)),
        &SecretString::from("k".repeat(43)),
        true,
    )?;
    let wrong_key: Vec<SealedCallback> = (0..WRONG_KEY)
        .map(|_| {
            seal_ciphertext(
                &app,
                &app_id,
                &stranger.key().encrypt(b"{}", &app_id),
                &now_s(),
                &nonce(),
            )
        })
        .collect();
    let wrong_key_answers = statuses(&client, &base, &wrong_key).await;

    let (stored, deliveries) = drain_distinct(&channel, &check_queue, sent.acknowledged).await?;
    let dead = channel
        .queue_declare(
            amqp.dead_letter_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();

    relay.shutdown().await?;
    cleanup(&channel, &amqp, &check_queue).await;
    let _ = connection.close(200, "demo done".into()).await;

    let lost = sent.acknowledged.saturating_sub(stored);
    let mut latencies = sent.latencies;
    latencies.sort_unstable();
    let rows = [
        ("callbacks sent", callbacks.len().to_string()),
        ("acknowledged (200 success)", sent.acknowledged.to_string()),
        (
            "not acknowledged (sender would retry)",
            sent.failed.to_string(),
        ),
        ("stored events seen by a subscriber", stored.to_string()),
        ("lost (acknowledged but not stored)", lost.to_string()),
        (
            "exact replays answered success / duplicate stored events",
            format!(
                "{} of {} / {}",
                replays.acknowledged,
                REPLAYS.min(callbacks.len()),
                deliveries.saturating_sub(stored)
            ),
        ),
        (
            "forged signatures answered 401",
            format!(
                "{} of {FORGED}",
                forged_answers.iter().filter(|s| **s == 401).count()
            ),
        ),
        (
            "wrong-key callbacks dead-lettered",
            format!(
                "{} answered 200, {dead} in the dead-letter queue",
                wrong_key_answers.iter().filter(|s| **s == 200).count()
            ),
        ),
        (
            "ack latency p50 / p99 / max",
            format!(
                "{} / {} / {}",
                ms(percentile(&latencies, 50.0)),
                ms(percentile(&latencies, 99.0)),
                ms(latencies.last().copied())
            ),
        ),
        (
            "throughput",
            format!(
                "{:.0} callbacks/s",
                sent.acknowledged as f64 / elapsed.as_secs_f64().max(1e-9)
            ),
        ),
    ];
    println!("\n| measure | value |\n|---|---|");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
    let ok = lost == 0
        && deliveries == stored
        && dead as usize == WRONG_KEY
        && forged_answers.iter().all(|s| *s == 401);
    println!(
        "\n{}",
        if ok {
            "OK: nothing lost"
        } else {
            "FAILED: see the table"
        }
    );
    Ok(ok)
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    callback: &SealedCallback,
) -> Result<u16, reqwest::Error> {
    let response = client
        .post(format!(
            "{base}/weiling/callback?{}",
            callback.query.to_query_string()
        ))
        .header("content-type", "application/json")
        .body(callback.body.clone())
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    Ok(if status == 200 && body != "success" {
        0
    } else {
        status
    })
}

async fn send_all(
    client: &reqwest::Client,
    base: &str,
    callbacks: &[SealedCallback],
    concurrency: usize,
) -> Sent {
    let results: Vec<(Duration, bool)> = futures::stream::iter(callbacks)
        .map(|c| async move {
            let started = Instant::now();
            let ok = matches!(post(client, base, c).await, Ok(200));
            (started.elapsed(), ok)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Sent {
        acknowledged: results.iter().filter(|(_, ok)| *ok).count(),
        failed: results.iter().filter(|(_, ok)| !*ok).count(),
        latencies: results
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(d, _)| d)
            .collect(),
    }
}

async fn statuses(client: &reqwest::Client, base: &str, callbacks: &[SealedCallback]) -> Vec<u16> {
    let mut out = Vec::with_capacity(callbacks.len());
    for c in callbacks {
        out.push(post(client, base, c).await.unwrap_or(0));
    }
    out
}

/// Counts (distinct, total) event bodies on the check queue: until `expected` distinct ones arrived,
/// then until nothing more came for 500 ms (late duplicates), or nothing at all came for 3 s.
async fn drain_distinct(
    channel: &lapin::Channel,
    queue: &str,
    expected: usize,
) -> Result<(usize, usize), lapin::Error> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "demo-check".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = HashSet::new();
    let mut total = 0;
    loop {
        let idle = if seen.len() < expected {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(500)
        };
        match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery.ack(BasicAckOptions::default()).await?;
                total += 1;
                seen.insert(delivery.data);
            }
            _ => break,
        }
    }
    Ok((seen.len(), total))
}

async fn cleanup(channel: &lapin::Channel, amqp: &crate::config::AmqpSettings, check_queue: &str) {
    for queue in [
        check_queue,
        &amqp.inbox_queue,
        &amqp.dead_letter_queue,
        &amqp.unrouted_exchange,
    ] {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        &amqp.customers_exchange,
        &amqp.events_exchange,
        &amqp.unrouted_exchange,
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// A Zipf-like choice: a few customers change often, most rarely.
fn skewed_customer(customers: usize) -> usize {
    let u: f64 = rand::rng().random_range(0.0..1.0);
    ((customers as f64).powf(u) as usize)
        .saturating_sub(1)
        .min(customers - 1)
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted.get(rank).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

fn now_s() -> String {
    (now_ms() / 1000).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn nonce() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 16)
}
