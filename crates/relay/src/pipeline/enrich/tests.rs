//! Client tests against a fake Weiling: success, refresh, backoff, Retry-After, give-up, breaker, secrecy.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::test_server::{APP_ID, APP_SECRET, FakeWeiling, Reply, TOKEN_PREFIX};
use super::*;

fn settings(base_url: &str, max_retries: u32) -> WeilingSettings {
    WeilingSettings {
        base_url: base_url.to_owned(),
        request_timeout_ms: 2000,
        rate_limit_per_minute: 6000,
        max_retries,
        auth_error_codes: vec![403, 501, 1007],
        rate_limit_codes: vec![1015, 1009],
        missing_codes: vec![3000],
        token_refresh_margin_s: 300,
    }
}

fn app(secret: &str) -> AppSettings {
    AppSettings {
        app_id: APP_ID.to_owned(),
        app_secret: SecretString::from(secret),
        token: SecretString::from("Tok3nTok3nTok3nTok3n"),
        tokens: Vec::new(),
        encoding_aes_key: SecretString::from("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
        encoding_aes_keys: Vec::new(),
        check_receive_id: true,
    }
}

fn fast() -> ClientOptions {
    ClientOptions {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        breaker_threshold: 100,
        breaker_cool_down: Duration::from_millis(200),
        max_body_bytes: 4096,
        garbage_retries: 2,
    }
}

fn client_with(s: &WeilingSettings, secret: &str, opts: ClientOptions) -> WeilingClient {
    WeilingClient::with_options(s, &[app(secret)], Some("test-pod".into()), opts).unwrap()
}

fn client(fake: &FakeWeiling, max_retries: u32) -> WeilingClient {
    client_with(&settings(&fake.base_url, max_retries), APP_SECRET, fast())
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn gave_up(r: Result<Fetched, EnrichError>) -> (u32, String) {
    match r {
        Err(EnrichError::GaveUp { attempts, last }) => (attempts, last),
        other => panic!("expected GaveUp, got {other:?}"),
    }
}

fn rejected(r: Result<Fetched, EnrichError>) -> (u32, String) {
    match r {
        Err(EnrichError::Rejected { attempts, last }) => (attempts, last),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

fn assert_no_secrets(text: &str) {
    for secret in [APP_SECRET, TOKEN_PREFIX, "access_token=", "app_secret="] {
        assert!(!text.contains(secret), "`{secret}` leaked into: {text}");
    }
}

#[tokio::test]
async fn success_reports_missing_ids_and_asks_duplicates_once() {
    let fake = FakeWeiling::start().await;
    let c = client(&fake, 3);
    let got = c
        .fetch_customers(
            APP_ID,
            &ids(&["a", "b", "a", "missing-1"]),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let records: Vec<(String, Value)> = got
        .records
        .iter()
        .map(|(id, r)| (id.clone(), serde_json::from_str(r.get()).unwrap()))
        .collect();
    assert_eq!(
        records,
        vec![
            (
                "a".to_owned(),
                json!({"customer_id": "a", "name": "name of a", "lost_state": false})
            ),
            (
                "b".to_owned(),
                json!({"customer_id": "b", "name": "name of b", "lost_state": false})
            ),
        ]
    );
    assert_eq!(got.missing, ids(&["missing-1"]));
    let log = fake.batch_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, ids(&["a", "b", "missing-1"]));

    // The token is cached for the next batch.
    c.fetch_customers(APP_ID, &ids(&["c"]), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(c.breaker_state(APP_ID), Some(BreakerState::Closed));
}

#[tokio::test]
async fn an_auth_code_refreshes_the_token_and_retries_once() {
    let fake = FakeWeiling::start().await;
    fake.script([Reply::code(403)]);
    let c = client(&fake, 3);
    let got = c
        .fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(got.records.len(), 1);
    assert_eq!(fake.token_calls(), 2);
    let log = fake.batch_log();
    assert_eq!(log.len(), 2);
    assert_ne!(log[0].2, log[1].2, "the retry must use the new token");
}

#[tokio::test]
async fn an_auth_code_after_the_refresh_gives_up() {
    let fake = FakeWeiling::start().await;
    fake.script([Reply::code(1007), Reply::code(403)]);
    let c = client(&fake, 5);
    let (attempts, last) = gave_up(
        c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
            .await,
    );
    assert_eq!(attempts, 2);
    assert!(last.contains("code 403"), "{last}");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.batch_calls(), 2);
}

#[tokio::test]
async fn a_rate_limit_code_backs_off_then_succeeds() {
    let fake = FakeWeiling::start().await;
    fake.script([Reply::Json {
        status: 200,
        body: json!({"code": "1015", "msg": "too fast"}),
        retry_after: None,
    }]);
    let mut opts = fast();
    opts.backoff_min = Duration::from_millis(80);
    opts.backoff_max = Duration::from_millis(400);
    let c = client_with(&settings(&fake.base_url, 3), APP_SECRET, opts);
    c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap();
    let log = fake.batch_log();
    assert_eq!(log.len(), 2);
    assert!(log[1].0 - log[0].0 >= Duration::from_millis(80));
}

#[tokio::test]
async fn retry_after_on_503_delays_the_next_call() {
    let fake = FakeWeiling::start().await;
    fake.script([Reply::status(503, Some(1))]);
    let c = client(&fake, 3);
    c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap();
    let log = fake.batch_log();
    assert_eq!(log.len(), 2);
    let gap = log[1].0 - log[0].0;
    assert!(gap >= Duration::from_secs(1), "{gap:?}");
}

#[tokio::test]
async fn retry_after_on_429_also_holds_other_callers_back() {
    let fake = FakeWeiling::start().await;
    fake.script([Reply::status(429, Some(1))]);
    let c = client(&fake, 3);
    let first = tokio::spawn({
        let c = c.clone();
        async move {
            c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.fetch_customers(APP_ID, &ids(&["b"]), &CancellationToken::new())
        .await
        .unwrap();
    first.await.unwrap().unwrap();
    let log = fake.batch_log();
    assert_eq!(log.len(), 3);
    assert!(log[1].0 - log[0].0 >= Duration::from_secs(1));
    assert!(log[2].0 - log[0].0 >= Duration::from_secs(1));
}

#[tokio::test]
async fn exhausted_5xx_retries_give_up_after_max_retries_plus_one_calls() {
    let fake = FakeWeiling::start().await;
    fake.set_fallback(Reply::status(500, None));
    let c = client(&fake, 3);
    let (attempts, last) = gave_up(
        c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
            .await,
    );
    assert_eq!(attempts, 4);
    assert_eq!(fake.batch_calls(), 4);
    assert!(last.contains("HTTP 500"), "{last}");
}

#[tokio::test]
async fn a_final_code_gives_up_at_once() {
    let fake = FakeWeiling::start().await;
    fake.script([Reply::code(1012)]);
    let c = client(&fake, 3);
    match c
        .fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
    {
        Err(EnrichError::Refused {
            code: 1012,
            attempts: 1,
            last,
        }) => assert!(last.contains("code 1012"), "{last}"),
        other => panic!("expected Refused with code 1012, got {other:?}"),
    }
    assert_eq!(fake.batch_calls(), 1);
}

#[tokio::test]
async fn garbage_is_retried_a_little_then_given_up() {
    for (reply, words) in [
        (
            Reply::Raw {
                status: 200,
                body: b"<html>not json".to_vec(),
            },
            "not JSON",
        ),
        (
            Reply::Raw {
                status: 200,
                body: vec![b' '; 5000],
            },
            "too large",
        ),
        (
            Reply::Json {
                status: 200,
                body: json!({"code": 0, "data": {"customer_list": "nope"}}),
                retry_after: None,
            },
            "customer_list",
        ),
    ] {
        let fake = FakeWeiling::start().await;
        fake.set_fallback(reply);
        let c = client(&fake, 6);
        let (attempts, last) = rejected(
            c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
                .await,
        );
        assert_eq!(attempts, 3, "{last}");
        assert_eq!(fake.batch_calls(), 3);
        assert!(last.contains(words), "{last}");
    }
}

#[tokio::test]
async fn code_0_without_a_customer_list_is_garbage_never_every_id_missing() {
    let no_list = Reply::Json {
        status: 200,
        body: json!({"code": 0, "msg": "ok"}),
        retry_after: None,
    };
    let fake = FakeWeiling::start().await;
    fake.script([no_list.clone()]);
    let c = client(&fake, 3);
    let got = c
        .fetch_customers(APP_ID, &ids(&["a", "b"]), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(got.records.len(), 2, "asked again, the answer was whole");
    assert!(got.missing.is_empty());
    assert_eq!(fake.batch_calls(), 2);

    let fake = FakeWeiling::start().await;
    fake.set_fallback(no_list);
    let c = client(&fake, 6);
    let (attempts, last) = rejected(
        c.fetch_customers(APP_ID, &ids(&["a", "b"]), &CancellationToken::new())
            .await,
    );
    assert_eq!(attempts, 3, "retried, then parked: never called missing");
    assert!(last.contains("data.customer_list"), "{last}");
}

fn refusing(fake: &FakeWeiling) {
    fake.set_fallback(Reply::RefuseBatches {
        poison_code: 1001,
        gone_code: 3000,
    });
}

#[tokio::test]
async fn one_poisoned_id_among_100_is_isolated_in_few_calls() {
    let fake = FakeWeiling::start().await;
    refusing(&fake);
    let big = ClientOptions {
        max_body_bytes: 1 << 20,
        ..fast()
    };
    let c = client_with(&settings(&fake.base_url, 3), APP_SECRET, big);
    for position in [0, 37, 50, 99] {
        let before = fake.batch_calls();
        let mut batch: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
        batch[position] = "poison-1".to_owned();
        let got = c
            .fetch_isolating(APP_ID, Entity::Customer, &batch, &CancellationToken::new())
            .await
            .unwrap();
        let calls = fake.batch_calls() - before;
        assert_eq!(got.fetched.records.len(), 99, "position {position}");
        assert!(got.fetched.missing.is_empty());
        assert_eq!(
            got.refused,
            vec![RefusedId {
                id: "poison-1".to_owned(),
                code: 1001,
                detail: got.refused[0].detail.clone(),
            }]
        );
        assert_eq!(got.calls, calls);
        // 2·log2(100) ≈ 13.3 extra calls at most.
        assert!(calls - 1 <= 13, "position {position}: {calls} calls");
    }
}

#[tokio::test]
async fn ids_weiling_does_not_have_become_missing_only_when_refused_alone() {
    let fake = FakeWeiling::start().await;
    refusing(&fake);
    let c = client(&fake, 3);
    let mut batch: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    batch[3] = "gone-a".to_owned();
    batch[20] = "gone-b".to_owned();
    batch[39] = "poison-x".to_owned();
    let got = c
        .fetch_isolating(APP_ID, Entity::Customer, &batch, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(got.fetched.records.len(), 37);
    let mut missing = got.fetched.missing.clone();
    missing.sort();
    assert_eq!(missing, ids(&["gone-a", "gone-b"]));
    assert_eq!(
        got.refused
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["poison-x"]
    );
    let alone: Vec<Vec<String>> = fake
        .batch_log()
        .into_iter()
        .map(|(_, ids, _)| ids)
        .filter(|ids| ids.len() == 1 && ids[0].starts_with("gone"))
        .collect();
    assert_eq!(alone.len(), 2, "each missing id was asked on its own");
}

#[tokio::test]
async fn a_clean_batch_costs_one_call_and_transient_errors_end_the_isolation() {
    let fake = FakeWeiling::start().await;
    let c = client(&fake, 1);
    let got = c
        .fetch_isolating(
            APP_ID,
            Entity::Customer,
            &ids(&["a", "b"]),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!((got.calls, got.fetched.records.len()), (1, 2));

    fake.script([Reply::code(1001)]);
    fake.set_fallback(Reply::status(503, None));
    let err = c
        .fetch_isolating(
            APP_ID,
            Entity::Customer,
            &ids(&["a", "b"]),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EnrichError::GaveUp { .. }), "{err:?}");
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let fake = FakeWeiling::start().await;
    fake.script([Reply::Slow(Duration::from_millis(1500))]);
    let mut s = settings(&fake.base_url, 3);
    s.request_timeout_ms = 300;
    let c = client_with(&s, APP_SECRET, fast());
    let started = Instant::now();
    c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(fake.batch_calls(), 2);
    assert!(started.elapsed() < Duration::from_millis(1400));
}

#[tokio::test]
async fn size_and_app_are_checked_before_any_call() {
    let fake = FakeWeiling::start().await;
    let opts = ClientOptions {
        max_body_bytes: 1 << 20,
        ..fast()
    };
    let c = client_with(&settings(&fake.base_url, 3), APP_SECRET, opts);
    let cancel = CancellationToken::new();
    let many: Vec<String> = (0..101).map(|i| format!("id{i}")).collect();
    assert!(matches!(
        c.fetch_customers(APP_ID, &many, &cancel).await,
        Err(EnrichError::TooManyIds)
    ));
    assert!(matches!(
        c.fetch_customers("wloaother", &ids(&["a"]), &cancel).await,
        Err(EnrichError::UnknownApp)
    ));
    assert_eq!(
        c.fetch_customers(APP_ID, &[], &cancel).await.unwrap(),
        Fetched::default()
    );
    assert_eq!((fake.token_calls(), fake.batch_calls()), (0, 0));
    assert_eq!(c.breaker_state("wloaother"), None);

    // 100 distinct ids plus duplicates is one legal batch.
    let mut hundred: Vec<String> = (0..100).map(|i| format!("id{i}")).collect();
    hundred.extend(hundred.clone());
    let got = c.fetch_customers(APP_ID, &hundred, &cancel).await.unwrap();
    assert_eq!(got.records.len(), 100);
    assert_eq!(fake.batch_log()[0].1.len(), 100);
}

#[tokio::test]
async fn the_breaker_opens_then_a_probe_closes_it() {
    let fake = FakeWeiling::start().await;
    fake.set_fallback(Reply::status(502, None));
    let mut opts = fast();
    opts.breaker_threshold = 2;
    let c = client_with(&settings(&fake.base_url, 1), APP_SECRET, opts);
    gave_up(
        c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
            .await,
    );
    assert_eq!(c.breaker_state(APP_ID), Some(BreakerState::Open));

    fake.set_fallback(Reply::Echo);
    let started = Instant::now();
    c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "waited for the cool-down"
    );
    assert_eq!(c.breaker_state(APP_ID), Some(BreakerState::Closed));
    assert_eq!(fake.batch_calls(), 3);
}

#[tokio::test]
async fn cancellation_ends_a_wait_promptly() {
    let fake = FakeWeiling::start().await;
    fake.set_fallback(Reply::status(503, Some(30)));
    let c = client(&fake, 3);
    let cancel = CancellationToken::new();
    let call = tokio::spawn({
        let (c, cancel) = (c.clone(), cancel.clone());
        async move { c.fetch_customers(APP_ID, &ids(&["a"]), &cancel).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(EnrichError::Cancelled)), "{r:?}");
    assert_eq!(fake.batch_calls(), 1);
}

#[tokio::test]
async fn token_endpoint_outage_is_retried_then_recovers() {
    let fake = FakeWeiling::start().await;
    fake.set_token_status(500);
    let c = client(&fake, 6);
    let call = tokio::spawn({
        let c = c.clone();
        async move {
            c.fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    fake.set_token_status(200);
    call.await.unwrap().unwrap();
    assert!(fake.token_calls() >= 2);
    assert_eq!(fake.batch_calls(), 1);
}

#[tokio::test]
async fn errors_never_show_the_secret_or_a_token() {
    let mut shown = Vec::new();

    // Token endpoint unreachable: its URL carries app_secret.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client_with(
        &settings(&format!("http://127.0.0.1:{port}"), 1),
        APP_SECRET,
        fast(),
    );
    let err = c
        .fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connect failed"), "{err}");
    shown.push(format!("{err} {err:?} {c:?}"));

    // Batch endpoint times out with a token in its URL.
    let fake = FakeWeiling::start().await;
    fake.set_fallback(Reply::Slow(Duration::from_secs(2)));
    let mut s = settings(&fake.base_url, 1);
    s.request_timeout_ms = 150;
    let c = client_with(&s, APP_SECRET, fast());
    let err = c
        .fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap_err();
    shown.push(format!("{err} {err:?}"));

    // Refused token after a refresh, and wrong credentials.
    let fake = FakeWeiling::start().await;
    fake.set_fallback(Reply::code(403));
    let c = client(&fake, 1);
    let err = c
        .fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap_err();
    shown.push(format!("{err} {err:?}"));
    let c = client_with(&settings(&fake.base_url, 1), "S3cretWrongValue", fast());
    let err = c
        .fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("501"), "{text}");
    assert!(!text.contains("S3cretWrongValue"), "{text}");
    shown.push(text);

    for text in shown {
        assert_no_secrets(&text);
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn logs_never_show_the_secret_a_token_or_customer_data() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .finish();
    // With a single registered dispatcher, tracing-core computes a callsite's interest from the
    // registering thread's default only, so a parallel test hitting a callsite first would cache
    // "never" for it. A second live dispatcher makes it consult every registered one.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();

    let fake = FakeWeiling::start().await;
    fake.script([
        Reply::code(403),
        Reply::code(1015),
        Reply::status(503, None),
        Reply::Raw {
            status: 200,
            body: b"garbage".to_vec(),
        },
    ]);
    let c = client(&fake, 6);
    c.fetch_customers(APP_ID, &ids(&["a", "missing-x"]), &CancellationToken::new())
        .await
        .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = client_with(
        &settings(&format!("http://127.0.0.1:{port}"), 1),
        APP_SECRET,
        fast(),
    );
    let _ = down
        .fetch_customers(APP_ID, &ids(&["a"]), &CancellationToken::new())
        .await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("weiling batch answer"), "{logs}");
    assert!(logs.contains("refreshing once"), "{logs}");
    assert!(logs.contains("backing off"), "{logs}");
    assert_no_secrets(&logs);
    assert!(!logs.contains("name of a"), "customer data leaked: {logs}");
    assert!(!logs.contains("missing-x"), "customer ids leaked: {logs}");
}

#[test]
fn user_agent_names_the_relay_and_a_sanitised_instance() {
    let base = concat!("weiling-relay/", env!("CARGO_PKG_VERSION"));
    assert_eq!(user_agent(None), base);
    assert_eq!(user_agent(Some("  ")), base);
    assert_eq!(user_agent(Some("pod-7")), format!("{base} (pod-7)"));
    assert_eq!(user_agent(Some("a b\r\n")), format!("{base} (a_b)"));
}

#[test]
fn quota_refuses_zero_and_keeps_a_small_burst() {
    assert!(matches!(quota(0), Err(EnrichError::Config(_))));
    let q = quota(500).unwrap();
    assert_eq!(q.burst_size().get(), 5);
    assert_eq!(q.replenish_interval(), Duration::from_millis(120));
    assert_eq!(quota(2).unwrap().burst_size().get(), 2);
}

#[test]
fn redact_scrubs_every_given_secret() {
    assert_eq!(
        redact("a TOK b SEC".to_owned(), &["TOK", "SEC", ""]),
        "a <redacted> b <redacted>"
    );
}
