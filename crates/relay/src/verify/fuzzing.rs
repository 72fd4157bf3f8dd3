//! One entry point over the whole callback path, for the fuzz target and the property tests: query
//! parsing, envelope parsing, signature, base64, decrypt, unpad, length field, receive_id, event JSON.

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use secrecy::SecretString;

use super::seal::{seal_ciphertext, seal_event};
use super::{AppKeys, Apps, CallbackQuery, Verifier};

const APP_ID: &str = "wloafuzz0000000000000000000000000000";
const TOKEN: &str = "FuzzTokenFuzzToken01";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const NOW_S: u64 = 1_745_818_723;

struct Fixture {
    verifier: Verifier,
    sender: AppKeys,
}

fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let keys = |check| {
                AppKeys::new(
                    APP_ID,
                    &SecretString::from(TOKEN),
                    &SecretString::from(KEY),
                    check,
                )
                .ok()
            };
            Some(Fixture {
                verifier: Verifier::new(Apps::new(vec![keys(true)?]), 300),
                sender: keys(true)?,
            })
        })
        .as_ref()
}

/// Feeds `data` through every stage a request can reach. Must never panic, whatever `data` is.
pub fn callback_path(data: &[u8]) {
    let Some(f) = fixture() else { return };
    let now = UNIX_EPOCH + Duration::from_secs(NOW_S);
    let text = String::from_utf8_lossy(data);

    // A raw request: everything up to the first newline is the query string, the rest the body.
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(data.get(..i).unwrap_or_default()),
            data.get(i + 1..).unwrap_or_default(),
        ),
        None => (text.clone(), &[][..]),
    };
    if let Ok(q) = CallbackQuery::parse(&query) {
        let _ = f.verifier.verify_post(&q, body, None, now);
        let _ = f.verifier.verify_post(&q, body, Some(APP_ID), now);
        let _ = f.verifier.verify_get(&q, None, now);
    }

    // An authentic envelope around arbitrary ciphertext: reaches base64, decrypt, unpad, length, receive_id.
    let ts = NOW_S.to_string();
    let sealed = seal_ciphertext(&f.sender, APP_ID, &text, &ts, "fuzz");
    let _ = f
        .verifier
        .verify_post(&sealed.query, &sealed.body, None, now);
    let mut echo = sealed.query.clone();
    echo.echostr = Some(text.to_string());
    echo.msg_signature = super::signature::sign(TOKEN, &ts, "fuzz", &text);
    let _ = f.verifier.verify_get(&echo, None, now);

    // Correctly encrypted arbitrary plaintext: reaches the event JSON and header checks.
    let sealed = seal_event(&f.sender, data, &ts, "fuzz");
    let _ = f
        .verifier
        .verify_post(&sealed.query, &sealed.body, None, now);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn no_input_panics_anywhere_on_the_callback_path(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::callback_path(&data);
        }

        #[test]
        fn no_query_like_input_panics(query in "[a-z_=&%0-9A-F]{0,120}", body in ".{0,200}") {
            super::callback_path(format!("{query}\n{body}").as_bytes());
        }
    }
}
