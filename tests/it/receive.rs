//! Every row of design.md §3 that needs no enrichment, each checked by its HTTP answer and by what
//! is (or is not) in the inbox and dead-letter queues of the real broker.

use relay::verify::AppKeys;
use relay::verify::seal::{seal_ciphertext, seal_echostr, seal_event};
use secrecy::SecretString;

use crate::support::in_process::*;

#[tokio::test]
async fn a_valid_callback_is_in_the_inbox_before_success_is_answered() {
    let app = spawn_app().await;
    let event = app.event("cust-1");
    let callback = seal_event(&app.keys, &event, &now_s().to_string(), &nonce());
    let answer = app.post(&callback).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "success");

    // The confirm preceded the answer, so the message is already there: no waiting needed.
    assert_eq!(app.depth(app.inbox()).await, 1);
    let messages = app.take_all(app.inbox()).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        message.delivery.data, event,
        "the decrypted event JSON, unchanged"
    );
    let event: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(event["event"]["customer_id"], "cust-1");
    assert_eq!(
        message.delivery.routing_key.as_str(),
        format!("event.{}.add_customer", app.app_id)
    );
    let props = &message.delivery.properties;
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        props.kind().as_ref().map(|s| s.as_str()),
        Some("event.add_customer")
    );
    assert_eq!(header_str(message, "app_id"), app.app_id);
    assert_eq!(header_str(message, "event_type"), "add_customer");
    assert!(header(message, "received_at").is_some());
    assert_eq!(app.depth(app.dead()).await, 0);
    app.teardown().await;
}

#[tokio::test]
async fn the_path_with_the_app_id_is_accepted_too() {
    let app = spawn_app().await;
    let callback = app.callback("cust-2");
    let answer = app
        .post_raw(
            &format!(
                "/weiling/callback/{}?{}",
                app.app_id,
                callback.query.to_query_string()
            ),
            callback.body.clone(),
            &[],
        )
        .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "success"));
    assert_eq!(app.take_all(app.inbox()).await.len(), 1);

    let other = app.callback("cust-3");
    let answer = app
        .post_raw(
            &format!(
                "/weiling/callback/wloaSomeoneElse?{}",
                other.query.to_query_string()
            ),
            other.body.clone(),
            &[],
        )
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(app.depth(app.inbox()).await, 0);
    app.teardown().await;
}

#[tokio::test]
async fn an_exact_replay_is_answered_success_and_stored_once() {
    let app = spawn_app().await;
    let callback = app.callback("cust-r");
    assert_eq!(app.post(&callback).await.status, 200);
    let again = app.post(&callback).await;
    assert_eq!((again.status, again.body.as_str()), (200, "success"));

    // And a concurrent burst of 100 copies of a new callback yields exactly one stored message.
    let burst = app.callback("cust-burst");
    let answers = futures::future::join_all((0..100).map(|_| app.post(&burst))).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "every copy is answered success"
    );
    let stored = app.take_all(app.inbox()).await;
    assert_eq!(stored.len(), 2, "one per distinct callback");
    app.teardown().await;
}

