//! The relay binary as a child process, so it can be killed, terminated and its logs read for real.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub struct RelayProcess {
    pub child: Child,
    /// Where stderr (the JSON logs) goes when captured.
    pub log: Option<PathBuf>,
}

impl RelayProcess {
    pub fn start(env: &HashMap<String, String>) -> RelayProcess {
        Self::spawn(env, None, "warn,lapin=off")
    }

    /// Starts with the given log filter and stderr written to `log`.
    pub fn start_logged(env: &HashMap<String, String>, log: PathBuf, filter: &str) -> RelayProcess {
        Self::spawn(env, Some(log), filter)
    }

    fn spawn(env: &HashMap<String, String>, log: Option<PathBuf>, filter: &str) -> RelayProcess {
        let stderr = match &log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_weiling-relay"))
            .arg("serve")
            .env_clear()
            .envs(env)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("relay binary starts");
        RelayProcess { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill_9(&mut self) {
        // Child::kill sends SIGKILL on Unix: no drain, no flush, no ack.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM by pid (the graceful path Kubernetes takes).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// Waits up to `within` for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(log) = &self.log {
            let _ = std::fs::remove_file(log);
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A simulator, the env of a relay process pointed at it and the shared broker with unique names,
/// and a checking queue bound to the customers exchange.
pub struct ProcessRig {
    pub sim: weiling_sim::Simulator,
    sim_server: actix_web::dev::ServerHandle,
    pub app_id: String,
    pub app_secret: String,
    pub env: HashMap<String, String>,
    pub settings: relay::config::Settings,
    pub base: String,
    pub connection: lapin::Connection,
    pub channel: lapin::Channel,
    pub check: String,
    /// The latest record per customer read from the checking queue so far.
    latest: std::sync::Mutex<HashMap<String, (u64, serde_json::Value)>>,
    /// How often each record `message_id` was read: more than once is a duplicate delivery.
    message_ids: std::sync::Mutex<HashMap<String, usize>>,
    /// Queues a test declared with [`Self::own_queue`], deleted at cleanup.
    own_queues: std::sync::Mutex<Vec<String>>,
    fetched: std::sync::Mutex<Vec<u64>>,
}

/// `env` with the relay listening on 127.0.0.1:`port` and `extra` settings on top.
pub fn listening_on(
    env: &HashMap<String, String>,
    port: u16,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = env.clone();
    env.insert(
        "WEILING_RELAY__SERVER__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    );
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// Connects to the first of `urls` (one address, or a cluster's comma-separated) that answers.
async fn connect_any(urls: &str) -> lapin::Connection {
    let mut errors = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(error) => errors.push(format!("{url}: {error}")),
        }
    }
    panic!("no broker address answered: {errors:?}");
}

impl ProcessRig {
    pub async fn start(name: &str) -> ProcessRig {
        Self::start_on(name, crate::support::in_process::SHARED_BROKER).await
    }

    /// The same against another broker (a private node the test may stop).
    pub async fn start_on(name: &str, amqp_url: &str) -> ProcessRig {
        Self::start_with(name, amqp_url, &[]).await
    }

    /// With extra environment for the relay (settings the topology depends on, such as partitions).
    pub async fn start_with(name: &str, amqp_url: &str, extra: &[(&str, &str)]) -> ProcessRig {
        use crate::support::in_process::{AES_KEY, TOKEN, unique};
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;

        let sim = weiling_sim::Simulator::new(Default::default());
        let app_id = format!("wloa{}", unique(name).replace('-', ""));
        let app_secret = format!("{name}-app-secret-value");
        sim.add_app(&app_id, &app_secret);
        let sim_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sim_addr = sim_listener.local_addr().unwrap();
        let sim_server = sim.serve(sim_listener).unwrap();
        let sim_handle = sim_server.handle();
        tokio::spawn(sim_server);

        let prefix = unique(name);
        let port = free_port();
        let app = relay_harness::scenario::WeilingApp {
            app_id: app_id.clone(),
            app_secret: app_secret.clone(),
            token: TOKEN.into(),
            encoding_aes_key: AES_KEY.into(),
        };
        let env = listening_on(
            &relay_harness::scenario::relay_env(
                &prefix,
                amqp_url,
                &format!("http://{sim_addr}"),
                &app,
            ),
            port,
            extra,
        );
        let settings = relay::config::Settings::load(None, &env).unwrap();
        let connection = connect_any(amqp_url).await;
        let channel = connection.create_channel().await.unwrap();
        relay::amqp::topology::declare(&connection, &settings.amqp)
            .await
            .unwrap();
        let check = format!("{prefix}.check");
        // Durable, so it survives a broker restart in the tests that cause one.
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        // On a cluster (quorum inbox) the checking queue is replicated too, so it outlives a node.
        let mut check_args = FieldTable::default();
        if settings.amqp.inbox_queue_type == relay::config::QueueType::Quorum {
            check_args.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("quorum".into()),
            );
        }
        channel
            .queue_declare(check.as_str().into(), durable, check_args)
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
        ProcessRig {
            sim,
            sim_server: sim_handle,
            app_id,
            app_secret,
            env,
            settings,
            base: format!("http://127.0.0.1:{port}"),
            connection,
            channel,
            check,
            latest: Default::default(),
            message_ids: Default::default(),
            own_queues: Default::default(),
            fetched: Default::default(),
        }
    }

    /// A new inspector connection, after the broker dropped the old one.
    pub async fn reconnect(&mut self) {
        let url = self.env["WEILING_RELAY__AMQP__URL"].clone();
        self.connection = connect_any(&url).await;
        self.channel = self.connection.create_channel().await.unwrap();
    }

    /// Every `fetched_at` read so far (ms), in reading order.
    pub fn fetched_at(&self) -> Vec<u64> {
        self.fetched.lock().unwrap().clone()
    }

    pub fn keys(&self) -> std::sync::Arc<relay::verify::AppKeys> {
        use secrecy::SecretString;
        std::sync::Arc::new(
            relay::verify::AppKeys::new(
                &self.app_id,
                &SecretString::from(crate::support::in_process::TOKEN),
                &SecretString::from(crate::support::in_process::AES_KEY),
                true,
            )
            .unwrap(),
        )
    }

    pub fn driver(&self) -> weiling_sim::CallbackDriver {
        weiling_sim::CallbackDriver::new(
            &self.base,
            self.keys(),
            weiling_sim::RetryPolicy::default(),
        )
    }

    /// Reads the checking queue until every id in `expected` shows the simulator's current state, or
    /// `within` passes. Returns the ids still missing or stale, and how many records arrived.
    pub async fn await_latest(
        &self,
        expected: &std::collections::HashSet<String>,
        within: Duration,
    ) -> (Vec<String>, usize) {
        self.await_records(expected.iter().cloned(), within, |id, record| {
            Some(record) == self.sim.customer(&self.app_id, id).as_ref()
        })
        .await
    }

    /// Reads the checking queue until, for every id, the latest record (by `fetched_at`) satisfies
    /// `good`, or `within` passes. What was read is kept for later calls.
    pub async fn await_records(
        &self,
        expected: impl IntoIterator<Item = String>,
        within: Duration,
        good: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> (Vec<String>, usize) {
        use lapin::options::BasicGetOptions;
        let expected: Vec<String> = expected.into_iter().collect();
        let mut received = 0;
        let satisfied = |latest: &HashMap<String, (u64, serde_json::Value)>, id: &String| {
            latest.get(id).is_some_and(|(_, r)| good(id, r))
        };
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            match self
                .channel
                .basic_get(self.check.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(message) => {
                    received += 1;
                    let body: serde_json::Value =
                        serde_json::from_slice(&message.delivery.data).unwrap();
                    let id = body["customer_id"].as_str().unwrap().to_owned();
                    let at = body["fetched_at"].as_u64().unwrap();
                    self.fetched.lock().unwrap().push(at);
                    if let Some(message_id) = message.delivery.properties.message_id() {
                        *self
                            .message_ids
                            .lock()
                            .unwrap()
                            .entry(message_id.to_string())
                            .or_default() += 1;
                    }
                    let mut latest = self.latest.lock().unwrap();
                    if latest.get(&id).is_none_or(|(t, _)| at >= *t) {
                        latest.insert(id, (at, body["record"].clone()));
                    }
                }
                None => {
                    if expected
                        .iter()
                        .all(|id| satisfied(&self.latest.lock().unwrap(), id))
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let latest = self.latest.lock().unwrap();
        let stale = expected
            .iter()
            .filter(|id| !satisfied(&latest, id))
            .cloned()
            .collect();
        (stale, received)
    }

    /// A queue of the test's own (`<check>.<suffix>`, removed by [`Self::cleanup`]) bound to
    /// `exchange` with `key`.
    pub async fn own_queue(&self, suffix: &str, exchange: &str, key: &str) -> String {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let queue = format!("{}.{suffix}", self.check);
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.own_queues.lock().unwrap().push(queue.clone());
        queue
    }

    /// Sends every event one after the other; each must be acknowledged.
    pub async fn send_all(&self, samples: &[weiling_sim::SimEvent]) {
        let driver = self.driver();
        for sample in samples {
            let delivery = driver.send(&sample.to_json(&self.app_id)).await;
            assert_eq!(
                delivery.outcome,
                weiling_sim::Outcome::Ok,
                "{} {}",
                sample.event_type,
                sample.event
            );
        }
    }

    /// Records read more than once (same `message_id`), counting each extra copy.
    pub fn duplicate_records(&self) -> usize {
        self.message_ids
            .lock()
            .unwrap()
            .values()
            .map(|n| n - 1)
            .sum()
    }

    pub async fn cleanup(self) {
        self.sim_server.stop(false).await;
        let own = std::mem::take(&mut *self.own_queues.lock().unwrap());
        for queue in own {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        relay_harness::scenario::cleanup(&self.channel, &self.settings.amqp, &self.check).await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// A child process (a mirror, a Prometheus) killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGKILL now (no commit, no ack, no goodbye) and wait for the exit.
    pub fn kill_9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

/// The database the mirror tests write to, each in a schema of its own.
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `weiling-relay mirror` as a child process with the relay's environment `env`, reading `queue`
/// into `schema` of the test database; `extra` arguments are appended.
pub fn start_mirror(
    env: &HashMap<String, String>,
    queue: &str,
    schema: &str,
    extra: &[&str],
) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_weiling-relay"))
        .args(["mirror", "--queue", queue, "--schema", schema])
        .args(extra)
        .env_clear()
        .envs(env)
        .env("WEILING_RELAY_DATABASE_URL", DATABASE_URL)
        .env("RUST_LOG", "warn,lapin=off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("relay binary starts");
    KillOnDrop(child)
}

/// Drops a test's mirror schema; best effort, the test's verdict does not depend on it.
pub async fn drop_schema(schema: &str) {
    if let Ok((db, connection)) = tokio_postgres::connect(DATABASE_URL, tokio_postgres::NoTls).await
    {
        tokio::spawn(connection);
        let _ = db
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
