//! Operating the relay: metrics after an end-to-end flow, logs free of secrets and customer data, and
//! a SIGTERM drain under load.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use relay::verify::AppKeys;
use relay::verify::seal::{seal_ciphertext, seal_event};
use relay_harness::scenario::{Scenario, ScenarioConfig};
use secrecy::SecretString;
use weiling_sim::events::{self, CustomerChange};
use weiling_sim::{Outcome, revision};

use crate::support::in_process::{AES_KEY, OTHER_AES_KEY, SHARED_BROKER, TOKEN, now_s, unique};
use crate::support::process::{ProcessRig, RelayProcess};

/// The value of the first sample line of `name` whose labels contain every one of `labels`.
pub(crate) fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_callbacks_flushes_weiling_calls_records_and_latency() {
    let scenario = Scenario::start(SHARED_BROKER, &[]).await.unwrap();
    let config = ScenarioConfig {
        callbacks: 200,
        customers: 50,
        unknown_ids: 2,
        unmapped: 3,
        ..ScenarioConfig::default()
    };
    let report = scenario.drive(&config).await;
    assert!(report.ok(), "the flow itself worked: {report:?}");
    let base = scenario.relay_url().unwrap();
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    scenario.finish().await.unwrap();

    let app = format!("app=\"{}\"", scenario_app(&text));
    let stored = sample(
        &text,
        "relay_callbacks_total",
        &[&app, "outcome=\"stored\""],
    )
    .unwrap();
    assert!(stored >= 205.0, "every callback counted: {stored}");
    assert!(sample(&text, "relay_callback_ack_seconds_count", &[]).unwrap() >= 205.0);
    assert!(
        text.contains("relay_callback_ack_seconds_bucket{le=\"0.005\"}"),
        "a real histogram, not a summary"
    );
    // Every flush reason has a series from the start; what counts is their sum.
    let flushes: f64 = ["max_ids", "quiet", "max_wait", "drain"]
        .iter()
        .filter_map(|r| {
            sample(
                &text,
                "relay_window_flush_total",
                &[&format!("reason=\"{r}\"")],
            )
        })
        .sum();
    assert!(flushes >= 1.0, "windows flushed: {flushes}");
    assert!(
        sample(&text, "relay_publish_failures_total", &["reason=\"nack\""]).is_some(),
        "known labels exist (at 0) before anything happened"
    );
    assert!(sample(&text, "relay_window_ids_count", &[]).unwrap() >= 1.0);
    let calls = sample(
        &text,
        "relay_weiling_requests_total",
        &["endpoint=\"customer/batch\"", "code=\"0\""],
    )
    .unwrap();
    assert!(calls >= 1.0, "batch calls counted: {calls}");
    assert!(
        sample(
            &text,
            "relay_weiling_requests_total",
            &["endpoint=\"auth/access_token\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&text, "relay_weiling_token_refresh_total", &[]).unwrap() >= 1.0);
    let upserts = sample(&text, "relay_records_published_total", &["op=\"upsert\""]).unwrap();
    assert!(
        upserts >= report.customers_changed as f64,
        "{upserts} upserts"
    );
    assert!(sample(&text, "relay_records_published_total", &["op=\"missing\""]).unwrap() >= 2.0);
    assert!(sample(&text, "relay_publish_confirm_seconds_count", &[]).unwrap() >= upserts);
    assert!(sample(&text, "relay_end_to_end_seconds_count", &[]).unwrap() >= upserts);
    assert!(sample(&text, "relay_coalescing_ratio", &[]).unwrap() > 1.0);
    assert!(sample(&text, "relay_circuit_state", &[&app]).is_some());
    assert!(
        sample(
            &text,
            "relay_http_requests_total",
            // Other tests in this process answer GETs on the same route (URL verification).
            &[
                "method=\"POST\"",
                "route=\"/weiling/callback\"",
                "status=\"200\""
            ]
        )
        .unwrap()
            >= 205.0
    );
    for name in [
        "relay_callbacks_total",
        "relay_end_to_end_seconds",
        "relay_coalescing_ratio",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has a help line"
        );
    }
}

/// The app label of this scenario: the one app whose callbacks were stored (other tests in this
/// process share the recorder, so pick the label from the scenario's own series).
fn scenario_app(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with("relay_callbacks_total{") && l.contains("outcome=\"stored\""))
        .filter_map(|l| {
            l.split("app=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .filter(|app| app.starts_with("wloa"))
        .max_by_key(|app| {
            sample(
                text,
                "relay_callbacks_total",
                &[&format!("app=\"{app}\""), "outcome=\"stored\""],
            )
            .unwrap_or(0.0) as u64
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_secret_token_or_customer_field() {
    let rig = ProcessRig::start("logs").await;
    let log = std::env::temp_dir().join(format!("{}.log", unique("relay-log")));
    // Everything the relay itself logs, at its most verbose.
    let relay = RelayProcess::start_logged(&rig.env, log, "info,relay=trace,lapin=error");
    relay_harness::scenario::wait_ready(&rig.base).await;
    let driver = rig.driver();

    for i in 0..20 {
        let record = rig
            .sim
            .create_customer(&rig.app_id, &format!("cust-log-{i}"));
        assert_eq!(
            driver
                .send(&events::add_customer(&record).to_json(&rig.app_id))
                .await
                .outcome,
            Outcome::Ok
        );
    }
    let ids: HashSet<String> = (0..20).map(|i| format!("cust-log-{i}")).collect();
    let (stale, _) = rig.await_latest(&ids, Duration::from_secs(20)).await;
    assert!(stale.is_empty(), "{stale:?}\n{}", relay.logs());

    // A token refresh: every token Weiling issued becomes invalid.
    rig.sim.expire_tokens();
    for i in 0..5 {
        let id = format!("cust-log-{i}");
        let record = rig.sim.change_customer(&rig.app_id, &id);
        assert_eq!(
            driver
                .send(
                    &events::customer_update(&record, CustomerChange::Remark).to_json(&rig.app_id)
                )
                .await
                .outcome,
            Outcome::Ok
        );
    }
    let (stale, _) = rig.await_latest(&ids, Duration::from_secs(20)).await;
    assert!(stale.is_empty(), "{stale:?}\n{}", relay.logs());
    assert!(rig.sim.token_calls() >= 2, "the token was refreshed");

    // A bad signature and a dead letter.
    let http = reqwest::Client::new();
    let mut forged = driver.app().key().encrypt(b"{}", &rig.app_id);
    forged.insert(0, 'A');
    let other = AppKeys::new(
        &rig.app_id,
        &SecretString::from(TOKEN),
        &SecretString::from(OTHER_AES_KEY),
        true,
    )
    .unwrap();
    let bad_signature = seal_ciphertext(
        &other,
        "wloaSomebodyElse",
        &forged,
        &now_s().to_string(),
        "n-bad",
    );
    let wrong_key = seal_ciphertext(
        driver.app(),
        &rig.app_id,
        &other.key().encrypt(b"{\"secret\":1}", &rig.app_id),
        &now_s().to_string(),
        "n-dead",
    );
    for (sealed, expected) in [(&bad_signature, 401), (&wrong_key, 200)] {
        let status = http
            .post(format!(
                "{}/weiling/callback?{}",
                rig.base,
                sealed.query.to_query_string()
            ))
            .body(sealed.body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, expected);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = relay.logs();
    drop(relay);

    assert!(
        logs.contains("dead-lettering"),
        "the dead letter was logged"
    );
    assert!(
        logs.contains("callbacks refused"),
        "the bad signature was logged (a refusal after a quiet spell is summarised at once)"
    );
    assert!(
        logs.contains("access token refused"),
        "the token refresh was logged"
    );
    let mut forbidden: Vec<String> = vec![
        TOKEN.into(),
        AES_KEY.into(),
        rig.app_secret.clone(),
        "access_token=".into(),
    ];
    forbidden.extend(rig.sim.issued_tokens());
    for record in rig.sim.customers(&rig.app_id) {
        collect_strings(&record, &mut forbidden);
    }
    forbidden.extend(ids.iter().cloned());
    for secret in &forbidden {
        assert!(
            !logs.contains(secret.as_str()),
            "`{secret}` appears in the logs"
        );
    }
    assert!(
        forbidden.len() > 100,
        "the check covered the customer fields"
    );
    rig.cleanup().await;
}

/// Every string in a record that is long enough to be recognisable.
fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if s.chars().count() >= 4 => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_loses_nothing() {
    let mut rig = ProcessRig::start("term").await;
    rig.env.insert(
        "WEILING_RELAY__SERVER__DRAIN_GRACE_MS".into(),
        "1500".into(),
    );
    rig.env.insert(
        "WEILING_RELAY__SERVER__DRAIN_DEADLINE_MS".into(),
        "10000".into(),
    );
    let mut relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;

    // Load: several senders change customers and send callbacks until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for worker in 0..4 {
        let driver = weiling_sim::CallbackDriver::new(
            &rig.base,
            rig.keys(),
            weiling_sim::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            },
        );
        let sim = rig.sim.clone();
        let app_id = rig.app_id.clone();
        let stop = stop.clone();
        let sent = sent.clone();
        senders.push(tokio::spawn(async move {
            // Per customer, the revision of its last acknowledged change.
            let mut acknowledged: HashMap<String, u64> = HashMap::new();
            let mut refused_503 = 0;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("cust-term-{worker}-{}", i % 40);
                i += 1;
                let (record, event) = match sim.customer(&app_id, &id) {
                    Some(_) => {
                        let record = sim.change_customer(&app_id, &id);
                        let event = events::customer_update(&record, CustomerChange::Remark);
                        (record, event)
                    }
                    None => {
                        let record = sim.create_customer(&app_id, &id);
                        let event = events::add_customer(&record);
                        (record, event)
                    }
                };
                let delivery = driver.send(&event.to_json(&app_id)).await;
                sent.fetch_add(1, Ordering::Relaxed);
                match delivery.outcome {
                    Outcome::Ok => {
                        let at = revision(&record).unwrap();
                        let known = acknowledged.entry(id).or_default();
                        *known = (*known).max(at);
                    }
                    _ if delivery.last_status == Some(503) => refused_503 += 1,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            (acknowledged, refused_503)
        }));
    }
    while sent.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let term_sent = tokio::time::Instant::now();
    relay.terminate();
    // Readiness turns 503 while the listener is still open.
    let http = reqwest::Client::new();
    let mut saw_unready = false;
    while term_sent.elapsed() < Duration::from_millis(1200) {
        if let Ok(r) = http.get(format!("{}/readyz", rig.base)).send().await
            && r.status().as_u16() == 503
        {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = relay
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits inside the drain deadline");
    let drained_in = term_sent.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    let mut refused_503 = 0;
    for sender in senders {
        let (ids, refused) = sender.await.unwrap();
        acknowledged.extend(ids);
        refused_503 += refused;
    }
    assert!(saw_unready, "/readyz answered 503 during the drain");
    assert!(status.success(), "exit status {status:?}");
    assert!(refused_503 > 0, "new callbacks got 503 during the drain");

    // Whatever was acknowledged is published, by the drain itself or by the next process.
    let restarted = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    // Later changes may have been refused (503) and so are unknown to the relay: the published state
    // must be at least as new as the last acknowledged one.
    let (lost, received) = rig
        .await_records(
            acknowledged.keys().cloned(),
            Duration::from_secs(30),
            |id, record| revision(record) >= acknowledged.get(id).copied(),
        )
        .await;
    eprintln!(
        "sigterm: {} callbacks sent, {} customers acknowledged, {refused_503} answered 503 while draining, exit after {drained_in:?}, records {received}, lost {}",
        sent.load(Ordering::Relaxed),
        acknowledged.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost after SIGTERM: {lost:?}");
    drop(restarted);
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_callbacks_is_counted_exactly_and_logged_in_summaries() {
    const FORGED: usize = 100_000;
    let _flood = crate::support::gate::flood().await;
    let rig = ProcessRig::start("flood").await;
    let log = std::env::temp_dir().join(format!("{}.log", unique("relay-flood")));
    // The default level an operator runs with.
    let relay = RelayProcess::start_logged(&rig.env, log, "info,lapin=error");
    relay_harness::scenario::wait_ready(&rig.base).await;
    let baseline = relay.logs().lines().count();

    let other = AppKeys::new(
        &rig.app_id,
        &SecretString::from("F0rgedT0kenF0rgedT0ken"),
        &SecretString::from(AES_KEY),
        true,
    )
    .unwrap();
    let forged = seal_event(&other, b"{}", &now_s().to_string(), "n-flood");
    let url = format!(
        "{}/weiling/callback?{}",
        rig.base,
        forged.query.to_query_string()
    );
    let http = reqwest::Client::new();
    // Sent as a sender would: a request whose connection failed is sent again.
    let answers: Vec<(Option<u16>, usize)> = futures::stream::iter(0..FORGED)
        .map(|_| crate::support::resend::post(&http, &url, &forged.body))
        .buffer_unordered(32)
        .collect()
        .await;
    let resent: usize = answers.iter().map(|(_, failed)| failed).sum();
    let mut answered = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for (status, _) in &answers {
        *answered.entry(*status).or_default() += 1;
    }
    assert!(
        answers.iter().all(|(s, _)| *s == Some(401)),
        "every forged callback refused; answers by status (None = no HTTP answer after 6 tries): {answered:?}"
    );

    let text = reqwest::get(format!("{}/metrics", rig.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = sample(
        &text,
        "relay_callbacks_total",
        &["app=\"-\"", "outcome=\"unauthorized\""],
    )
    .unwrap_or(0.0);
    // Exact, save for answers lost on a failed connection after the relay counted them.
    assert!(
        (FORGED..=FORGED + resent).contains(&(counted as usize)),
        "{counted} counted for {FORGED} refusals ({resent} resent)"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = relay.logs();
    let lines = logs.lines().count() - baseline;
    eprintln!(
        "{FORGED} forged callbacks: {counted} counted, {resent} resent after a failed connection, {lines} log lines"
    );
    assert!(lines < 100, "{lines} log lines for {FORGED} refusals");
    assert!(logs.contains("callbacks refused"), "summarised");
    drop(relay);
    rig.cleanup().await;
}
