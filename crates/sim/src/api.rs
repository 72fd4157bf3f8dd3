//! The simulated OpenAPI endpoints: the token call, `customer/batch` and `contact/batch`, with Weiling's
//! envelope and codes.

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use rand::Rng;
use serde_json::{Value, json};

use super::BatchCall;
use super::state::{Shared, State};
use weiling_proto::entity::Entity;

pub const TOKEN_PATH: &str = "/openapi/auth/access_token/get";
pub const BATCH_PATH: &str = "/openapi/customer/batch";
pub const CONTACT_BATCH_PATH: &str = "/openapi/contact/batch";
/// `BatchCall::code` of an answer that carried no Weiling envelope (an HTTP-level fault or garbage).
pub const NO_ENVELOPE: i64 = -1;
/// Far above any real batch body, so an oversized id list reaches the 1012 check instead of a 413.
const MAX_BODY: usize = 4 << 20;

/// The error answers, each carried inside HTTP 200 as Weiling does; the message is the envelope's `msg`.
#[derive(Debug, Clone, thiserror::Error)]
enum ApiError {
    #[error("缺少参数")]
    MissingParameter,
    #[error("参数不合法")]
    InvalidParameter,
    #[error("请求方式不支持")]
    MethodNotSupported,
    #[error("请求体解析失败")]
    Unparseable,
    #[error("数据超出限制")]
    OverLimit,
    #[error("参数格式或值错误")]
    BadFormat,
    #[error("app_id或app_secret不合法")]
    BadCredentials,
    #[error("access_token无效或已过期")]
    Auth(i64),
    #[error("调用频率超出限制,请稍后再试")]
    RateLimited(i64),
    #[error("{}", refusal_message(*.0))]
    Refused(i64),
}

impl ApiError {
    fn code(&self) -> i64 {
        match self {
            Self::MissingParameter => 1000,
            Self::InvalidParameter => 1001,
            Self::MethodNotSupported => 1010,
            Self::Unparseable => 1011,
            Self::OverLimit => 1012,
            Self::BadFormat => 1013,
            Self::BadCredentials => 501,
            Self::Auth(code) | Self::RateLimited(code) | Self::Refused(code) => *code,
        }
    }

    fn envelope(&self) -> Value {
        json!({ "code": self.code(), "msg": self.to_string(), "data": null })
    }
}

/// Weiling's own words for the refusal codes of its global code table.
fn refusal_message(code: i64) -> &'static str {
    match code {
        3000 => "客户不存在",
        1003 => "数据不存在",
        _ => "不合法的参数",
    }
}

pub fn routes(shared: web::Data<Shared>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(shared)
            .app_data(web::PayloadConfig::new(MAX_BODY))
            // Every method reaches the handlers, which answer a wrong one with 1010 like the real gateway.
            .route(TOKEN_PATH, web::route().to(token))
            .route(BATCH_PATH, web::route().to(customer_batch))
            .route(CONTACT_BATCH_PATH, web::route().to(contact_batch));
    }
}

fn envelope_response(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json;charset=UTF-8")
        .body(body.to_string())
}

fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

async fn token(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let mut state = shared.lock();
    state.token_calls += 1;
    if req.method() != Method::GET {
        return envelope_response(StatusCode::OK, &ApiError::MethodNotSupported.envelope());
    }
    if state.faults.token_endpoint_down {
        return HttpResponse::InternalServerError()
            .content_type("text/html")
            .body("<html><body><h1>500 Internal Server Error</h1></body></html>");
    }
    let (Some(app_id), Some(secret)) =
        (query_param(&req, "app_id"), query_param(&req, "app_secret"))
    else {
        return envelope_response(StatusCode::OK, &ApiError::InvalidParameter.envelope());
    };
    if state.apps.get(&app_id) != Some(&secret) {
        return envelope_response(StatusCode::OK, &ApiError::BadCredentials.envelope());
    }
    let access_token = state.issue_token(&app_id, Instant::now());
    let body = json!({
        "code": 0,
        "msg": "ok",
        "data": { "access_token": access_token, "expires_in": state.config.token_ttl.as_secs() },
    });
    envelope_response(StatusCode::OK, &body)
}

/// What one batch call was answered; the handler turns it into a response and a `BatchCall`.
enum Answer {
    /// The JSON text of each record, in request order.
    Records(Vec<String>),
    /// `code` 0 with an empty `data` object.
    NoList,
    Error(ApiError),
    Http5xx(StatusCode),
    TooMany(u64),
    Garbage,
}

async fn customer_batch(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    batch(Entity::Customer, req, body, shared).await
}

/// 19.2: the same gateway, token, rate-limit and cap rules as `customer/batch`, over contacts.
async fn contact_batch(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    batch(Entity::Contact, req, body, shared).await
}

