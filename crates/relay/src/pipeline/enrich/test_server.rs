//! Test-only fake of Weiling's token and customer/batch endpoints, scriptable per test.

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use tokio::time::Instant;

pub const APP_ID: &str = "wloa0123456789abcdef0123456789abcdef";
pub const APP_SECRET: &str = "S3cretAppValueXyz";
/// Issued tokens are this prefix plus a counter, so tests can search any output for it.
pub const TOKEN_PREFIX: &str = "TokValueQq";

/// One scripted answer of the batch endpoint.
#[derive(Debug, Clone)]
pub enum Reply {
    /// code 0 with a record for every requested id that does not start with "missing".
    Echo,
    Json {
        status: u16,
        body: Value,
        retry_after: Option<u64>,
    },
    Raw {
        status: u16,
        body: Vec<u8>,
    },
    /// Answers `Echo` after this delay.
    Slow(Duration),
    /// Refuses the whole batch with `code` when it holds an id starting with "poison" (code
    /// `poison_code`) or "gone" (code `gone_code`), else `Echo`: Weiling's whole-batch refusals.
    RefuseBatches {
        poison_code: i64,
        gone_code: i64,
    },
}

impl Reply {
    pub fn code(code: i64) -> Self {
        Self::Json {
            status: 200,
            body: json!({"code": code, "msg": "scripted"}),
            retry_after: None,
        }
    }

    pub fn status(status: u16, retry_after: Option<u64>) -> Self {
        Self::Json {
            status,
            body: json!({"msg": "scripted"}),
            retry_after,
        }
    }
}

#[derive(Debug)]
pub struct State {
    token_calls: AtomicUsize,
    batch_calls: AtomicUsize,
    batch_log: Mutex<Vec<(Instant, Vec<String>, String)>>,
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Reply>,
    token_delay: Mutex<Duration>,
    token_status: Mutex<u16>,
    expires_in: Mutex<Value>,
}

pub struct FakeWeiling {
    pub base_url: String,
    state: Arc<State>,
}

impl FakeWeiling {
    pub async fn start() -> Self {
        let state = Arc::new(State {
            token_calls: AtomicUsize::new(0),
            batch_calls: AtomicUsize::new(0),
            batch_log: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            fallback: Mutex::new(Reply::Echo),
            token_delay: Mutex::new(Duration::ZERO),
            token_status: Mutex::new(200),
            expires_in: Mutex::new(json!(7200)),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(1 << 20))
                .route(
                    "/openapi/auth/access_token/get",
                    web::get().to(token_endpoint),
                )
                .route("/openapi/customer/batch", web::post().to(batch_endpoint))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Self { base_url, state }
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// What the batch endpoint answers once the script is used up.
    pub fn set_fallback(&self, reply: Reply) {
        *self.state.fallback.lock().unwrap() = reply;
    }

    pub fn set_token_delay(&self, d: Duration) {
        *self.state.token_delay.lock().unwrap() = d;
    }

    pub fn set_token_status(&self, status: u16) {
        *self.state.token_status.lock().unwrap() = status;
    }

    pub fn set_expires_in(&self, v: Value) {
        *self.state.expires_in.lock().unwrap() = v;
    }

    pub fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    pub fn batch_calls(&self) -> usize {
        self.state.batch_calls.load(Ordering::SeqCst)
    }

    /// (arrival time, requested ids, access_token used) of every batch call.
    pub fn batch_log(&self) -> Vec<(Instant, Vec<String>, String)> {
        self.state.batch_log.lock().unwrap().clone()
    }
}

async fn token_endpoint(
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let n = state.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = *state.token_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = *state.token_status.lock().unwrap();
    if status != 200 {
        return HttpResponse::build(StatusCode::from_u16(status).unwrap()).finish();
    }
    if query.get("app_id").map(String::as_str) != Some(APP_ID)
        || query.get("app_secret").map(String::as_str) != Some(APP_SECRET)
    {
        return HttpResponse::Ok().json(json!({"code": 501, "msg": "app_id或app_secret不合法"}));
    }
    let expires_in = state.expires_in.lock().unwrap().clone();
    HttpResponse::Ok().json(json!({
        "code": 0,
        "msg": "ok",
        "data": {"access_token": format!("{TOKEN_PREFIX}{n}"), "expires_in": expires_in}
    }))
}

async fn batch_endpoint(
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
    body: web::Json<Value>,
) -> HttpResponse {
    state.batch_calls.fetch_add(1, Ordering::SeqCst);
    let ids: Vec<String> = body
        .get("customer_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let token = query.get("access_token").cloned().unwrap_or_default();
    state
        .batch_log
        .lock()
        .unwrap()
        .push((Instant::now(), ids.clone(), token));
    let reply = {
        let next = state.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| state.fallback.lock().unwrap().clone())
    };
    match reply {
        Reply::Echo => echo(&ids),
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            echo(&ids)
        }
        Reply::Json {
            status,
            body,
            retry_after,
        } => {
            let mut resp = HttpResponse::build(StatusCode::from_u16(status).unwrap());
            if let Some(s) = retry_after {
                resp.insert_header(("Retry-After", s.to_string()));
            }
            resp.json(body)
        }
        Reply::Raw { status, body } => {
            HttpResponse::build(StatusCode::from_u16(status).unwrap()).body(body)
        }
        Reply::RefuseBatches {
            poison_code,
            gone_code,
        } => {
            let refusal = if ids.iter().any(|id| id.starts_with("poison")) {
                Some(poison_code)
            } else if ids.iter().any(|id| id.starts_with("gone")) {
                Some(gone_code)
            } else {
                None
            };
            match refusal {
                Some(code) => HttpResponse::Ok().json(json!({"code": code, "msg": "refused"})),
                None => echo(&ids),
            }
        }
    }
}

fn echo(ids: &[String]) -> HttpResponse {
    let list: Vec<Value> = ids
        .iter()
        .filter(|id| !id.starts_with("missing"))
        .map(|id| json!({"customer_id": id, "name": format!("name of {id}"), "lost_state": false}))
        .collect();
    HttpResponse::Ok().json(json!({"code": 0, "msg": "ok", "data": {"customer_list": list}}))
}