#[tokio::test]
async fn the_replay_cache_cannot_be_bypassed_by_rewriting_the_query() {
    let app = spawn_app().await;
    let callback = app.callback("cust-case");
    assert_eq!(app.post(&callback).await.status, 200);

    // The signature in upper case, or one letter changed in case, still verifies: the same callback.
    let mut upper = callback.clone();
    upper.query.msg_signature = callback.query.msg_signature.to_uppercase();
    let mut one_letter = callback.clone();
    if let Some(i) = one_letter
        .query
        .msg_signature
        .find(|c: char| c.is_ascii_lowercase())
    {
        let mut chars: Vec<char> = one_letter.query.msg_signature.chars().collect();
        chars[i] = chars[i].to_ascii_uppercase();
        one_letter.query.msg_signature = chars.into_iter().collect();
    }
    // The same ciphertext signed again with another nonce and timestamp (what moving digits between
    // a numeric nonce and the timestamp amounts to): the same callback as well.
    let envelope: serde_json::Value = serde_json::from_slice(&callback.body).unwrap();
    let resigned = seal_ciphertext(
        &app.keys,
        envelope["to_app"].as_str().unwrap(),
        envelope["encrypt_msg"].as_str().unwrap(),
        &(now_s() - 1).to_string(),
        "4711",
    );
    for (name, copy) in [
        ("upper case", &upper),
        ("one letter", &one_letter),
        ("re-signed", &resigned),
    ] {
        let answer = app.post(copy).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "success"),
            "{name}"
        );
    }
    let stored = app.take_all(app.inbox()).await;
    assert_eq!(
        stored.len(),
        1,
        "stored once: the key is the app and the ciphertext"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_full_replay_cache_forgets_the_oldest_callbacks_never_the_newest() {
    let capacity = 50;
    let app = spawn_with(
        Spawn::default().set("WEILING_RELAY__SECURITY__REPLAY_CACHE_CAPACITY", capacity),
    )
    .await;
    let callbacks: Vec<_> = (0..2 * capacity)
        .map(|n| app.callback(&format!("cust-full-{n}")))
        .collect();
    for callback in &callbacks {
        assert_eq!(app.post(callback).await.status, 200);
    }
    assert_eq!(app.take_all(app.inbox()).await.len(), 2 * capacity);

    // The newest 50 replayed: every one is recognised and nothing is stored.
    let (oldest, newest) = callbacks.split_at(capacity);
    for callback in newest {
        let again = app.post(callback).await;
        assert_eq!((again.status, again.body.as_str()), (200, "success"));
    }
    assert_eq!(
        app.depth(app.inbox()).await,
        0,
        "each of the newest {capacity} callbacks is still remembered"
    );
    // The oldest 50 were evicted to make room, so their replays are stored again (a duplicate
    // with the same message_id, never a loss).
    for callback in oldest {
        assert_eq!(app.post(callback).await.status, 200);
    }
    assert_eq!(app.take_all(app.inbox()).await.len(), capacity);
    app.teardown().await;
}

#[tokio::test]
async fn a_sender_retry_with_a_new_nonce_is_stored_again_with_the_same_message_id() {
    let app = spawn_app().await;
    let event = app.event("cust-retry");
    let first = seal_event(&app.keys, &event, &now_s().to_string(), &nonce());
    let retry = seal_event(&app.keys, &event, &now_s().to_string(), &nonce());
    assert_eq!(app.post(&first).await.status, 200);
    assert_eq!(app.post(&retry).await.status, 200);
    let stored = app.take_all(app.inbox()).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0].delivery.properties.message_id(),
        stored[1].delivery.properties.message_id(),
        "consumers can deduplicate a sender's retry by message_id"
    );
    app.teardown().await;
}

#[tokio::test]
async fn bad_signatures_unknown_apps_and_stale_timestamps_get_401_and_store_nothing() {
    let app = spawn_app().await;
    let mut flipped = app.callback("cust-x");
    let first = if flipped.query.msg_signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    flipped.query.msg_signature.replace_range(0..1, first);

    let wrong_token = AppKeys::new(
        &app.app_id,
        &SecretString::from("AnotherTokenAnother1"),
        &SecretString::from(AES_KEY),
        true,
    )
    .unwrap();
    let forged = seal_event(
        &wrong_token,
        &app.event("cust-x"),
        &now_s().to_string(),
        &nonce(),
    );

    let stranger = AppKeys::new(
        "wloaUnknownApp",
        &SecretString::from(TOKEN),
        &SecretString::from(AES_KEY),
        true,
    )
    .unwrap();
    let unknown = seal_event(
        &stranger,
        &app.event("cust-x"),
        &now_s().to_string(),
        &nonce(),
    );

    let old = seal_event(
        &app.keys,
        &app.event("cust-x"),
        &(now_s() - 600).to_string(),
        &nonce(),
    );
    let future = seal_event(
        &app.keys,
        &app.event("cust-x"),
        &(now_s() + 600).to_string(),
        &nonce(),
    );

    let mut missing_signature = app.callback("cust-x");
    missing_signature.query.msg_signature = "a".repeat(40);

    for (name, callback) in [
        ("flipped signature", &flipped),
        ("wrong token", &forged),
        ("unknown app", &unknown),
        ("10 minutes old", &old),
        ("10 minutes ahead", &future),
        ("made-up signature", &missing_signature),
    ] {
        let answer = app.post(callback).await;
        assert_eq!(answer.status, 401, "{name}");
        assert_eq!(answer.body, "unauthorized", "{name}: a generic body");
    }
    assert_eq!(app.depth(app.inbox()).await, 0);
    assert_eq!(app.depth(app.dead()).await, 0);

    // A rejected timestamp never touched the replay cache: the same request signed now goes through.
    let fresh = seal_event(
        &app.keys,
        &app.event("cust-x"),
        &now_s().to_string(),
        &old.query.nonce,
    );
    assert_eq!(app.post(&fresh).await.status, 200);
    app.teardown().await;
}

