//! Stage 2: proves a callback is authentic (signature) and reads it (AES), before anything is stored.
//!
//! The only ways out are a [`VerifiedEvent`] (which `persist` stores in the inbox), an
//! [`AuthenticUndecodable`] (which can only go to the dead-letter queue), or a [`Rejection`].

pub mod apps;
pub mod fuzzing;
pub mod replay;

// The scheme itself is Weiling's protocol, shared with the simulator; this stage applies it.
pub use weiling_proto::callback::{cipher, keys, query, seal, signature};
pub use weiling_proto::unix_ms;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use apps::Apps;
pub use weiling_proto::callback::{AppKeys, CallbackQuery, OpenError, QueryError};

/// Why a request is refused before anything is stored. The HTTP edge maps these to 400 and 401 with
/// a generic body, so a caller never learns which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("not authentic: {0}")]
    Unauthorized(&'static str),
}

impl From<QueryError> for Rejection {
    fn from(error: QueryError) -> Self {
        Self::BadRequest(error.0)
    }
}

impl Rejection {
    /// A bounded label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadRequest(r) | Self::Unauthorized(r) => r,
        }
    }
}

/// Why an authentic callback could not be turned into an event (the dead-letter `x-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    Decrypt,
    ReceiveId,
    Json,
}

impl DeadLetterReason {
    pub const ALL: [Self; 3] = [Self::Decrypt, Self::ReceiveId, Self::Json];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decrypt => "decrypt",
            Self::ReceiveId => "receive_id",
            Self::Json => "json",
        }
    }
}

/// The POST body Weiling sends.
#[derive(Debug, Deserialize)]
struct Envelope {
    to_app: String,
    encrypt_msg: String,
}

/// A callback whose signature verified, whose plaintext decrypted with the app's key, whose
/// receive_id matched, and whose JSON has a usable header. Only this module can build one.
#[derive(Debug)]
pub struct VerifiedEvent {
    app_id: String,
    event_type: String,
    body: Vec<u8>,
    received_at_ms: u64,
    sent_at_ms: Option<u64>,
    message_id: String,
    replay_key: ReplayKey,
}

impl VerifiedEvent {
    pub fn app_id(&self) -> &str {
        &self.app_id
    }
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The decrypted event JSON exactly as Weiling sent it.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    pub fn received_at_ms(&self) -> u64 {
        self.received_at_ms
    }
    /// The header's own time (`time_stamp`, or `timestamp` on some of Weiling's pages; a 13-digit
    /// ms string or number), when it has a readable one.
    pub fn sent_at_ms(&self) -> Option<u64> {
        self.sent_at_ms
    }
    /// Hex SHA-256 of app id and body: a sender's retry of the same event carries the same id, so
    /// consumers of raw events can deduplicate.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

/// An authentic callback (its signature verified) that could not be decrypted or parsed. It goes to
/// the dead-letter queue, never away: after a key or mapping fix it can be replayed.
#[derive(Debug)]
pub struct AuthenticUndecodable {
    app_id: String,
    reason: DeadLetterReason,
    detail: &'static str,
    body: Vec<u8>,
    query: CallbackQuery,
    received_at_ms: u64,
    replay_key: ReplayKey,
}

impl AuthenticUndecodable {
    pub fn app_id(&self) -> &str {
        &self.app_id
    }
    pub fn reason(&self) -> DeadLetterReason {
        self.reason
    }
    /// A fixed description of the failed check; never contains payload bytes.
    pub fn detail(&self) -> &'static str {
        self.detail
    }
    /// The ciphertext envelope (decrypt, receive_id) or the decrypted text (json).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    pub fn query(&self) -> &CallbackQuery {
        &self.query
    }
    pub fn received_at_ms(&self) -> u64 {
        self.received_at_ms
    }
}

/// A POST callback after verification.
#[derive(Debug)]
pub enum Verified {
    Event(VerifiedEvent),
    Undecodable(AuthenticUndecodable),
}

impl Verified {
    pub fn app_id(&self) -> &str {
        match self {
            Self::Event(e) => e.app_id(),
            Self::Undecodable(u) => u.app_id(),
        }
    }

    /// What makes this callback the same callback to the replay cache.
    pub fn replay_key(&self) -> &ReplayKey {
        match self {
            Self::Event(e) => &e.replay_key,
            Self::Undecodable(u) => &u.replay_key,
        }
    }
}

/// The app and a digest of the ciphertext: the only parts of a callback its sender cannot vary
/// without the Token. The signature's letter case, and digits moved between a numeric nonce and
/// the timestamp, leave the signature valid, so neither may tell two callbacks apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 32]);

