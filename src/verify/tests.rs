//! Verifier tests: every rejection and dead-letter reason, built with the real sender side.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;

use super::seal::{seal_ciphertext, seal_echostr, seal_event};
use super::*;

const APP: &str = "wloa0123456789abcdef0123456789abcdef";
const TOKEN: &str = "Tok3nTok3nTok3nTok3n";
const KEY_A: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const KEY_B: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
const NOW_S: u64 = 1_745_818_723;

fn keys(app: &str, key: &str) -> AppKeys {
    AppKeys::new(
        app,
        &SecretString::from(TOKEN),
        &SecretString::from(key),
        true,
    )
    .unwrap()
}

fn verifier() -> Verifier {
    Verifier::new(Apps::new(vec![keys(APP, KEY_A)]), 300)
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_S)
}

fn ts(offset: i64) -> String {
    (NOW_S as i64 + offset).to_string()
}

const EVENT: &[u8] = br#"{"header":{"to_app":"wloa0123456789abcdef0123456789abcdef","event_type":"add_customer","time_stamp":"1745818723565"},"event":{"customer_id":"c1"}}"#;

#[test]
fn a_valid_callback_becomes_a_verified_event() {
    let sealed = seal_event(&keys(APP, KEY_A), EVENT, &ts(0), "n1");
    let Verified::Event(event) = verifier()
        .verify_post(&sealed.query, &sealed.body, None, now())
        .unwrap()
    else {
        panic!("expected an event")
    };
    assert_eq!(event.app_id(), APP);
    assert_eq!(event.event_type(), "add_customer");
    assert_eq!(event.body(), EVENT);
    assert_eq!(event.received_at_ms(), NOW_S * 1000);
    assert_eq!(event.message_id().len(), 64);
    let path = verifier().verify_post(&sealed.query, &sealed.body, Some(APP), now());
    assert!(matches!(path, Ok(Verified::Event(_))));
}

#[test]
fn millisecond_timestamps_are_accepted() {
    let sealed = seal_event(&keys(APP, KEY_A), EVENT, &format!("{}000", NOW_S), "n1");
    assert!(matches!(
        verifier().verify_post(&sealed.query, &sealed.body, None, now()),
        Ok(Verified::Event(_))
    ));
}

#[test]
fn rejections_are_unauthorized_or_bad_request() {
    let good = seal_event(&keys(APP, KEY_A), EVENT, &ts(0), "n1");
    let unauthorized = |q: &CallbackQuery, body: &[u8], path: Option<&str>| {
        matches!(
            verifier().verify_post(q, body, path, now()),
            Err(Rejection::Unauthorized(_))
        )
    };

    let mut flipped = good.query.clone();
    let first = if flipped.msg_signature.starts_with('a') {
        "b"
    } else {
        "a"
    };
    flipped.msg_signature.replace_range(0..1, first);
    assert!(
        unauthorized(&flipped, &good.body, None),
        "flipped signature"
    );

    let other_token = AppKeys::new(
        APP,
        &SecretString::from("0therT0kenValue99"),
        &SecretString::from(KEY_A),
        true,
    )
    .unwrap();
    let forged = seal_event(&other_token, EVENT, &ts(0), "n1");
    assert!(
        unauthorized(&forged.query, &forged.body, None),
        "wrong token"
    );

    let stranger = seal_event(&keys("wloaUNKNOWN", KEY_A), EVENT, &ts(0), "n1");
    assert!(
        unauthorized(&stranger.query, &stranger.body, None),
        "unknown app"
    );

    assert!(
        unauthorized(&good.query, &good.body, Some("wloaOTHER")),
        "path app differs"
    );

    for offset in [-600, 600] {
        let stale = seal_event(&keys(APP, KEY_A), EVENT, &ts(offset), "n1");
        assert!(
            unauthorized(&stale.query, &stale.body, None),
            "timestamp {offset}"
        );
    }
    let edge = seal_event(&keys(APP, KEY_A), EVENT, &ts(-300), "n1");
    assert!(
        verifier()
            .verify_post(&edge.query, &edge.body, None, now())
            .is_ok(),
        "inside tolerance"
    );

    for body in [&b"not json"[..], br#"{"to_app":"x"}"#, b""] {
        assert!(matches!(
            verifier().verify_post(&good.query, body, None, now()),
            Err(Rejection::BadRequest(_))
        ));
    }
    let mut bad_ts = good.query.clone();
    bad_ts.timestamp = "12a".into();
    assert!(matches!(
        verifier().verify_post(&bad_ts, &good.body, None, now()),
        Err(Rejection::BadRequest(_))
    ));
}