#[tokio::test]
async fn malformed_requests_get_400_oversized_413_and_wrong_media_415() {
    let app = spawn_app().await;
    let good = app.callback("cust-m");
    let query = good.query.to_query_string();

    type Case<'a> = (&'a str, String, Vec<u8>, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "no query",
            "/weiling/callback".into(),
            good.body.clone(),
            vec![],
            400,
        ),
        (
            "missing nonce",
            format!(
                "/weiling/callback?msg_signature={}&timestamp={}",
                good.query.msg_signature, good.query.timestamp
            ),
            good.body.clone(),
            vec![],
            400,
        ),
        (
            "repeated nonce",
            format!("/weiling/callback?{query}&nonce=again"),
            good.body.clone(),
            vec![],
            400,
        ),
        (
            "body not JSON",
            format!("/weiling/callback?{query}"),
            b"hello".to_vec(),
            vec![],
            400,
        ),
        (
            "envelope without encrypt_msg",
            format!("/weiling/callback?{query}"),
            br#"{"to_app":"x"}"#.to_vec(),
            vec![],
            400,
        ),
        (
            "body over 64 KiB",
            format!("/weiling/callback?{query}"),
            vec![b'x'; 65537],
            vec![],
            413,
        ),
        (
            "10 MiB body",
            format!("/weiling/callback?{query}"),
            vec![b'x'; 10 << 20],
            vec![],
            413,
        ),
        (
            "gzip encoded",
            format!("/weiling/callback?{query}"),
            good.body.clone(),
            vec![("content-encoding", "gzip")],
            415,
        ),
        (
            "xml body",
            format!("/weiling/callback?{query}"),
            good.body.clone(),
            vec![("content-type", "application/xml")],
            415,
        ),
    ];
    for (name, path, body, headers, expected) in cases {
        let answer = app.post_raw(&path, body, &headers).await;
        assert_eq!(answer.status, expected, "{name}");
    }
    let put = app
        .http
        .put(format!("{}/weiling/callback?{query}", app.base))
        .body(good.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 405);
    let delete = app
        .http
        .delete(format!("{}/weiling/callback", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status().as_u16(), 405);

    assert_eq!(app.depth(app.inbox()).await, 0);
    assert_eq!(app.depth(app.dead()).await, 0);
    // The good request itself still works after all that.
    assert_eq!(app.post(&good).await.status, 200);
    app.teardown().await;
}

