//! `InProcessRig`: a relay on port 0 with per-test AMQP names, a sender that seals callbacks like Weiling,
//! and an inspector that reads the inbox and dead-letter queues. `teardown` deletes what a test made.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use relay::app::Relay;
use relay::config::Settings;
use relay::verify::AppKeys;
use relay::verify::seal::{SealedCallback, seal_event};
use relay_harness::scenario::{self, relay_env};
use secrecy::SecretString;

pub const SHARED_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const TOKEN: &str = "TestTokenTestToken2024";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const OTHER_AES_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (or test process) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "it-{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct InProcessRig {
    pub relay: Option<Relay>,
    pub base: String,
    pub app_id: String,
    pub settings: Settings,
    pub keys: AppKeys,
    pub http: reqwest::Client,
    pub connection: Connection,
    pub channel: Channel,
}

/// Options a test may change before the relay starts.
pub struct Spawn {
    pub amqp_url: String,
    pub inspect_url: String,
    pub env: Vec<(String, String)>,
    pub wait_ready: bool,
}

impl Default for Spawn {
    fn default() -> Self {
        Self {
            amqp_url: SHARED_BROKER.into(),
            inspect_url: SHARED_BROKER.into(),
            env: Vec::new(),
            wait_ready: true,
        }
    }
}

impl Spawn {
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }
}

pub async fn spawn_app() -> InProcessRig {
    spawn_with(Spawn::default()).await
}

pub async fn spawn_with(options: Spawn) -> InProcessRig {
    // TEST_LOG=debug (or any filter) shows the relay's logs while debugging a test.
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = relay::telemetry::init(Some(&filter), None);
    }
    let prefix = unique("relay");
    let app_id = format!("wloa{}", prefix.replace('-', ""));
    let app = scenario::WeilingApp {
        app_id: app_id.clone(),
        app_secret: "test-app-secret".into(),
        token: TOKEN.into(),
        encoding_aes_key: AES_KEY.into(),
    };
    // Nothing here calls Weiling: the pipeline is off.
    let mut env = relay_env(&prefix, &options.amqp_url, "http://127.0.0.1:9", &app);
    for (key, value) in [
        ("WEILING_RELAY__SERVER__WORKERS", "2"),
        ("WEILING_RELAY__AMQP__RECONNECT_MAX_DELAY_MS", "500"),
        ("WEILING_RELAY__SERVER__DRAIN_GRACE_MS", "0"),
        // These tests inspect the inbox itself, so nothing may consume it.
        ("WEILING_RELAY__AMQP__CONSUME_INBOX", "false"),
    ] {
        env.insert(key.into(), value.into());
    }
    env.extend(options.env.iter().cloned());
    let settings = Settings::load(None, &env).expect("test settings are valid");
    let keys = AppKeys::new(
        &app_id,
        &SecretString::from(TOKEN),
        &SecretString::from(AES_KEY),
        true,
    )
    .unwrap();
    let relay = Relay::start(settings.clone(), TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let base = format!("http://{}", relay.addr());
    let connection = Connection::connect(&options.inspect_url, ConnectionProperties::default())
        .await
        .expect("inspector connects to the broker");
    let channel = connection.create_channel().await.unwrap();
    let app = InProcessRig {
        relay: Some(relay),
        base,
        app_id,
        settings,
        keys,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        connection,
        channel,
    };
    if options.wait_ready {
        app.wait_ready(Duration::from_secs(15)).await;
    }
    app
}

pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    pub elapsed: Duration,
}

pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn nonce() -> String {
    unique("n").replace('-', "")
}

impl InProcessRig {
    pub fn inbox(&self) -> &str {
        &self.settings.amqp.inbox_queue
    }

    pub fn dead(&self) -> &str {
        &self.settings.amqp.dead_letter_queue
    }

    /// An `add_customer` event for `customer_id`, as Weiling sends it.
    pub fn event(&self, customer_id: &str) -> Vec<u8> {
        serde_json::json!({
            "header": {"to_app": self.app_id, "event_type": "add_customer", "time_stamp": (now_s() * 1000).to_string()},
            "event": {"customer_id": customer_id, "external_userid": "wmXXXX", "name": "n"},
        })
        .to_string()
        .into_bytes()
    }

    /// A valid callback about `customer_id`, sealed now with a fresh nonce.
    pub fn callback(&self, customer_id: &str) -> SealedCallback {
        seal_event(
            &self.keys,
            &self.event(customer_id),
            &now_s().to_string(),
            &nonce(),
        )
    }

    pub async fn post(&self, callback: &SealedCallback) -> Answer {
        self.post_raw(
            &format!("/weiling/callback?{}", callback.query.to_query_string()),
            callback.body.clone(),
            &[("content-type", "application/json")],
        )
        .await
    }

    pub async fn post_raw(
        &self,
        path_and_query: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path_and_query}", self.base))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request).await
    }

    pub async fn get(&self, path_and_query: &str) -> Answer {
        answer(self.http.get(format!("{}{path_and_query}", self.base))).await
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.get("/readyz").await.status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "relay never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes every message now in `queue` (acknowledging them), waiting briefly for stragglers.
    pub async fn take_all(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        let mut idle_rounds = 0;
        while idle_rounds < 3 {
            match self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(message) => {
                    out.push(message);
                    idle_rounds = 0;
                }
                None => {
                    idle_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        }
        out
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        depth(&self.channel, queue).await
    }

    /// Stops the relay and deletes every queue and exchange the test created.
    pub async fn teardown(mut self) {
        if let Some(relay) = self.relay.take() {
            tokio::time::timeout(Duration::from_secs(30), relay.shutdown())
                .await
                .expect("relay drains in time")
                .expect("relay stops cleanly");
        }
        // No checking queue here: deleting "" is a harmless no-op.
        scenario::cleanup(&self.channel, &self.settings.amqp, "").await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let started = std::time::Instant::now();
    let response = request.send().await.expect("the relay answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    Answer {
        status,
        retry_after,
        body,
        elapsed: started.elapsed(),
    }
}

pub fn header<'a>(
    message: &'a lapin::message::BasicGetMessage,
    name: &str,
) -> Option<&'a AMQPValue> {
    message
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
}

pub fn header_str(message: &lapin::message::BasicGetMessage, name: &str) -> String {
    match header(message, name) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        other => panic!("header {name} missing or not a string: {other:?}"),
    }
}

/// Ready messages in an existing queue (a passive declare; panics when the queue does not exist).
pub async fn depth(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}
