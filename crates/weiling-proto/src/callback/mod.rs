//! Weiling's callback scheme (WeCom style): SHA-1 over the sorted Token, timestamp, nonce and
//! ciphertext; AES-256-CBC with the EncodingAESKey; the query string that carries the signature.
//! Both sides live here: opening (the relay) and sealing (the simulator, the demo, the tests).

pub mod cipher;
pub mod keys;
pub mod query;
pub mod seal;
pub mod signature;

pub use keys::{AppKeys, OpenError};
pub use query::{CallbackQuery, QueryError};
