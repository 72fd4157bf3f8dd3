//! The simulated OpenAPI over real HTTP: tokens, batch answers, error codes and every fault switch.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

const APP: &str = "wloa89d1c1a0de7484347e8718b52faff851";
const SECRET: &str = "s3cret";

struct Running {
    sim: Simulator,
    base: String,
    client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

impl Running {
    async fn start(config: SimConfig) -> Self {
        let sim = Simulator::new(config);
        sim.add_app(APP, SECRET);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = sim.serve(listener).unwrap();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            sim,
            base,
            client: reqwest::Client::new(),
            handle,
        }
    }

    async fn get_token_raw(&self, query: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{TOKEN_PATH}?{query}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn token(&self) -> String {
        let (status, body) = self
            .get_token_raw(&format!("app_id={APP}&app_secret={SECRET}"))
            .await;
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], 0, "{body}");
        body["data"]["access_token"].as_str().unwrap().to_owned()
    }

    async fn batch_raw(&self, token: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(format!("{}{BATCH_PATH}?access_token={token}", self.base))
            .header("content-type", "application/json")
            .header("user-agent", "sim-test/1")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn batch(&self, token: &str, ids: &[&str]) -> Value {
        let response = self
            .batch_raw(
                token,
                json!({ "customer_ids": ids }).to_string().into_bytes(),
            )
            .await;
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.unwrap()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

#[tokio::test]
async fn issues_tokens_and_refuses_bad_credentials() {
    let sim = Running::start(SimConfig::default()).await;
    let (status, body) = sim
        .get_token_raw(&format!("app_id={APP}&app_secret={SECRET}"))
        .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], 0);
    assert_eq!(body["msg"], "ok");
    assert_eq!(body["data"]["expires_in"], 7200);
    assert!(body["data"]["access_token"].as_str().unwrap().len() >= 64);

    let (status, body) = sim
        .get_token_raw(&format!("app_id={APP}&app_secret=wrong"))
        .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"code": 501, "msg": "app_id或app_secret不合法", "data": null})
    );

    let (_, body) = sim
        .get_token_raw(&format!("appid={APP}&app_secret={SECRET}"))
        .await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], 1001);

    let post = sim
        .client
        .post(format!(
            "{}{TOKEN_PATH}?app_id={APP}&app_secret={SECRET}",
            sim.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 200);
    assert_eq!(post.json::<Value>().await.unwrap()["code"], 1010);

    sim.sim.set_token_endpoint_down(true);
    let (status, _) = sim
        .get_token_raw(&format!("app_id={APP}&app_secret={SECRET}"))
        .await;
    assert_eq!(status, 500);
    assert_eq!(sim.sim.token_calls(), 5);
    sim.stop().await;
}

#[tokio::test]
async fn batch_returns_known_records_once_and_leaves_unknown_ids_out() {
    let sim = Running::start(SimConfig::default()).await;
    let a = sim.sim.create_customer(APP, "cust-a");
    let b = sim.sim.create_customer(APP, "cust-b");
    sim.sim.create_customer("wloa-other", "cust-c");
    let token = sim.token().await;

    let body = sim
        .batch(&token, &["cust-b", "unknown", "cust-a", "cust-b", "cust-c"])
        .await;
    assert_eq!(body["code"], 0);
    assert_eq!(body["msg"], "success");
    assert_eq!(body["data"]["customer_list"], json!([b, a]));

    let calls = sim.sim.batch_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.app_id.as_deref(), Some(APP));
    assert_eq!(
        call.ids,
        ["cust-b", "unknown", "cust-a", "cust-b", "cust-c"]
    );
    assert_eq!((call.code, call.http_status), (0, 200));
    assert_eq!(call.user_agent.as_deref(), Some("sim-test/1"));
    sim.stop().await;
}