impl ReplayKey {
    pub fn new(app_id: &str, content: &[u8]) -> Self {
        Self(
            Sha256::new()
                .chain_update(app_id.as_bytes())
                .chain_update([0u8])
                .chain_update(content)
                .finalize()
                .into(),
        )
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Checks callbacks against the configured apps. Pure apart from the clock, which is passed in.
pub struct Verifier {
    apps: Apps,
    timestamp_tolerance_s: u64,
}

impl Verifier {
    pub fn new(apps: Apps, timestamp_tolerance_s: u64) -> Self {
        Self {
            apps,
            timestamp_tolerance_s,
        }
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// Verifies a POST callback. `path_app` is the `{app_id}` of `/weiling/callback/{app_id}`.
    pub fn verify_post(
        &self,
        query: &CallbackQuery,
        body: &[u8],
        path_app: Option<&str>,
        now: SystemTime,
    ) -> Result<Verified, Rejection> {
        let envelope = parse_envelope(body)?;
        if path_app.is_some_and(|p| p != envelope.to_app) {
            return Err(Rejection::Unauthorized("path app differs from to_app"));
        }
        self.check_timestamp(&query.timestamp, now)?;
        self.open_envelope(query, &envelope, body, unix_ms(now))
    }

    /// Verifies a dead letter again (`dlq replay`): the same signature and decryption checks as
    /// [`Self::verify_post`] with the current Tokens and keys, but no timestamp tolerance, since the
    /// letter is old by nature and its signature still proves who sent it. The replay cache is not
    /// consulted either: the letter was admitted once already. `app_id` is the letter's header and
    /// must equal the envelope's `to_app`; `received_at_ms` is when the relay first received it.
    pub fn verify_post_replay(
        &self,
        app_id: &str,
        query: &CallbackQuery,
        body: &[u8],
        received_at_ms: u64,
    ) -> Result<Verified, Rejection> {
        let envelope = parse_envelope(body)?;
        if envelope.to_app != app_id {
            return Err(Rejection::Unauthorized("letter app differs from to_app"));
        }
        self.open_envelope(query, &envelope, body, received_at_ms)
    }

    /// Re-reads the decrypted text of a `json` dead letter with the current rules. Its signature was
    /// verified when it was dead-lettered and cannot be checked again (the ciphertext is not kept), so
    /// this trusts the dead-letter queue, which only the relay writes.
    pub fn reread_json_letter(
        &self,
        app_id: &str,
        decrypted: Vec<u8>,
        received_at_ms: u64,
    ) -> Result<VerifiedEvent, &'static str> {
        let app = self.apps.get(app_id).ok_or("app is not configured")?;
        let header = header_of(&decrypted)?;
        Ok(verified_event(
            app.app_id(),
            header,
            decrypted,
            received_at_ms,
        ))
    }

    /// Signature, then decryption (every key), then receive_id, then the JSON header.
    fn open_envelope(
        &self,
        query: &CallbackQuery,
        envelope: &Envelope,
        body: &[u8],
        received_at_ms: u64,
    ) -> Result<Verified, Rejection> {
        let app = self
            .apps
            .get(&envelope.to_app)
            .ok_or(Rejection::Unauthorized("unknown app"))?;
        if !app.signature_matches(query, &envelope.encrypt_msg) {
            return Err(Rejection::Unauthorized("bad signature"));
        }
        let replay_key = ReplayKey::new(app.app_id(), envelope.encrypt_msg.as_bytes());
        let undecodable = |reason, detail, body: Vec<u8>| {
            Verified::Undecodable(AuthenticUndecodable {
                app_id: app.app_id().to_owned(),
                reason,
                detail,
                body,
                query: query.clone(),
                received_at_ms,
                replay_key: replay_key.clone(),
            })
        };
        let plain = match app.open(&envelope.encrypt_msg) {
            Ok(plain) => plain,
            Err(OpenError::Decrypt(error)) => {
                return Ok(undecodable(
                    DeadLetterReason::Decrypt,
                    error.label(),
                    body.to_vec(),
                ));
            }
            Err(OpenError::ReceiveId) => {
                return Ok(undecodable(
                    DeadLetterReason::ReceiveId,
                    "receive_id differs from the app id",
                    body.to_vec(),
                ));
            }
        };
        match header_of(&plain.message) {
            Ok(header) => {
                let mut event = verified_event(app.app_id(), header, plain.message, received_at_ms);
                event.replay_key = replay_key;
                Ok(Verified::Event(event))
            }
            Err(detail) => Ok(undecodable(DeadLetterReason::Json, detail, plain.message)),
        }
    }

    /// Verifies the GET URL check and returns the decrypted `echostr` to send back.
    pub fn verify_get(
        &self,
        query: &CallbackQuery,
        path_app: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<u8>, Rejection> {
        let echostr = query
            .echostr
            .as_deref()
            .ok_or(Rejection::BadRequest("missing echostr"))?;
        self.check_timestamp(&query.timestamp, now)?;
        let app = self
            .apps
            .iter()
            .filter(|a| path_app.is_none_or(|p| p == a.app_id()))
            .find(|a| a.signature_matches(query, echostr))
            .ok_or(Rejection::Unauthorized("bad signature"))?;
        match app.open(echostr) {
            Ok(plain) => Ok(plain.message),
            Err(OpenError::Decrypt(_)) => Err(Rejection::Unauthorized("echostr does not decrypt")),
            Err(OpenError::ReceiveId) => Err(Rejection::Unauthorized("echostr receive_id differs")),
        }
    }

    /// Both directions are bounded: a timestamp far in the future is as suspicious as an old one.
    fn check_timestamp(&self, timestamp: &str, now: SystemTime) -> Result<(), Rejection> {
        let sent = parse_timestamp_s(timestamp)
            .ok_or(Rejection::BadRequest("timestamp is not a number"))?;
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if now_s.abs_diff(sent) > self.timestamp_tolerance_s {
            return Err(Rejection::Unauthorized("timestamp outside tolerance"));
        }
        Ok(())
    }
}

fn parse_envelope(body: &[u8]) -> Result<Envelope, Rejection> {
    serde_json::from_slice(body)
        .map_err(|_| Rejection::BadRequest("body is not the {to_app, encrypt_msg} envelope"))
}

/// `message_id` is hex SHA-256 of app id and body, so a sender's retry (or a replayed dead letter) of
/// the same event carries the same id as the original.
fn verified_event(
    app_id: &str,
    header: Header,
    body: Vec<u8>,
    received_at_ms: u64,
) -> VerifiedEvent {
    let message_id = hex::encode(
        Sha256::new()
            .chain_update(app_id.as_bytes())
            .chain_update([0u8])
            .chain_update(&body)
            .finalize(),
    );
    // Replaced by the ciphertext's key on the live path; a re-read letter never meets the cache.
    let replay_key = ReplayKey::new(app_id, &body);
    VerifiedEvent {
        app_id: app_id.to_owned(),
        event_type: header.event_type,
        body,
        received_at_ms,
        sent_at_ms: header.sent_at_ms,
        message_id,
        replay_key,
    }
}

/// Seconds since the epoch; 13-digit values are taken as milliseconds, because Weiling's unit for the
/// query timestamp is not documented and its event timestamps are milliseconds.
fn parse_timestamp_s(timestamp: &str) -> Option<u64> {
    if timestamp.is_empty()
        || timestamp.len() > 13
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let value: u64 = timestamp.parse().ok()?;
    Some(if timestamp.len() >= 13 {
        value / 1000
    } else {
        value
    })
}

/// The event type from `header.event_type`, which must be a routing-key-safe word, since it becomes
/// part of `event.<app_id>.<event_type>`. The whole message is parsed, not just the header: a reader
/// that only skips the other fields lets invalid UTF-8 or an out-of-range number through, and such
/// a message would be answered `success` yet be unreadable for every consumer of the inbox.
fn header_of(message: &[u8]) -> Result<Header, &'static str> {
    let parsed: serde_json::Value =
        serde_json::from_slice(message).map_err(|_| "not valid JSON")?;
    let Some(event_type) = parsed
        .get("header")
        .and_then(|header| header.get("event_type"))
        .and_then(serde_json::Value::as_str)
    else {
        return Err("not JSON with a header.event_type string");
    };
    let event_type = event_type.to_owned();
    if event_type.is_empty()
        || event_type.len() > 100
        || !crate::config::is_routing_safe(&event_type)
    {
        return Err("header.event_type is not a word of letters, digits, '-' or '_'");
    }
    let sent_at_ms = parsed.get("header").and_then(|header| {
        ["time_stamp", "timestamp"]
            .iter()
            .find_map(|key| header.get(*key).and_then(ms_of))
    });
    Ok(Header {
        event_type,
        sent_at_ms,
    })
}

/// What the relay reads from a decrypted message's `header`.
struct Header {
    event_type: String,
    sent_at_ms: Option<u64>,
}

/// A header time: Weiling's examples send 13-digit milliseconds as a string, its field tables as a
/// number. Anything else (seconds, text) is not a time the relay can vouch for.
fn ms_of(value: &serde_json::Value) -> Option<u64> {
    let ms = match value {
        serde_json::Value::String(text) if text.len() == 13 => text.parse().ok()?,
        serde_json::Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    (1_000_000_000_000..10_000_000_000_000)
        .contains(&ms)
        .then_some(ms)
}

#[cfg(test)]
mod tests;
