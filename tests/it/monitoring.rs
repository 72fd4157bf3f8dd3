//! The chart's dashboard and alerts against a real Prometheus (Debian's `prometheus`, which
//! `scripts/test` installs when missing): it scrapes a relay process and a mirror process driven by
//! the simulator, every dashboard panel's query returns data through Prometheus' HTTP API, and a
//! broken Weiling makes the circuit alert fire.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use weiling_sim::events::{self, CustomerChange};

use crate::support::in_process::unique;
use crate::support::process::{
    KillOnDrop, ProcessRig, RelayProcess, drop_schema, free_port, start_mirror,
};

const CHART_FILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/weiling-relay/files");
/// What Grafana's `$__rate_interval` becomes here: four of the 1 s scrapes and then some.
const RATE_INTERVAL: &str = "20s";

struct Prometheus {
    _process: KillOnDrop,
    base: String,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    fn start(relay: &str, mirror: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {CHART_FILES}/alerts.yaml\nscrape_configs:\n  - job_name: weiling-relay\n    static_configs:\n      - targets: ['{relay}']\n  - job_name: weiling-relay-mirror\n    static_configs:\n      - targets: ['{mirror}']\n"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Debian's prometheus is installed (scripts/test installs it)");
        Prometheus {
            _process: KillOnDrop(child),
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    /// An instant query's result vector, or `None` while Prometheus is not answering.
    async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let body: Value = self
            .http
            .get(format!("{}/api/v1/query?{query}", self.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"].as_array().cloned()
    }

    async fn alerts(&self) -> Vec<Value> {
        let Ok(response) = self
            .http
            .get(format!("{}/api/v1/alerts", self.base))
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value = response.json().await.unwrap_or_default();
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every query of every panel, with Grafana's variables as the dashboard's defaults resolve them.
fn panel_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{CHART_FILES}/dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$job", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

fn has_a_number(result: &[Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_finds_data_for_every_panel_and_fires_the_circuit_alert() {
    let rig = ProcessRig::start("monitoring").await;
    let relay_addr = rig.base.trim_start_matches("http://").to_owned();
    let mut relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;

    let mirror_queue = format!("{}.mirror", rig.check);
    let schema = unique("monitoring").replace('-', "_");
    let mirror_addr = format!("127.0.0.1:{}", free_port());
    let mirror = start_mirror(
        &rig.env,
        &mirror_queue,
        &schema,
        &["--metrics-listen", &mirror_addr],
    );
    let prometheus = Prometheus::start(&relay_addr, &mirror_addr);

    // Changes of 50 customers at about 20 a second, all through the test.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, answered) = (stop.clone(), answered.clone());
        let (sim, app_id, driver) = (rig.sim.clone(), rig.app_id.clone(), rig.driver());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let id = format!("mon-{:02}", n % 50);
                let event = match sim.customer(&app_id, &id) {
                    None => events::add_customer(&sim.create_customer(&app_id, &id)),
                    Some(_) => events::customer_update(
                        &sim.change_customer(&app_id, &id),
                        CustomerChange::Remark,
                    ),
                };
                if driver.send(&event.to_json(&app_id)).await.outcome == weiling_sim::Outcome::Ok {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                n += 1;
            }
        })
    };

    // Both targets up, then every panel's query answers with a number (within a minute: rates
    // need a few scrapes, the queue depths their first count, the mirror its first batch).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<(String, String)> = panel_queries();
    let mut answered_panels = HashSet::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (title, expr) in pending {
            match prometheus.query(&expr).await {
                Some(result) if has_a_number(&result) => {
                    answered_panels.insert(title);
                }
                _ => still.push((title, expr)),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        pending.is_empty(),
        "panel queries without data after a minute of scraping: {pending:#?}"
    );
    let circuit = format!("relay_circuit_state{{app=\"{}\"}}", rig.app_id);
    let closed = prometheus.query(&circuit).await.unwrap_or_default();
    assert_eq!(
        closed.first().map(|s| s["value"][1].clone()),
        Some(Value::from("0")),
        "the circuit is closed while Weiling answers: {closed:?}"
    );

    // Weiling answers every call 5xx: the circuit opens, stays open, and the alert fires after
    // its minute.
    rig.sim.set_fault_5xx_ratio(1.0);
    let broken_at = Instant::now();
    let deadline = broken_at + Duration::from_secs(180);
    let firing = loop {
        let alerts = prometheus.alerts().await;
        let circuit_alert = alerts.iter().find(|a| {
            a["labels"]["alertname"] == "WeilingRelayCircuitOpen"
                && a["labels"]["app"] == rig.app_id.as_str()
                && a["state"] == "firing"
        });
        if let Some(alert) = circuit_alert {
            break Some((alert.clone(), broken_at.elapsed()));
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    rig.sim.set_fault_5xx_ratio(0.0);
    stop.store(true, Ordering::SeqCst);
    let _ = load.await;

    relay.terminate();
    let _ = relay.wait_exit(Duration::from_secs(30)).await;
    drop(mirror);
    drop(prometheus);
    let _ = rig
        .channel
        .queue_delete(mirror_queue.as_str().into(), Default::default())
        .await;
    drop_schema(&schema).await;
    rig.cleanup().await;

    let (alert, fired_after) = firing.unwrap_or_else(|| {
        panic!("the circuit alert did not fire within 180 s of breaking Weiling")
    });
    assert_eq!(alert["labels"]["severity"], "critical");
    assert!(
        alert["annotations"]["runbook"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "the alert carries its runbook: {alert}"
    );
    assert!(answered.load(Ordering::SeqCst) > 0);
    eprintln!(
        "monitoring: {} panels answered; the circuit alert fired {:.0} s after Weiling broke",
        answered_panels.len(),
        fired_after.as_secs_f64()
    );
}