#[tokio::test]
async fn contact_batch_answers_contact_list_with_the_same_rules() {
    let sim = Running::start(SimConfig::default()).await;
    let k1 = sim.sim.create(Entity::Contact, APP, "contact-1");
    sim.sim.create_customer(APP, "contact-2");
    let token = sim.token().await;
    let post = |body: Value| {
        sim.client
            .post(format!(
                "{}{CONTACT_BATCH_PATH}?access_token={token}",
                sim.base
            ))
            .json(&body)
            .send()
    };

    let body: Value = post(json!({"contact_ids": ["contact-1", "contact-2"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["code"], 0);
    assert_eq!(
        body["data"]["contact_list"],
        json!([k1]),
        "a customer id is not a contact id"
    );
    assert!(body["data"].get("customer_list").is_none());

    let wrong_field: Value = post(json!({"customer_ids": ["contact-1"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wrong_field["code"], 1000);
    let many: Vec<String> = (0..101).map(|i| format!("k-{i}")).collect();
    let over: Value = post(json!({ "contact_ids": many }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over["code"], 1012);

    let changed = sim.sim.change(Entity::Contact, APP, "contact-1");
    assert_ne!(changed, k1);
    assert_eq!(sim.sim.records(Entity::Contact, APP), vec![changed]);
    let calls = sim.sim.batch_calls();
    assert!(calls.iter().all(|c| c.entity == Entity::Contact));
    assert_eq!(calls[0].ids, ["contact-1", "contact-2"]);
    sim.stop().await;
}

#[tokio::test]
async fn batch_validates_size_body_and_method() {
    let sim = Running::start(SimConfig::default()).await;
    let token = sim.token().await;
    let many: Vec<String> = (0..101).map(|i| format!("id-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(sim.batch(&token, &many).await["code"], 1012);
    assert_eq!(sim.batch(&token, &many[..100]).await["code"], 0);
    assert_eq!(sim.batch(&token, &[]).await["code"], 1000);

    let unparseable = sim.batch_raw(&token, b"customer_ids=1".to_vec()).await;
    assert_eq!(unparseable.json::<Value>().await.unwrap()["code"], 1011);
    let not_strings = sim
        .batch_raw(&token, br#"{"customer_ids":[1,2]}"#.to_vec())
        .await;
    assert_eq!(not_strings.json::<Value>().await.unwrap()["code"], 1013);

    let get = sim
        .client
        .get(format!("{}{BATCH_PATH}?access_token={token}", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(get.json::<Value>().await.unwrap()["code"], 1010);

    let codes: Vec<i64> = sim.sim.batch_calls().iter().map(|c| c.code).collect();
    assert_eq!(codes, [1012, 0, 1000, 1011, 1013, 1010]);
    sim.stop().await;
}

#[tokio::test]
async fn tokens_fail_with_the_auth_code_once_expired_or_unknown() {
    let sim = Running::start(SimConfig::default()).await;
    sim.sim.create_customer(APP, "c1");
    let token = sim.token().await;
    assert_eq!(sim.batch(&token, &["c1"]).await["code"], 0);

    sim.sim.expire_tokens();
    let body = sim.batch(&token, &["c1"]).await;
    assert_eq!(
        body,
        json!({"code": 403, "msg": "access_token无效或已过期", "data": null})
    );
    assert_eq!(sim.batch("no-such-token", &["c1"]).await["code"], 403);
    let missing = sim
        .client
        .post(format!("{}{BATCH_PATH}", sim.base))
        .body(r#"{"customer_ids":["c1"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], 403);

    let fresh = sim.token().await;
    assert_eq!(sim.batch(&fresh, &["c1"]).await["code"], 0);
    let apps: Vec<Option<String>> = sim
        .sim
        .batch_calls()
        .into_iter()
        .map(|c| c.app_id)
        .collect();
    let app = Some(APP.to_owned());
    assert_eq!(apps, [app.clone(), app.clone(), None, None, app]);
    sim.stop().await;
}

#[tokio::test]
async fn reissue_can_be_made_to_revoke_the_old_token() {
    let sim = Running::start(SimConfig {
        reissue_invalidates_old: true,
        token_ttl: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let old = sim.token().await;
    let new = sim.token().await;
    assert_eq!(sim.batch(&old, &["x"]).await["code"], 403);
    assert_eq!(sim.batch(&new, &["x"]).await["code"], 0);
    sim.stop().await;
}

#[tokio::test]
async fn the_rate_limit_answers_its_code_inside_http_200() {
    assert_eq!(
        SimConfig::default().rate_limit_code,
        1009,
        "接口调用超过频率限制 in Weiling's code table"
    );
    let sim = Running::start(SimConfig::default()).await;
    sim.sim.set_rate_limit_per_minute(3);
    let token = sim.token().await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(sim.batch(&token, &["x"]).await["code"].as_i64().unwrap());
    }
    assert_eq!(codes, [0, 0, 0, 1009, 1009]);
    let body = sim.batch(&token, &["x"]).await;
    assert_eq!(body["msg"], "调用频率超出限制,请稍后再试");
    sim.stop().await;
}

#[tokio::test]
async fn http_faults_switch_on_and_off() {
    let sim = Running::start(SimConfig::default()).await;
    sim.sim.create_customer(APP, "c1");
    let token = sim.token().await;
    let body = || json!({ "customer_ids": ["c1"] }).to_string().into_bytes();

    sim.sim.set_fault_5xx_ratio(1.0);
    for _ in 0..6 {
        let status = sim.batch_raw(&token, body()).await.status().as_u16();
        assert!(matches!(status, 500 | 502 | 503), "{status}");
    }
    sim.sim.set_fault_5xx_ratio(0.0);

    sim.sim.set_garbage(true);
    let garbage = sim.batch_raw(&token, body()).await;
    assert_eq!(garbage.status().as_u16(), 200);
    let text = garbage.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
    sim.sim.set_garbage(false);

    sim.sim.set_http_429_retry_after(Some(7));
    let limited = sim.batch_raw(&token, body()).await;
    assert_eq!(limited.status().as_u16(), 429);
    assert_eq!(
        limited
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    sim.sim.set_http_429_retry_after(None);

    sim.sim.set_latency(Duration::from_millis(150));
    let started = std::time::Instant::now();
    assert_eq!(sim.batch(&token, &["c1"]).await["code"], 0);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let calls = sim.sim.batch_calls();
    assert_eq!(calls.len(), 9);
    assert!(calls[..6].iter().all(|c| c.code == NO_ENVELOPE));
    let tail: Vec<(i64, u16)> = calls[6..].iter().map(|c| (c.code, c.http_status)).collect();
    assert_eq!(tail, [(NO_ENVELOPE, 200), (NO_ENVELOPE, 429), (0, 200)]);
    sim.stop().await;
}

#[tokio::test]
async fn change_customer_edits_content_and_raises_the_revision() {
    let sim = Simulator::new(SimConfig::default());
    let first = sim.create_customer(APP, "c1");
    assert_eq!(
        sim.create_customer(APP, "c1"),
        first,
        "create is idempotent"
    );
    assert_eq!(revision(&first), Some(0));
    let mut previous = first.clone();
    for n in 1..=5 {
        let next = sim.change_customer(APP, "c1");
        assert_ne!(next, previous);
        assert_eq!(revision(&next), Some(n));
        assert_eq!(next["customer_id"], "c1");
        assert_eq!(
            next["follow_users"][0]["create_time"],
            first["follow_users"][0]["create_time"]
        );
        previous = next;
    }
    assert_eq!(sim.customer(APP, "c1"), Some(previous));
    assert_eq!(sim.customer(APP, "c2"), None);
    sim.create_customer(APP, "c2");
    let ids: Vec<Value> = sim
        .customers(APP)
        .into_iter()
        .map(|c| c["customer_id"].clone())
        .collect();
    assert_eq!(ids, [json!("c1"), json!("c2")]);

    let contact = sim.create(Entity::Contact, APP, "k1");
    let changed = sim.change(Entity::Contact, APP, "k1");
    assert!(contact_revision(&changed) > contact_revision(&contact));
}

#[tokio::test]
async fn records_reach_the_wire_with_exactly_the_documented_keys() {
    let sim = Running::start(SimConfig::default()).await;
    sim.sim.create_customer(APP, "c1");
    sim.sim.change_customer(APP, "c1");
    let token = sim.token().await;
    let body = sim.batch(&token, &["c1"]).await;
    let record = &body["data"]["customer_list"][0];
    let keys =
        |value: &Value| -> Vec<String> { value.as_object().unwrap().keys().cloned().collect() };
    // In the seed page's order, as Weiling writes them.
    assert_eq!(keys(record), RECORD_FIELDS.to_vec());
    assert_eq!(
        keys(&record["follow_users"][0]),
        FOLLOW_USER_FIELDS.to_vec()
    );
    assert_eq!(revision(record), Some(1));
    sim.stop().await;
}
