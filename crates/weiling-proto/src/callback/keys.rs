//! One app's callback credentials: the Tokens that sign and the EncodingAESKeys that encrypt.
//!
//! An app may hold several Tokens and EncodingAESKeys at once (a rotation: new first, old kept for an
//! overlap), because Weiling switches its side at once and only accepting both on ours loses nothing.

use secrecy::{ExposeSecret, SecretString};

use super::cipher::{AesKey, DecryptError, Decrypted, KeyError};
use super::{CallbackQuery, signature};

/// One app's callback credentials, parsed once at start.
pub struct AppKeys {
    app_id: String,
    /// The newest Token: what a sender signs with.
    token: SecretString,
    /// Tokens still accepted during a rotation's overlap.
    older_tokens: Vec<SecretString>,
    /// The newest key: what a sender encrypts with, and the first tried.
    key: AesKey,
    /// Keys still tried, in order, during a rotation's overlap.
    older_keys: Vec<AesKey>,
    check_receive_id: bool,
}

/// Why none of an app's keys could read a ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// No key decrypted it (the first key's failure, since the keys are tried newest first).
    Decrypt(DecryptError),
    /// A key decrypted it, but the receive_id named someone else.
    ReceiveId,
}

impl AppKeys {
    pub fn new(
        app_id: &str,
        token: &SecretString,
        encoding_aes_key: &SecretString,
        check_receive_id: bool,
    ) -> Result<Self, KeyError> {
        Self::with_rotation(
            app_id,
            std::slice::from_ref(token),
            std::slice::from_ref(encoding_aes_key),
            check_receive_id,
        )
    }

    /// Several Tokens and EncodingAESKeys, newest first.
    pub fn with_rotation(
        app_id: &str,
        tokens: &[SecretString],
        encoding_aes_keys: &[SecretString],
        check_receive_id: bool,
    ) -> Result<Self, KeyError> {
        let (Some((token, older_tokens)), Some((key, older_keys))) =
            (tokens.split_first(), encoding_aes_keys.split_first())
        else {
            return Err(KeyError::Missing);
        };
        let parse = |k: &SecretString| AesKey::from_encoding_aes_key(k.expose_secret());
        Ok(Self {
            app_id: app_id.to_owned(),
            token: token.clone(),
            older_tokens: older_tokens.to_vec(),
            key: parse(key)?,
            older_keys: older_keys.iter().map(parse).collect::<Result<_, _>>()?,
            check_receive_id,
        })
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn check_receive_id(&self) -> bool {
        self.check_receive_id
    }

    /// True when any configured Token produced the signature. Every Token is compared (in constant
    /// time) even after a match, so the timing does not tell which one is in use.
    pub fn signature_matches(&self, query: &CallbackQuery, payload: &str) -> bool {
        self.tokens().fold(false, |matched, token| {
            let this = signature::verify(
                token.expose_secret(),
                &query.timestamp,
                &query.nonce,
                payload,
                &query.msg_signature,
            );
            matched | this
        })
    }

    /// Decrypts with the first key whose padding, length field and (when checked) receive_id all
    /// hold. Padding alone is no proof of the right key: about one random key in 256 passes it.
    pub fn open(&self, ciphertext: &str) -> Result<Decrypted, OpenError> {
        let mut first_error = None;
        let mut foreign = false;
        for key in self.keys() {
            match key.decrypt(ciphertext) {
                Ok(plain)
                    if !self.check_receive_id || plain.receive_id == self.app_id.as_bytes() =>
                {
                    return Ok(plain);
                }
                Ok(_) => foreign = true,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if foreign {
            Err(OpenError::ReceiveId)
        } else {
            Err(OpenError::Decrypt(
                first_error.unwrap_or(DecryptError::Padding),
            ))
        }
    }

    /// Decrypts with the first key that can, without looking at the receive_id (tests and tools).
    pub fn decrypt(&self, ciphertext: &str) -> Result<Decrypted, DecryptError> {
        let mut first_error = DecryptError::Padding;
        for (i, key) in self.keys().enumerate() {
            match key.decrypt(ciphertext) {
                Ok(plain) => return Ok(plain),
                Err(error) if i == 0 => first_error = error,
                Err(_) => {}
            }
        }
        Err(first_error)
    }

    /// The sender's side, for the simulator and tests: the newest Token signs.
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// The sender's side: the newest key encrypts.
    pub fn key(&self) -> &AesKey {
        &self.key
    }

    /// Every accepted Token, newest first.
    pub fn tokens(&self) -> impl Iterator<Item = &SecretString> {
        std::iter::once(&self.token).chain(&self.older_tokens)
    }

    /// Every key, newest first.
    pub fn keys(&self) -> impl Iterator<Item = &AesKey> {
        std::iter::once(&self.key).chain(&self.older_keys)
    }
}
