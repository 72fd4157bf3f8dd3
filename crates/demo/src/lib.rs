//! `weiling-relay demo`: the simulator, the relay, a checking consumer and the PostgreSQL mirror on the
//! local RabbitMQ; a burst of customer changes through real callbacks, with token expiry, a rate-limit
//! spell and 5xx faults; then the repair steps (a reconcile, and a key rotation fixed by a dead-letter
//! replay); then the mirror's tables compared with the simulator row by row; a summary table. Exits
//! non-zero if anything acknowledged was lost, a repair step failed or the mirror differs.

pub mod mirror_check;
pub mod repair;

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use secrecy::SecretString;

use mirror_check::{DemoMirror, MirrorReport};
use relay::verify::AppKeys;
use relay::verify::seal::seal_ciphertext;
use relay_harness::scenario::{self, Report, Scenario, ScenarioConfig, ScenarioError, percentile};
use repair::RepairReport;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The demo also runs the PostgreSQL mirror (`weiling-relay mirror`, in this process) on its own \
queue and a unique schema, both removed at the end. Once the run has settled it compares the mirror's \
tables with the simulator's final state row by row: every customer's row holds exactly the simulator's \
record, every unknown id is a deleted row, no row is extra. The summary shows the rows compared and the \
differences; any difference makes the exit code non-zero."
)]
pub struct DemoArgs {
    /// Customer-change callbacks to send.
    #[arg(long, default_value_t = 3000)]
    pub callbacks: usize,
    /// Distinct customers, chosen with a Zipf-like skew.
    #[arg(long, default_value_t = 300)]
    pub customers: usize,
    /// Callbacks in flight at once (1 = strictly sequential).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Fraction of Weiling batch calls the simulator fails with HTTP 5xx.
    #[arg(long, default_value_t = 0.05)]
    pub fault_5xx: f64,
    /// PostgreSQL for the mirror the demo runs and compares with the simulator (a unique schema,
    /// dropped at the end).
    #[arg(
        long,
        env = "WEILING_RELAY_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        default_value = mirror_check::DEFAULT_DATABASE_URL,
        value_parser = parse_secret
    )]
    pub database_url: SecretString,
}

fn parse_secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw))
}

/// Everything the demo measured.
#[derive(Debug)]
pub struct DemoOutcome {
    pub report: Report,
    pub forged_401: usize,
    pub dead_letters: usize,
    pub repair: RepairReport,
    pub mirror: MirrorReport,
}

impl DemoOutcome {
    /// Nothing lost, the edge checks and repair steps as expected, the mirror equal to the simulator.
    pub fn ok(&self) -> bool {
        self.report.ok()
            && self.forged_401 == FORGED
            && self.dead_letters == WRONG_KEY
            && self.repair.ok(WRONG_KEY)
            && self.mirror.ok()
    }
}

const FORGED: usize = 20;
const WRONG_KEY: usize = 5;