async fn batch(
    entity: Entity,
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let at = SystemTime::now();
    let latency = shared.lock().faults.latency;
    if !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let parsed = parse_ids(&body, entity);
    let mut state = shared.lock();
    let (app_id, answer) = decide(&mut state, entity, &req, &parsed);
    let (response, code) = match answer {
        Answer::Records(records) => {
            // Assembled as text so a record's bytes reach the client exactly as stored.
            let body = format!(
                r#"{{"code":0,"msg":"success","data":{{"{}":[{}]}}}}"#,
                entity.list_field(),
                records.join(",")
            );
            let response = HttpResponse::Ok()
                .content_type("application/json;charset=UTF-8")
                .body(body);
            (response, 0)
        }
        Answer::NoList => {
            let body = json!({ "code": 0, "msg": "success", "data": {} });
            (envelope_response(StatusCode::OK, &body), 0)
        }
        Answer::Error(error) => (
            envelope_response(StatusCode::OK, &error.envelope()),
            error.code(),
        ),
        Answer::Http5xx(status) => (
            HttpResponse::build(status)
                .content_type("text/html")
                .body(format!("<html><body><h1>{status}</h1></body></html>")),
            NO_ENVELOPE,
        ),
        Answer::TooMany(seconds) => (
            HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, seconds.to_string()))
                .content_type("text/plain")
                .body("Too Many Requests"),
            NO_ENVELOPE,
        ),
        // Cut mid-record, as a proxy that drops the connection would leave it.
        Answer::Garbage => (
            HttpResponse::Ok()
                .content_type("application/json;charset=UTF-8")
                .body(format!(
                    r#"{{"code":0,"msg":"success","data":{{"{}":[{{"{}":"#,
                    entity.list_field(),
                    entity.id_field()
                )),
            NO_ENVELOPE,
        ),
    };
    state.batch_calls.push(BatchCall {
        entity,
        app_id,
        ids: parsed.unwrap_or_default(),
        code,
        http_status: response.status().as_u16(),
        user_agent,
        at,
        answered_at: SystemTime::now(),
    });
    response
}

/// The order of checks follows a gateway in front of a service: HTTP-level faults first, then the token,
/// then the rate limit (every authenticated call counts, even one that fails validation), then the body.
fn decide(
    state: &mut State,
    entity: Entity,
    req: &HttpRequest,
    parsed: &Result<Vec<String>, ApiError>,
) -> (Option<String>, Answer) {
    let now = Instant::now();
    let token = query_param(req, "access_token");
    let (app_id, token_valid) = match token.as_deref().and_then(|t| state.token_app(t, now)) {
        Some((app, valid)) => (Some(app.to_owned()), valid),
        None => (None, false),
    };
    let faults = &state.faults;
    if faults.ratio_5xx > 0.0 && rand::rng().random_bool(faults.ratio_5xx.min(1.0)) {
        let status = match rand::rng().random_range(0..3) {
            0 => StatusCode::INTERNAL_SERVER_ERROR,
            1 => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        return (app_id, Answer::Http5xx(status));
    }
    if let Some(seconds) = faults.http_429_retry_after {
        return (app_id, Answer::TooMany(seconds));
    }
    if faults.garbage {
        return (app_id, Answer::Garbage);
    }
    if req.method() != Method::POST {
        return (app_id, Answer::Error(ApiError::MethodNotSupported));
    }
    let Some(app) = app_id.as_deref().filter(|_| token_valid) else {
        let code = state.config.auth_error_code;
        return (app_id, Answer::Error(ApiError::Auth(code)));
    };
    if state.faults.exhausted_apps.contains(app) || !state.admit(app, entity.batch_endpoint(), now)
    {
        let code = state.config.rate_limit_code;
        return (app_id, Answer::Error(ApiError::RateLimited(code)));
    }
    let ids = match parsed {
        Ok(ids) => ids,
        Err(error) => return (app_id, Answer::Error(error.clone())),
    };
    if ids.is_empty() {
        return (app_id, Answer::Error(ApiError::MissingParameter));
    }
    if ids.len() > state.config.batch_cap {
        return (app_id, Answer::Error(ApiError::OverLimit));
    }
    if state.quirks.no_list {
        return (app_id, Answer::NoList);
    }
    let quirks = &state.quirks;
    let people = state.people.get(&(entity, app.to_owned()));
    let raw = |id: &str| {
        quirks
            .raw_records
            .get(&(entity, app.to_owned(), id.to_owned()))
    };
    let known: HashSet<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| raw(id).is_some() || people.is_some_and(|p| p.contains_key(*id)))
        .collect();
    if let Some(code) = quirks.refusal(ids, &known) {
        return (app_id, Answer::Error(ApiError::Refused(code)));
    }
    let mut seen = HashSet::new();
    let records = ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .filter_map(|id| match raw(id) {
            Some(text) => Some(text.clone()),
            None => people
                .and_then(|p| p.get(id))
                .map(|p| record_text(&p.record, entity, quirks.numeric_ids)),
        })
        .collect();
    (app_id, Answer::Records(records))
}

/// A stored record as JSON text; with `numeric_ids`, an id of digits is written as a number.
fn record_text(record: &Value, entity: Entity, numeric_ids: bool) -> String {
    let numeric = record
        .get(entity.id_field())
        .and_then(Value::as_str)
        .filter(|_| numeric_ids)
        .and_then(|id| id.parse::<u64>().ok());
    match numeric {
        Some(number) => {
            let mut record = record.clone();
            if let Some(fields) = record.as_object_mut() {
                fields.insert(entity.id_field().to_owned(), json!(number));
            }
            record.to_string()
        }
        None => record.to_string(),
    }
}

/// `{"customer_ids":[…]}` (or `contact_ids`): not a JSON object → 1011, no id list → 1000, not a list
/// of strings → 1013.
fn parse_ids(body: &[u8], entity: Entity) -> Result<Vec<String>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::Unparseable)?;
    let object = value.as_object().ok_or(ApiError::Unparseable)?;
    let list = object
        .get(entity.ids_field())
        .ok_or(ApiError::MissingParameter)?
        .as_array()
        .ok_or(ApiError::BadFormat)?;
    list.iter()
        .map(|id| id.as_str().map(str::to_owned).ok_or(ApiError::BadFormat))
        .collect()
}
