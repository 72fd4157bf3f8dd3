//! The configured apps with their parsed keys: which app a callback belongs to and how to read it.

use secrecy::{ExposeSecret, SecretString};

use super::cipher::{AesKey, DecryptError, Decrypted, KeyError};
use super::{CallbackQuery, signature};
use crate::config::AppSettings;

/// One app's callback credentials, parsed once at start.
pub struct AppKeys {
    app_id: String,
    token: SecretString,
    key: AesKey,
    check_receive_id: bool,
}

impl AppKeys {
    pub fn new(
        app_id: &str,
        token: &SecretString,
        encoding_aes_key: &SecretString,
        check_receive_id: bool,
    ) -> Result<Self, KeyError> {
        Ok(Self {
            app_id: app_id.to_owned(),
            token: token.clone(),
            key: AesKey::from_encoding_aes_key(encoding_aes_key.expose_secret())?,
            check_receive_id,
        })
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn check_receive_id(&self) -> bool {
        self.check_receive_id
    }

    pub fn signature_matches(&self, query: &CallbackQuery, payload: &str) -> bool {
        signature::verify(
            self.token.expose_secret(),
            &query.timestamp,
            &query.nonce,
            payload,
            &query.msg_signature,
        )
    }

    pub fn decrypt(&self, ciphertext: &str) -> Result<Decrypted, DecryptError> {
        self.key.decrypt(ciphertext)
    }

    /// The sender's side, for the simulator and tests: encrypt `message` for this app and sign it.
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    pub fn key(&self) -> &AesKey {
        &self.key
    }
}

/// All configured apps, looked up by app id.
pub struct Apps(Vec<AppKeys>);

impl Apps {
    pub fn from_settings(apps: &[AppSettings]) -> Result<Self, KeyError> {
        apps.iter()
            .map(|a| AppKeys::new(&a.app_id, &a.token, &a.encoding_aes_key, a.check_receive_id))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn new(apps: Vec<AppKeys>) -> Self {
        Self(apps)
    }

    pub fn get(&self, app_id: &str) -> Option<&AppKeys> {
        self.0.iter().find(|a| a.app_id == app_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &AppKeys> {
        self.0.iter()
    }
}
