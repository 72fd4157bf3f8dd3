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
fn the_header_time_is_read_from_time_stamp_or_timestamp_as_text_or_number() {
    let cases = [
        (r#""time_stamp":"1745818723565""#, Some(1_745_818_723_565)),
        (r#""time_stamp":1745818723565"#, Some(1_745_818_723_565)),
        (r#""timestamp":"1745818723566""#, Some(1_745_818_723_566)),
        (r#""timestamp":1745818723567"#, Some(1_745_818_723_567)),
        (r#""time_stamp":"string""#, None),
        (r#""timestamp":1745818723"#, None),
        (r#""other":1"#, None),
    ];
    for (field, expected) in cases {
        let json = format!(
            r#"{{"header":{{"to_app":"{APP}","event_type":"add_customer",{field}}},"event":{{}}}}"#
        );
        let sealed = seal_event(&keys(APP, KEY_A), json.as_bytes(), &ts(0), "n1");
        let Ok(Verified::Event(event)) =
            verifier().verify_post(&sealed.query, &sealed.body, None, now())
        else {
            panic!("{field}: expected an event")
        };
        assert_eq!(event.sent_at_ms(), expected, "{field}");
    }
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
        // Well-formed around the header, broken elsewhere: invalid UTF-8 inside a key the header
        // reader would skip, and a number no JSON reader can hold. Neither may reach the inbox.
        b"{\"header\":{\"event_type\":\"add_customer\"},\"event\":{\"c\xff\xfeid\":\"x\"}}",
        br#"{"header":{"event_type":"add_customer"},"event":{"n":1e400}}"#,
        br#"[{"header":{"event_type":"add_customer"}}]"#,
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

const TOKEN_NEW: &str = "N3wTok3nN3wTok3nN3w";
const KEY_C: &str = "0123456789abcdefghijABCDEFGHIJklmnopqrstUVW";

/// An app in the middle of a rotation: new Token and key first, the old ones still accepted.
fn rotating() -> Verifier {
    let app = AppKeys::with_rotation(
        APP,
        &[SecretString::from(TOKEN_NEW), SecretString::from(TOKEN)],
        &[SecretString::from(KEY_B), SecretString::from(KEY_A)],
        true,
    )
    .unwrap();
    Verifier::new(Apps::new(vec![app]), 300)
}

fn sender(token: &str, key: &str) -> AppKeys {
    AppKeys::new(
        APP,
        &SecretString::from(token),
        &SecretString::from(key),
        true,
    )
    .unwrap()
}

#[test]
fn during_a_rotation_old_and_new_tokens_and_keys_are_all_accepted() {
    for (token, key) in [
        (TOKEN, KEY_A),
        (TOKEN_NEW, KEY_B),
        (TOKEN_NEW, KEY_A),
        (TOKEN, KEY_B),
    ] {
        let sealed = seal_event(&sender(token, key), EVENT, &ts(0), "n1");
        let Ok(Verified::Event(event)) =
            rotating().verify_post(&sealed.query, &sealed.body, None, now())
        else {
            panic!("token {token} with key {key} should be accepted")
        };
        assert_eq!(event.body(), EVENT);
        let echo = seal_echostr(&sender(token, key), b"echo", &ts(0), "n2");
        assert_eq!(rotating().verify_get(&echo, None, now()).unwrap(), b"echo");
    }
}

#[test]
fn during_a_rotation_a_third_key_is_a_dead_letter_and_a_third_token_is_refused() {
    let sealed = seal_event(&sender(TOKEN_NEW, KEY_C), EVENT, &ts(0), "n1");
    match rotating().verify_post(&sealed.query, &sealed.body, None, now()) {
        Ok(Verified::Undecodable(letter)) => assert_eq!(letter.reason(), DeadLetterReason::Decrypt),
        other => panic!("expected a decrypt dead letter, got {other:?}"),
    }
    let sealed = seal_event(&sender("Th1rdTok3nTh1rdTok3n", KEY_A), EVENT, &ts(0), "n1");
    assert!(matches!(
        rotating().verify_post(&sealed.query, &sealed.body, None, now()),
        Err(Rejection::Unauthorized(_))
    ));
}

#[test]
fn a_key_that_decrypts_for_another_receiver_does_not_stop_the_search() {
    // The old key reads it, but only the new one yields this app's receive_id: the new one wins.
    let ciphertext = sender(TOKEN, KEY_A).key().encrypt(EVENT, APP);
    let app = AppKeys::with_rotation(
        APP,
        &[SecretString::from(TOKEN)],
        &[SecretString::from(KEY_B), SecretString::from(KEY_A)],
        true,
    )
    .unwrap();
    assert_eq!(app.open(&ciphertext).unwrap().message, EVENT);
    let foreign = sender(TOKEN, KEY_A).key().encrypt(EVENT, "wloaSOMEONEELSE");
    assert_eq!(app.open(&foreign), Err(OpenError::ReceiveId));
    let unreadable = sender(TOKEN, KEY_C).key().encrypt(EVENT, APP);
    assert!(matches!(app.open(&unreadable), Err(OpenError::Decrypt(_))));
}

#[test]
fn senders_use_the_newest_token_and_key() {
    let app = AppKeys::with_rotation(
        APP,
        &[SecretString::from(TOKEN_NEW), SecretString::from(TOKEN)],
        &[SecretString::from(KEY_B), SecretString::from(KEY_A)],
        true,
    )
    .unwrap();
    let sealed = seal_event(&app, EVENT, &ts(0), "n1");
    let only_new = Verifier::new(Apps::new(vec![sender(TOKEN_NEW, KEY_B)]), 300);
    assert!(matches!(
        only_new.verify_post(&sealed.query, &sealed.body, None, now()),
        Ok(Verified::Event(_))
    ));
    assert!(AppKeys::with_rotation(APP, &[], &[SecretString::from(KEY_A)], true).is_err());
}

#[test]
fn a_replayed_dead_letter_is_verified_without_the_timestamp_tolerance() {
    // Dead-lettered a day ago (wrong key); the relay now has the right one.
    let day_old = ts(-86_400);
    let sealed = seal_event(&sender(TOKEN, KEY_B), EVENT, &day_old, "n1");
    assert!(matches!(
        rotating().verify_post(&sealed.query, &sealed.body, None, now()),
        Err(Rejection::Unauthorized("timestamp outside tolerance"))
    ));
    let received_at = (NOW_S - 86_400) * 1000;
    let Ok(Verified::Event(event)) =
        rotating().verify_post_replay(APP, &sealed.query, &sealed.body, received_at)
    else {
        panic!("the replay should read it")
    };
    assert_eq!(event.body(), EVENT);
    assert_eq!(event.received_at_ms(), received_at);
    let live = seal_event(&sender(TOKEN, KEY_B), EVENT, &ts(0), "n2");
    let Ok(Verified::Event(live)) = rotating().verify_post(&live.query, &live.body, None, now())
    else {
        panic!("live copy")
    };
    assert_eq!(
        event.message_id(),
        live.message_id(),
        "same event, same message_id"
    );

    // The signature is still checked, and the letter's app must be the envelope's.
    let mut forged = sealed.query.clone();
    forged.nonce = "n-other".into();
    assert!(matches!(
        rotating().verify_post_replay(APP, &forged, &sealed.body, received_at),
        Err(Rejection::Unauthorized(_))
    ));
    assert!(matches!(
        rotating().verify_post_replay("wloaOTHER", &sealed.query, &sealed.body, received_at),
        Err(Rejection::Unauthorized(_))
    ));
    // Still unreadable with the current keys: a dead letter again.
    let third = seal_event(&sender(TOKEN, KEY_C), EVENT, &day_old, "n3");
    assert!(matches!(
        rotating().verify_post_replay(APP, &third.query, &third.body, received_at),
        Ok(Verified::Undecodable(_))
    ));
}

#[test]
fn a_json_letter_is_reread_with_the_current_rules() {
    let event = verifier()
        .reread_json_letter(APP, EVENT.to_vec(), 5)
        .unwrap();
    assert_eq!(event.event_type(), "add_customer");
    assert_eq!(event.received_at_ms(), 5);
    assert!(
        verifier()
            .reread_json_letter(APP, b"{not json".to_vec(), 5)
            .is_err()
    );
    assert!(
        verifier()
            .reread_json_letter("wloaOTHER", EVENT.to_vec(), 5)
            .is_err()
    );
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