#[test]
fn authentic_but_unreadable_callbacks_are_dead_letters_with_a_reason() {
    let app = keys(APP, KEY_A);
    let undecodable = |sealed: super::seal::SealedCallback| match verifier().verify_post(
        &sealed.query,
        &sealed.body,
        None,
        now(),
    ) {
        Ok(Verified::Undecodable(u)) => (u.reason(), u.body().to_vec(), sealed.body),
        other => panic!("expected a dead letter, got {other:?}"),
    };

    // Signed with the right token but encrypted with another key.
    let wrong_key = keys(APP, KEY_B).key().encrypt(EVENT, APP);
    let (reason, body, sent) = undecodable(seal_ciphertext(&app, APP, &wrong_key, &ts(0), "n1"));
    assert_eq!(reason, DeadLetterReason::Decrypt);
    assert_eq!(body, sent, "the envelope is kept for replay");

    let not_base64 = seal_ciphertext(&app, APP, "%%%not-base64%%%", &ts(0), "n1");
    assert_eq!(undecodable(not_base64).0, DeadLetterReason::Decrypt);

    let other_receiver = app.key().encrypt(EVENT, "wloaSOMEONEELSE");
    let (reason, ..) = undecodable(seal_ciphertext(&app, APP, &other_receiver, &ts(0), "n1"));
    assert_eq!(reason, DeadLetterReason::ReceiveId);

    for bad in [
        &b"{not json"[..],
        br#"{"event":{}}"#,
        br#"{"header":{"event_type":"a.b"}}"#,
        br#"{"header":{"event_type":""}}"#,
    ] {
        let (reason, body, _) = undecodable(seal_event(&app, bad, &ts(0), "n1"));
        assert_eq!(reason, DeadLetterReason::Json);
        assert_eq!(body, bad, "the decrypted text is kept");
    }
}

#[test]
fn receive_id_check_can_be_switched_off() {
    let lenient = AppKeys::new(
        APP,
        &SecretString::from(TOKEN),
        &SecretString::from(KEY_A),
        false,
    )
    .unwrap();
    let verifier = Verifier::new(Apps::new(vec![lenient]), 300);
    let other_receiver = keys(APP, KEY_A).key().encrypt(EVENT, "");
    let sealed = seal_ciphertext(&keys(APP, KEY_A), APP, &other_receiver, &ts(0), "n1");
    assert!(matches!(
        verifier.verify_post(&sealed.query, &sealed.body, None, now()),
        Ok(Verified::Event(_))
    ));
}

#[test]
fn url_verification_returns_the_plain_echostr() {
    let query = seal_echostr(&keys(APP, KEY_A), b"echo-1234567890", &ts(0), "n9");
    assert_eq!(
        verifier().verify_get(&query, None, now()).unwrap(),
        b"echo-1234567890"
    );
    assert_eq!(
        verifier().verify_get(&query, Some(APP), now()).unwrap(),
        b"echo-1234567890"
    );
    assert!(matches!(
        verifier().verify_get(&query, Some("wloaOTHER"), now()),
        Err(Rejection::Unauthorized(_))
    ));

    let mut forged = query.clone();
    forged.echostr = Some(keys(APP, KEY_A).key().encrypt(b"other", APP));
    assert!(matches!(
        verifier().verify_get(&forged, None, now()),
        Err(Rejection::Unauthorized(_))
    ));

    let mut missing = query;
    missing.echostr = None;
    assert!(matches!(
        verifier().verify_get(&missing, None, now()),
        Err(Rejection::BadRequest(_))
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
    #[test]
    fn no_request_panics(
        raw_query in ".{0,200}",
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        encrypt_msg in "[A-Za-z0-9+/=]{0,200}",
    ) {
        let v = verifier();
        if let Ok(q) = CallbackQuery::parse(&raw_query) {
            let _ = v.verify_post(&q, &body, None, now());
            let _ = v.verify_get(&q, None, now());
        }
        // An authentic envelope around arbitrary ciphertext must also end in a verdict, not a panic.
        let sealed = seal_ciphertext(&keys(APP, KEY_A), APP, &encrypt_msg, &ts(0), "n");
        let _ = v.verify_post(&sealed.query, &sealed.body, None, now());
    }
}