#[tokio::test]
async fn authentic_but_unreadable_callbacks_are_dead_lettered_then_answered_success() {
    let app = spawn_app().await;
    let other_key = AppKeys::new(
        &app.app_id,
        &SecretString::from(TOKEN),
        &SecretString::from(OTHER_AES_KEY),
        true,
    )
    .unwrap();

    let wrong_key = seal_ciphertext(
        &app.keys,
        &app.app_id,
        &other_key.key().encrypt(&app.event("c"), &app.app_id),
        &now_s().to_string(),
        &nonce(),
    );
    let wrong_receiver = seal_ciphertext(
        &app.keys,
        &app.app_id,
        &app.keys.key().encrypt(&app.event("c"), "wloaAnotherTenant"),
        &now_s().to_string(),
        &nonce(),
    );
    let bad_json = seal_event(
        &app.keys,
        b"{\"header\": {\"event_type\": ",
        &now_s().to_string(),
        &nonce(),
    );
    let no_header = seal_event(
        &app.keys,
        br#"{"event":{"customer_id":"c"}}"#,
        &now_s().to_string(),
        &nonce(),
    );

    for (callback, reason) in [
        (&wrong_key, "decrypt"),
        (&wrong_receiver, "receive_id"),
        (&bad_json, "json"),
        (&no_header, "json"),
    ] {
        let answer = app.post(callback).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "success"),
            "{reason}"
        );
        let letters = app.take_all(app.dead()).await;
        assert_eq!(letters.len(), 1, "{reason}");
        let letter = &letters[0];
        assert_eq!(header_str(letter, "x-reason"), reason);
        assert_eq!(header_str(letter, "app_id"), app.app_id);
        assert_eq!(header_str(letter, "nonce"), callback.query.nonce);
        assert_eq!(
            header_str(letter, "msg_signature"),
            callback.query.msg_signature
        );
        assert_eq!(letter.delivery.properties.delivery_mode(), &Some(2));
        if reason == "json" {
            assert_ne!(
                letter.delivery.data, callback.body,
                "the decrypted text is kept"
            );
        } else {
            assert_eq!(
                letter.delivery.data, callback.body,
                "the envelope is kept for replay"
            );
        }
        // A replay of a dead-lettered callback is not dead-lettered twice.
        assert_eq!(app.post(callback).await.status, 200);
        assert_eq!(app.depth(app.dead()).await, 0);
    }
    assert_eq!(app.depth(app.inbox()).await, 0);
    app.teardown().await;
}

#[tokio::test]
async fn an_unmapped_event_type_is_stored_like_any_other() {
    let app = spawn_app().await;
    let event = serde_json::json!({
        "header": {"to_app": app.app_id, "event_type": "group_chat_dismiss", "timestamp": now_s() * 1000},
        "event": {"group_chat_id": "g1"},
    });
    let callback = seal_event(
        &app.keys,
        event.to_string().as_bytes(),
        &now_s().to_string(),
        &nonce(),
    );
    assert_eq!(app.post(&callback).await.status, 200);
    let stored = app.take_all(app.inbox()).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].delivery.routing_key.as_str(),
        format!("event.{}.group_chat_dismiss", app.app_id)
    );
    app.teardown().await;
}

#[tokio::test]
async fn url_verification_echoes_the_decrypted_echostr() {
    let app = spawn_app().await;
    let query = seal_echostr(
        &app.keys,
        b"8093671862937182340",
        &now_s().to_string(),
        &nonce(),
    );
    let answer = app
        .get(&format!("/weiling/callback?{}", query.to_query_string()))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body, "8093671862937182340",
        "raw plaintext: no quotes, no newline"
    );
    let by_path = app
        .get(&format!(
            "/weiling/callback/{}?{}",
            app.app_id,
            query.to_query_string()
        ))
        .await;
    assert_eq!(by_path.body, "8093671862937182340");

    let mut forged = query.clone();
    forged.nonce.push('x');
    assert_eq!(
        app.get(&format!("/weiling/callback?{}", forged.to_query_string()))
            .await
            .status,
        401
    );
    let mut no_echo = query;
    no_echo.echostr = None;
    assert_eq!(
        app.get(&format!("/weiling/callback?{}", no_echo.to_query_string()))
            .await
            .status,
        400
    );
    assert_eq!(app.depth(app.inbox()).await, 0);
    app.teardown().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status, 200);
    let ready = app.get("/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
    app.teardown().await;
}