/// Runs the demo, prints the summary and returns whether nothing was lost.
pub async fn run(args: DemoArgs) -> Result<bool, ScenarioError> {
    let outcome = execute(&args).await?;
    print_summary(
        &outcome.report,
        outcome.forged_401,
        outcome.dead_letters,
        &outcome
            .repair
            .rows(WRONG_KEY)
            .into_iter()
            .chain(outcome.mirror.rows())
            .collect::<Vec<_>>(),
    );
    let ok = outcome.ok();
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

/// Runs the demo (printing only its opening lines) and returns the measurements. The mirror's
/// queue and schema and the scenario's queues are removed on the way out, also after an error.
pub async fn execute(args: &DemoArgs) -> Result<DemoOutcome, ScenarioError> {
    let amqp_url = std::env::var("WEILING_RELAY__AMQP__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let config = ScenarioConfig {
        callbacks: args.callbacks,
        customers: args.customers,
        concurrency: args.concurrency,
        expire_tokens_every: Some((args.callbacks / 3).max(1)),
        rate_limit_at: Some(args.callbacks / 2),
        fault_5xx_ratio: args.fault_5xx,
        settle_timeout: Duration::from_secs(60),
        ..ScenarioConfig::default()
    };
    println!(
        "weiling-relay demo: {} callbacks about {} customers (+{} unknown ids, {} unmapped events), {} in flight;",
        config.callbacks, config.customers, config.unknown_ids, config.unmapped, config.concurrency
    );
    println!(
        "Weiling simulator: tokens expire every {} callbacks, a rate-limit spell, {:.0}% of batch calls fail with 5xx",
        config.expire_tokens_every.unwrap_or(0),
        config.fault_5xx_ratio * 100.0
    );
    // PostgreSQL first: when it is not there, say so before anything else starts.
    let mut mirror = DemoMirror::open(&args.database_url).await?;
    println!(
        "PostgreSQL mirror: {} (dropped at the end), compared with the simulator row by row",
        mirror.describe()
    );
    let scenario = match Scenario::start(&amqp_url, &config.relay_env).await {
        Ok(scenario) => scenario,
        Err(error) => {
            warn_all(&mirror.close().await.warnings);
            return Err(error);
        }
    };
    let result = steps(&scenario, &config, &mut mirror).await;
    let closed = mirror.close().await;
    warn_all(&closed.warnings);
    let finished = scenario.finish().await;
    let mut outcome = result?;
    finished?;
    if let Some(error) = closed.error {
        outcome.mirror.error.get_or_insert(error);
    }
    Ok(outcome)
}

async fn steps(
    scenario: &Scenario,
    config: &ScenarioConfig,
    mirror: &mut DemoMirror,
) -> Result<DemoOutcome, ScenarioError> {
    // Subscribed before the first callback, like the checking consumer.
    mirror.start(scenario).await?;
    let report = scenario.drive(config).await;
    let (forged_401, dead_letters) = edge_checks(scenario).await?;
    // Must follow edge_checks: the replay meets its wrong-key letters and must leave them failing.
    let repair = repair::run(scenario).await;
    // After the repair steps: the reconcile and the replay publish records too.
    let mirror = mirror.settle_and_compare(scenario, &report, &repair).await;
    Ok(DemoOutcome {
        report,
        forged_401,
        dead_letters,
        repair,
        mirror,
    })
}

fn warn_all(warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

/// Forged signatures must be refused and undecryptable callbacks dead-lettered, never dropped.
async fn edge_checks(scenario: &Scenario) -> Result<(usize, usize), ScenarioError> {
    let Some(base) = scenario.relay_url() else {
        return Ok((0, 0));
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| std::io::Error::other(e.without_url()))?;
    let app = &scenario.app;
    let app_id = app.app_id().to_owned();
    let now = || (relay::verify::unix_ms(std::time::SystemTime::now()) / 1000).to_string();
    let mut forged_401 = 0;
    for i in 0..FORGED {
        let stranger = AppKeys::new(
            &app_id,
            &SecretString::from(format!("ForgedToken{i:08}")),
            &SecretString::from("f".repeat(43)),
            true,
        )?;
        let sealed = seal_ciphertext(
            &stranger,
            &app_id,
            &app.key().encrypt(b"{}", &app_id),
            &now(),
            &format!("forged{i}"),
        );
        if post(&http, &base, &sealed).await == 401 {
            forged_401 += 1;
        }
    }
    let other_key = AppKeys::new(
        &app_id,
        &SecretString::from("x".repeat(16)),
        &SecretString::from("k".repeat(43)),
        true,
    )?;
    for i in 0..WRONG_KEY {
        let ciphertext = other_key.key().encrypt(b"{\"header\":{}}", &app_id);
        let sealed = seal_ciphertext(app, &app_id, &ciphertext, &now(), &format!("wrongkey{i}"));
        post(&http, &base, &sealed).await;
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    // The relay's own broker URL, so the check reads the queue the relay wrote.
    let connection = lapin::Connection::connect(
        secrecy::ExposeSecret::expose_secret(&scenario.settings.amqp.url),
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let channel = connection.create_channel().await?;
    let dead = channel
        .queue_declare(
            scenario.settings.amqp.dead_letter_queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await?
        .message_count() as usize;
    let _ = connection.close(200, "demo".into()).await;
    Ok((forged_401, dead))
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    sealed: &relay::verify::seal::SealedCallback,
) -> u16 {
    http.post(format!(
        "{base}/weiling/callback?{}",
        sealed.query.to_query_string()
    ))
    .header("content-type", "application/json")
    .body(sealed.body.clone())
    .send()
    .await
    .map_or(0, |r| r.status().as_u16())
}

fn print_summary(
    r: &Report,
    forged_401: usize,
    dead_letters: usize,
    repair_rows: &[(&'static str, String)],
) {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
    let rows = [
        (
            "callbacks sent (customer changes, unknown ids, unmapped)",
            r.callbacks_sent.to_string(),
        ),
        (
            "callbacks acknowledged (200 success)",
            r.acknowledged.to_string(),
        ),
        (
            "callbacks not acknowledged after the sender's retries",
            r.not_acknowledged.to_string(),
        ),
        (
            "sender retries (answers other than success)",
            r.sender_retries.to_string(),
        ),
        (
            "catalog events sent / enriched / raw only",
            format!(
                "{} ({} types) / {} / {}",
                r.catalog_sent, r.catalog_types, r.catalog_enriched, r.catalog_raw_only
            ),
        ),
        ("Weiling batch calls made", r.batch_calls.to_string()),
        (
            "batch calls per callback",
            format!(
                "{:.3}",
                r.batch_calls as f64 / r.callbacks_sent.max(1) as f64
            ),
        ),
        (
            "largest batch (ids per call, cap 100)",
            r.max_ids_per_call.to_string(),
        ),
        (
            "batch calls answered with an error (5xx, rate limit, token)",
            r.calls_answered_error.to_string(),
        ),
        ("token fetches", r.token_calls.to_string()),
        (
            "records published (received by the checking consumer)",
            r.records_received.to_string(),
        ),
        (
            "duplicate records (same message_id)",
            r.records_received
                .saturating_sub(r.distinct_records)
                .to_string(),
        ),
        ("customers changed", r.customers_changed.to_string()),
        (
            "every changed customer's latest state seen",
            format!(
                "{} ({} of {})",
                yes_no(r.latest_state_seen == r.customers_changed),
                r.latest_state_seen,
                r.customers_changed
            ),
        ),
        (
            "unknown ids published as missing",
            format!("{} of {}", r.unknown_ids_missing_seen, r.unknown_ids_sent),
        ),
        (
            "lost (acknowledged, never published)",
            r.lost.len().to_string(),
        ),
        ("unexpected records", r.unexpected.len().to_string()),
        ("inbox messages left", r.inbox_depth_at_end.to_string()),
        (
            "forged signatures answered 401",
            format!("{forged_401} of {FORGED}"),
        ),
        (
            "undecryptable callbacks in the dead-letter queue",
            format!("{dead_letters} of {WRONG_KEY}"),
        ),
        (
            "ack latency p50 / p99",
            format!(
                "{} / {}",
                ms(percentile(&r.ack_latency_ms, 50.0)),
                ms(percentile(&r.ack_latency_ms, 99.0))
            ),
        ),
        (
            "end-to-end lag p50 / p99",
            format!(
                "{} / {}",
                ms(percentile(&r.lag_ms, 50.0)),
                ms(percentile(&r.lag_ms, 99.0))
            ),
        ),
        (
            "run time (sending + settling)",
            format!(
                "{:.1} s (settled {:.1} s after the last callback)",
                r.elapsed.as_secs_f64(),
                r.settled_in.as_secs_f64()
            ),
        ),
    ];
    println!("\n| measure | value |\n|---|---|");
    for (name, value) in rows.iter().chain(repair_rows) {
        println!("| {name} | {value} |");
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
