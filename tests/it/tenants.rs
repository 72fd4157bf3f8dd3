//! Tenants share one relay: one app whose Weiling refuses every call must not hold up the others.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use relay::app::Relay;
use relay::config::Settings;
use relay_harness::scenario::{self, WeilingApp};
use weiling_sim::events;
use weiling_sim::{CallbackDriver, Outcome, RetryPolicy, Simulator, new_customer_id};

use crate::support::in_process::{SHARED_BROKER, unique};

/// When each customer's first record reached the checking queue.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

struct Tenant {
    app: WeilingApp,
    driver: CallbackDriver,
    /// Customer id → when its one callback was sent.
    sent: HashMap<String, Instant>,
}

impl Tenant {
    /// One callback about a new customer, as Weiling would send it (retrying 429/503).
    async fn send_one(&mut self, sim: &Simulator) {
        let id = new_customer_id();
        let record = sim.create_customer(&self.app.app_id, &id);
        let sent_at = Instant::now();
        let delivery = self
            .driver
            .send(&events::add_customer(&record).to_json(&self.app.app_id))
            .await;
        assert_eq!(
            delivery.outcome,
            Outcome::Ok,
            "callback of {} stored",
            self.app.app_id
        );
        self.sent.insert(id, sent_at);
    }

    /// Per customer, from its callback to its record; `None` for a customer with no record yet.
    fn lags(&self, arrivals: &Arrivals) -> Vec<Option<Duration>> {
        let arrivals = arrivals.lock().unwrap();
        self.sent
            .iter()
            .map(|(id, sent)| {
                arrivals
                    .get(id)
                    .map(|at| at.saturating_duration_since(*sent))
            })
            .collect()
    }
}

fn p99(mut lags: Vec<Duration>) -> Duration {
    lags.sort_unstable();
    let at = (lags.len() * 99).div_ceil(100).saturating_sub(1);
    lags.get(at).copied().unwrap_or_default()
}

/// Runs two apps for `limited_for` with app A's every call answered 1009, A at 20 callbacks/s and
/// B at 10/s; returns B's lag p99 (and max) over that time, and whether every A customer got its
/// record after the limit was lifted.
async fn one_tenant_rate_limited(
    extra: &[(&str, String)],
    limited_for: Duration,
) -> (Duration, Duration, usize, usize) {
    let sim = Simulator::new(Default::default());
    let prefix = unique("tenants");
    let (a, b) = (
        WeilingApp::generate(&format!("{}a", prefix.replace('-', ""))),
        WeilingApp::generate(&format!("{}b", prefix.replace('-', ""))),
    );
    sim.add_app(&a.app_id, &a.app_secret);
    sim.add_app(&b.app_id, &b.app_secret);
    let sim_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let sim_addr = sim_listener.local_addr().unwrap();
    let sim_server = sim.serve(sim_listener).unwrap();
    let sim_handle = sim_server.handle();
    tokio::spawn(sim_server);

    let env_of = |app: &WeilingApp| {
        let mut env =
            scenario::relay_env(&prefix, SHARED_BROKER, &format!("http://{sim_addr}"), app);
        env.insert("WEILING_RELAY__SERVER__WORKERS".into(), "2".into());
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    };
    let mut settings = Settings::load(None, &env_of(&a)).unwrap();
    let b_settings = Settings::load(None, &env_of(&b)).unwrap();
    settings.apps.extend(b_settings.apps);

    // The checking queue: every record, by customer id, with its arrival time.
    let connection = Connection::connect(SHARED_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    relay::amqp::topology::declare(&connection, &settings.amqp)
        .await
        .unwrap();
    let check = format!("{prefix}.check");
    channel
        .queue_declare(
            check.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            check.as_str().into(),
            settings.amqp.customers_exchange.as_str().into(),
            "customer.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let arrivals: Arrivals = Arc::default();
    let mut consumer = channel
        .basic_consume(
            check.as_str().into(),
            "tenants-check".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let reading = tokio::spawn({
        let arrivals = arrivals.clone();
        async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let body: serde_json::Value =
                    serde_json::from_slice(&delivery.data).unwrap_or_default();
                if let Some(id) = body["customer_id"].as_str() {
                    arrivals
                        .lock()
                        .unwrap()
                        .entry(id.to_owned())
                        .or_insert_with(Instant::now);
                }
            }
        }
    });

    let relay = Relay::start(settings.clone(), TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let base = format!("http://{}", relay.addr());
    scenario::wait_ready(&base).await;
    let tenant = |app: WeilingApp| Tenant {
        driver: CallbackDriver::new(&base, Arc::new(app.keys().unwrap()), RetryPolicy::default()),
        app,
        sent: HashMap::new(),
    };
    let (mut tenant_a, mut tenant_b) = (tenant(a), tenant(b));

    sim.set_app_rate_limited(&tenant_a.app.app_id, true);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut n = 0u64;
    while started.elapsed() < limited_for {
        tick.tick().await;
        tenant_a.send_one(&sim).await;
        if n.is_multiple_of(2) {
            tenant_b.send_one(&sim).await;
        }
        n += 1;
    }
    // B's callbacks of the last seconds get the time they need, still during A's limit.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b_lags: Vec<Duration> = tenant_b
        .lags(&arrivals)
        .into_iter()
        .map(|l| l.unwrap_or(Duration::MAX))
        .collect();
    sim.set_app_rate_limited(&tenant_a.app.app_id, false);

    // After the limit: every customer of A gets its record.
    let deadline = Instant::now() + Duration::from_secs(120);
    let a_missing = loop {
        let missing = tenant_a
            .lags(&arrivals)
            .iter()
            .filter(|l| l.is_none())
            .count();
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let worst = b_lags.iter().copied().max().unwrap_or_default();
    let result = (p99(b_lags), worst, tenant_a.sent.len(), a_missing);

    relay.shutdown().await.unwrap();
    reading.abort();
    sim_handle.stop(false).await;
    scenario::cleanup(&channel, &settings.amqp, &check).await;
    let _ = connection.close(200, "done".into()).await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_rate_limited_for_a_minute_does_not_hold_up_another() {
    let (p99, worst, a_sent, a_missing) =
        one_tenant_rate_limited(&[], Duration::from_secs(60)).await;
    eprintln!(
        "app A answered 1009 for 60 s: app B's lag p99 {} ms (max {} ms); app A: {a_sent} callbacks, {a_missing} without a record after the limit was lifted",
        p99.as_millis(),
        worst.as_millis()
    );
    assert!(p99 < Duration::from_secs(2), "app B's lag p99 {p99:?}");
    assert_eq!(
        a_missing, 0,
        "every customer of app A published after the limit"
    );
}
