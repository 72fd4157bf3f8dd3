//! The sender's side of the scheme: encrypt and sign a callback exactly as Weiling does. The
//! simulator, the demo, the benchmarks and the tests all build their callbacks with it.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::distr::{Alphanumeric, SampleString};
use secrecy::ExposeSecret;

use super::{AppKeys, CallbackQuery, signature};

/// A ready-to-send POST callback: its query string and JSON body.
#[derive(Debug, Clone)]
pub struct SealedCallback {
    pub query: CallbackQuery,
    pub body: Vec<u8>,
}

/// Encrypts `event_json` for `app` (receive_id = app id), signs it, and wraps it in the envelope.
pub fn seal_event(
    app: &AppKeys,
    event_json: &[u8],
    timestamp: &str,
    nonce: &str,
) -> SealedCallback {
    let encrypt_msg = app.key().encrypt(event_json, app.app_id());
    seal_ciphertext(app, app.app_id(), &encrypt_msg, timestamp, nonce)
}

/// [`seal_event`] as Weiling sends a callback now: the current Unix time in seconds and a fresh
/// 16-character nonce.
pub fn seal_event_now(app: &AppKeys, event_json: &[u8]) -> SealedCallback {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        .to_string();
    let nonce = Alphanumeric.sample_string(&mut rand::rng(), 16);
    seal_event(app, event_json, &timestamp, &nonce)
}

/// Signs an already encrypted message with `app`'s token and addresses it to `to_app`; tests use it to
/// build callbacks that are authentic but encrypted with another key or for another receiver.
pub fn seal_ciphertext(
    app: &AppKeys,
    to_app: &str,
    encrypt_msg: &str,
    timestamp: &str,
    nonce: &str,
) -> SealedCallback {
    let msg_signature = signature::sign(app.token().expose_secret(), timestamp, nonce, encrypt_msg);
    let body = serde_json::json!({ "to_app": to_app, "encrypt_msg": encrypt_msg });
    SealedCallback {
        query: CallbackQuery {
            msg_signature,
            timestamp: timestamp.to_owned(),
            nonce: nonce.to_owned(),
            echostr: None,
        },
        body: body.to_string().into_bytes(),
    }
}

/// The GET URL-verification request Weiling sends when the callback URL is saved.
pub fn seal_echostr(app: &AppKeys, echo: &[u8], timestamp: &str, nonce: &str) -> CallbackQuery {
    let echostr = app.key().encrypt(echo, app.app_id());
    let msg_signature = signature::sign(app.token().expose_secret(), timestamp, nonce, &echostr);
    CallbackQuery {
        msg_signature,
        timestamp: timestamp.to_owned(),
        nonce: nonce.to_owned(),
        echostr: Some(echostr),
    }
}
