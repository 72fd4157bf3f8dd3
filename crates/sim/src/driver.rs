//! The callback sender: seals events like Weiling, POSTs them to the relay and retries until `success`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

use weiling_proto::callback::AppKeys;
use weiling_proto::callback::seal::seal_event_now;

/// The longest `Retry-After` the driver waits, so a relay asking for minutes cannot stall a test run.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Weiling's schedule is undocumented; this one is compressed so tests and benchmarks finish quickly.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total attempts, the first included; 0 is taken as 1.
    pub max_attempts: u32,
    /// The wait before retry n is `delays[n-1]`, the last entry repeating when the list is short.
    pub delays: Vec<Duration>,
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            delays: vec![
                Duration::from_millis(200),
                Duration::from_millis(500),
                Duration::from_secs(1),
            ],
            // Weiling wants the answer within 1 s.
            request_timeout: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: usize) -> Duration {
        self.delays
            .get(retry)
            .or(self.delays.last())
            .copied()
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// HTTP 200 with the body `success`: the relay took responsibility for the event.
    Ok,
    /// The last answer was a 4xx or a 503, which the relay only gives when it stored nothing.
    Fail,
    /// The last attempt timed out, failed to connect, or got another answer (500, 200 without
    /// `success`, …): whether the relay stored the event is unknown.
    Info,
}

/// The ledger entry of one event.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub outcome: Outcome,
    pub attempts: u32,
    pub first_sent: SystemTime,
    /// Of the last attempt, from sending the request to reading the whole answer.
    pub latency: Duration,
    pub last_status: Option<u16>,
}

/// What one POST came back with.
struct Attempt {
    latency: Duration,
    status: Option<StatusCode>,
    success: bool,
    retry_after: Option<Duration>,
}

impl Attempt {
    fn outcome(&self) -> Outcome {
        match self.status {
            _ if self.success => Outcome::Ok,
            Some(s) if s.is_client_error() || s == StatusCode::SERVICE_UNAVAILABLE => Outcome::Fail,
            _ => Outcome::Info,
        }
    }

    /// The relay's `Retry-After` on 429/503 replaces the policy's delay, capped at [`MAX_RETRY_AFTER`].
    fn wait(&self, policy_delay: Duration) -> Duration {
        let honoured = matches!(
            self.status,
            Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
        );
        match self.retry_after {
            Some(asked) if honoured => asked.min(MAX_RETRY_AFTER),
            _ => policy_delay,
        }
    }
}

/// Sends sealed callbacks for one app to one relay. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct CallbackDriver {
    url: String,
    app: Arc<AppKeys>,
    policy: RetryPolicy,
    client: reqwest::Client,
}

impl CallbackDriver {
    pub fn new(relay_base_url: &str, app: Arc<AppKeys>, policy: RetryPolicy) -> Self {
        Self::with_client(relay_base_url, app, policy, reqwest::Client::new())
    }

    /// With a caller's client, e.g. one shared by many drivers of a benchmark.
    pub fn with_client(
        relay_base_url: &str,
        app: Arc<AppKeys>,
        policy: RetryPolicy,
        client: reqwest::Client,
    ) -> Self {
        Self {
            url: format!("{}/weiling/callback", relay_base_url.trim_end_matches('/')),
            app,
            policy,
            client,
        }
    }

    pub fn app(&self) -> &AppKeys {
        &self.app
    }

    /// Delivers one event, each attempt freshly sealed (new timestamp and nonce, hence a new signature),
    /// as Weiling's sender would, until the relay answers `success` or the attempts run out.
    pub async fn send(&self, event_json: &[u8]) -> Delivery {
        let first_sent = SystemTime::now();
        let max_attempts = self.policy.max_attempts.max(1);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = self.attempt(event_json).await;
            let outcome = attempt.outcome();
            if outcome == Outcome::Ok || attempts >= max_attempts {
                return Delivery {
                    outcome,
                    attempts,
                    first_sent,
                    latency: attempt.latency,
                    last_status: attempt.status.map(|s| s.as_u16()),
                };
            }
            let retry = usize::try_from(attempts - 1).unwrap_or(usize::MAX);
            tokio::time::sleep(attempt.wait(self.policy.delay(retry))).await;
        }
    }

    async fn attempt(&self, event_json: &[u8]) -> Attempt {
        let sealed = seal_event_now(&self.app, event_json);
        let url = format!("{}?{}", self.url, sealed.query.to_query_string());
        let started = Instant::now();
        let sent = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .timeout(self.policy.request_timeout)
            .body(sealed.body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(_) => {
                return Attempt {
                    latency: started.elapsed(),
                    status: None,
                    success: false,
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The body is part of the answer: a timeout while reading it leaves the outcome unknown.
        match response.bytes().await {
            Ok(body) => Attempt {
                latency: started.elapsed(),
                status: Some(status),
                success: status == StatusCode::OK && body.as_ref() == b"success",
                retry_after,
            },
            Err(_) => Attempt {
                latency: started.elapsed(),
                status: None,
                success: false,
                retry_after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Mutex;

    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    use secrecy::SecretString;

    use super::*;
    use weiling_proto::callback::CallbackQuery;

    const TOKEN: &str = "tok3nForTheDriverTest";
    const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn keys() -> Arc<AppKeys> {
        Arc::new(
            AppKeys::new(
                "wloa89d1c1a0de7484347e8718b52faff851",
                &SecretString::from(TOKEN),
                &SecretString::from(AES_KEY),
                true,
            )
            .unwrap(),
        )
    }

    fn fast_policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            delays: vec![Duration::from_millis(10)],
            request_timeout: Duration::from_millis(500),
        }
    }

    #[derive(Default)]
    struct Seen {
        queries: Vec<String>,
        bodies: Vec<Vec<u8>>,
    }

    /// (status, Retry-After, body) of one answer of the stand-in relay.
    type Answer = (u16, Option<&'static str>, &'static str);

    struct FakeRelay {
        seen: Arc<Mutex<Seen>>,
        answers: Vec<Answer>,
    }

    async fn answer(
        req: HttpRequest,
        body: web::Bytes,
        relay: web::Data<FakeRelay>,
    ) -> HttpResponse {
        let mut seen = relay.seen.lock().unwrap();
        let n = seen.queries.len();
        seen.queries.push(req.query_string().to_owned());
        seen.bodies.push(body.to_vec());
        let (status, retry_after, text) = relay
            .answers
            .get(n)
            .or(relay.answers.last())
            .copied()
            .unwrap();
        let mut answer =
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
        if let Some(seconds) = retry_after {
            answer.insert_header(("Retry-After", seconds));
        }
        answer.body(text)
    }

    /// A relay stand-in answering from `answers` in turn (the last one repeating), recording requests.
    async fn fake_relay(
        answers: Vec<Answer>,
    ) -> (String, Arc<Mutex<Seen>>, actix_web::dev::ServerHandle) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let relay = web::Data::new(FakeRelay {
            seen: seen.clone(),
            answers,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(relay.clone())
                .route("/weiling/callback", web::post().to(answer))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        (base, seen, handle)
    }

    #[tokio::test]
    async fn retries_two_503s_then_succeeds_with_a_fresh_seal_each_time() {
        let (base, seen, handle) = fake_relay(vec![
            (503, Some("0"), "busy"),
            (503, None, "busy"),
            (200, None, "success"),
        ])
        .await;
        let app = keys();
        let driver = CallbackDriver::new(&base, app.clone(), fast_policy());
        let event = crate::events::customer_update_for("c1", crate::events::CustomerChange::Remark)
            .to_json(app.app_id());
        let delivery = driver.send(&event).await;

        assert_eq!(delivery.outcome, Outcome::Ok);
        assert_eq!(delivery.attempts, 3);
        assert_eq!(delivery.last_status, Some(200));
        let Seen { queries, bodies } = std::mem::take(&mut *seen.lock().unwrap());
        let queries: Vec<CallbackQuery> = queries
            .iter()
            .map(|q| CallbackQuery::parse(q).unwrap())
            .collect();
        assert_eq!(queries.len(), 3);
        let mut nonces: Vec<&str> = queries.iter().map(|q| q.nonce.as_str()).collect();
        nonces.sort_unstable();
        nonces.dedup();
        assert_eq!(nonces.len(), 3, "every attempt has its own nonce");
        for (query, body) in queries.iter().zip(&bodies) {
            let envelope: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(envelope["to_app"], app.app_id());
            let encrypt_msg = envelope["encrypt_msg"].as_str().unwrap();
            assert!(app.signature_matches(query, encrypt_msg));
            assert_eq!(app.decrypt(encrypt_msg).unwrap().message, event);
        }
        handle.stop(false).await;
    }

    #[tokio::test]
    async fn a_definite_refusal_after_all_attempts_is_fail() {
        let (base, seen, handle) = fake_relay(vec![(401, None, "unauthorized")]).await;
        let driver = CallbackDriver::new(&base, keys(), fast_policy());
        let delivery = driver.send(b"{}").await;
        assert_eq!(delivery.outcome, Outcome::Fail);
        assert_eq!(delivery.attempts, 4);
        assert_eq!(delivery.last_status, Some(401));
        assert_eq!(seen.lock().unwrap().queries.len(), 4);
        handle.stop(false).await;
    }

    #[tokio::test]
    async fn a_200_without_success_is_retried_and_unknown() {
        let (base, _seen, handle) = fake_relay(vec![(200, None, "ok")]).await;
        let policy = RetryPolicy {
            max_attempts: 2,
            ..fast_policy()
        };
        let delivery = CallbackDriver::new(&base, keys(), policy).send(b"{}").await;
        assert_eq!(delivery.outcome, Outcome::Info);
        assert_eq!(delivery.attempts, 2);
        assert_eq!(delivery.last_status, Some(200));
        handle.stop(false).await;
    }

    #[tokio::test]
    async fn no_listener_is_unknown_without_a_status() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let policy = RetryPolicy {
            max_attempts: 2,
            ..fast_policy()
        };
        let driver = CallbackDriver::new(&format!("http://127.0.0.1:{port}/"), keys(), policy);
        let delivery = driver.send(b"{}").await;
        assert_eq!(delivery.outcome, Outcome::Info);
        assert_eq!(delivery.attempts, 2);
        assert_eq!(delivery.last_status, None);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only_and_capped() {
        let attempt = |status: u16, retry_after: Option<u64>| Attempt {
            latency: Duration::ZERO,
            status: Some(StatusCode::from_u16(status).unwrap()),
            success: false,
            retry_after: retry_after.map(Duration::from_secs),
        };
        let policy = Duration::from_millis(200);
        assert_eq!(attempt(429, Some(1)).wait(policy), Duration::from_secs(1));
        assert_eq!(attempt(503, Some(60)).wait(policy), MAX_RETRY_AFTER);
        assert_eq!(attempt(503, Some(0)).wait(policy), Duration::ZERO);
        assert_eq!(attempt(503, None).wait(policy), policy);
        assert_eq!(attempt(500, Some(1)).wait(policy), policy);

        let default = RetryPolicy::default();
        assert_eq!(default.delay(0), Duration::from_millis(200));
        assert_eq!(default.delay(2), Duration::from_secs(1));
        assert_eq!(default.delay(7), Duration::from_secs(1));
    }
}
