//! The repair commands on the real broker: `reconcile` (missing ids, an interrupted run resumed),
//! `dlq replay` after an EncodingAESKey fix (letters come back as live events and their customers are
//! published), and a key rotation at the edge (old and new accepted, a third key or Token not).

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use relay::entity::Entity;
use relay::ops::dlq_replay::{self, Reason, ReplayOptions};
use relay::ops::reconcile::{self, Plan, ProgressFile};
use relay::verify::AppKeys;
use relay::verify::seal::{SealedCallback, seal_ciphertext, seal_echostr, seal_event};
use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use weiling_sim::{CallbackDriver, Outcome, RetryPolicy, events};

use crate::support::in_process::*;
use crate::support::process::{ProcessRig, RelayProcess};

/// Every record in the checking queue now (waiting briefly for stragglers), acknowledged.
async fn drain(rig: &ProcessRig) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 5 {
        match rig
            .channel
            .basic_get(rig.check.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                idle = 0;
                out.push((
                    message.delivery.routing_key.to_string(),
                    serde_json::from_slice(&message.delivery.data).unwrap(),
                ));
            }
            None => {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    }
    out
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary with the rig's environment; returns (success, stdout, stderr).
fn run_cli(env: &HashMap<String, String>, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weiling-relay"))
        .args(args)
        .env_clear()
        .envs(env)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_publishes_known_and_missing_ids_and_resumes_after_an_interruption() {
    let rig = ProcessRig::start("reconcile").await;
    let known: Vec<String> = (0..230).map(|i| format!("cust-rec-{i:03}")).collect();
    for id in &known {
        rig.sim.create_customer(&rig.app_id, id);
    }
    let unknown: Vec<String> = (0..3).map(|i| format!("ghost-rec-{i}")).collect();
    let dir = temp_dir("reconcile");
    let ids_file = dir.join("ids.txt");
    let mut text = String::from("# customers to repair after the outage\n\n");
    for id in known.iter().chain(&unknown) {
        text.push_str(&format!("{id}\n"));
    }
    text.push_str(&format!("{}   # listed twice\n\n", known[0]));
    std::fs::write(&ids_file, text).unwrap();
    let ids = reconcile::read_ids(&ids_file).unwrap();
    assert_eq!(ids.len(), 233, "comments, blanks and repeats are dropped");
    let progress =
        reconcile::default_progress_path(&ids_file, &rig.app_id, Entity::Customer).unwrap();
    let plan = Plan {
        progress_file: Some(progress.clone()),
        ..Plan::new(&rig.app_id, ids.clone())
    };

    // First run: Ctrl-C arrives during the first batch; the run stops after it.
    let stop = CancellationToken::new();
    let mut seen_batches = 0;
    let first = reconcile::reconcile(
        &rig.settings,
        plan.clone(),
        &mut |s| {
            seen_batches = s.batches;
            stop.cancel();
        },
        &stop,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    eprintln!("interrupted run:\n{first}");
    assert_eq!(seen_batches, 1);
    assert!(first.interrupted && !first.ok());
    assert_eq!(
        (
            first.fetched,
            first.missing,
            first.published,
            first.failed,
            first.remaining
        ),
        (100, 0, 100, 0, 133)
    );
    assert_eq!(
        ProgressFile::load(&progress, &rig.app_id).unwrap().len(),
        100
    );

    // Second run, resumed: only the other 133 ids are fetched.
    let resumed = reconcile::reconcile(
        &rig.settings,
        Plan {
            resume: true,
            ..plan.clone()
        },
        &mut |_| {},
        &CancellationToken::new(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    eprintln!("resumed run:\n{resumed}");
    assert!(resumed.ok());
    assert_eq!(
        (
            resumed.skipped,
            resumed.fetched,
            resumed.missing,
            resumed.published,
            resumed.failed
        ),
        (100, 130, 3, 133, 0)
    );
    let calls = rig.sim.batch_calls();
    let requested: Vec<&String> = calls.iter().flat_map(|c| c.ids.iter()).collect();
    assert_eq!(
        requested.len(),
        233,
        "no id fetched twice across the two runs"
    );
    assert!(calls.iter().all(|c| c.ids.len() <= 100));
    assert_eq!(requested.iter().collect::<HashSet<_>>().len(), 233);

    let records = drain(&rig).await;
    assert_eq!(records.len(), 233);
    for (routing_key, body) in &records {
        let id = body["customer_id"].as_str().unwrap();
        assert_eq!(body["source"]["reconcile"], true, "{body}");
        assert_eq!(
            body["source"]["event_types"],
            serde_json::json!(["reconcile"])
        );
        assert_eq!(body["source"]["events"], 0);
        if id.starts_with("ghost-") {
            assert_eq!(routing_key, &format!("customer.{}.missing", rig.app_id));
            assert_eq!(body["record"], Value::Null);
        } else {
            assert_eq!(routing_key, &format!("customer.{}.upsert", rig.app_id));
            assert_eq!(
                Some(&body["record"]),
                rig.sim.customer(&rig.app_id, id).as_ref()
            );
        }
    }

    // A third run with --resume has nothing left to do; one without it publishes everything again,
    // unchanged states included (a reconcile never suppresses).
    let done = reconcile::reconcile(
        &rig.settings,
        Plan {
            resume: true,
            ..plan.clone()
        },
        &mut |_| {},
        &CancellationToken::new(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((done.skipped, done.published), (233, 0));

    let (ok, stdout, stderr) = run_cli(
        &rig.env,
        &[
            "reconcile",
            "--app",
            &rig.app_id,
            "--ids",
            ids_file.to_str().unwrap(),
        ],
    );
    eprintln!("$ weiling-relay reconcile --app … --ids ids.txt\n{stdout}{stderr}");
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("published: 233") && stdout.contains("missing:   3"),
        "{stdout}"
    );
    assert!(stderr.contains("batch 3/3"), "a progress line: {stderr}");
    assert_eq!(drain(&rig).await.len(), 233);

    let (ok, _, stderr) = run_cli(
        &rig.env,
        &[
            "reconcile",
            "--app",
            "wloaNotConfigured",
            "--ids",
            ids_file.to_str().unwrap(),
        ],
    );
    assert!(!ok && stderr.contains("not configured"), "{stderr}");

    std::fs::remove_dir_all(dir).unwrap();
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_of_contacts_uses_contact_batch_and_publishes_contact_records() {
    let rig = ProcessRig::start("reconcile-contacts").await;
    rig.channel
        .queue_bind(
            rig.check.as_str().into(),
            rig.settings.amqp.customers_exchange.as_str().into(),
            "contact.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let known: Vec<String> = (0..120).map(|i| format!("contact-rec-{i:03}")).collect();
    for id in &known {
        rig.sim.create(Entity::Contact, &rig.app_id, id);
    }
    // A customer id is not a contact id: contact/batch does not know it.
    rig.sim.create_customer(&rig.app_id, "cust-not-a-contact");
    let dir = temp_dir("reconcile-contacts");
    let ids_file = dir.join("contacts.txt");
    let mut text = known.join("\n");
    text.push_str("\ncust-not-a-contact\nghost-contact\n");
    std::fs::write(&ids_file, text).unwrap();
    let args = [
        "reconcile",
        "--app",
        &rig.app_id,
        "--entity",
        "contact",
        "--ids",
        ids_file.to_str().unwrap(),
    ];

    let (ok, stdout, stderr) = run_cli(&rig.env, &args);
    eprintln!(
        "$ weiling-relay reconcile --app … --entity contact --ids contacts.txt\n{stdout}{stderr}"
    );
    assert!(ok, "{stdout}{stderr}");
    for line in [
        "(contacts): 122 ids",
        "fetched:   120",
        "missing:   2",
        "published: 122",
        "failed:    0",
    ] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }
    let calls = rig.sim.batch_calls();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.entity == Entity::Contact));
    let progress =
        reconcile::default_progress_path(&ids_file, &rig.app_id, Entity::Contact).unwrap();
    assert!(progress.to_string_lossy().ends_with(".contact.progress"));
    let subject = reconcile::progress_subject(&rig.app_id, Entity::Contact);
    assert_eq!(ProgressFile::load(&progress, &subject).unwrap().len(), 122);
    assert!(
        ProgressFile::load(&progress, &rig.app_id).is_err(),
        "a customer run cannot resume from a contact run's file"
    );

    let records = drain(&rig).await;
    assert_eq!(records.len(), 122);
    for (routing_key, body) in &records {
        assert_eq!(body["schema"], "weiling-relay.contact.v1");
        assert_eq!(body["source"]["reconcile"], true);
        let id = body["contact_id"].as_str().unwrap();
        match rig.sim.record(Entity::Contact, &rig.app_id, id) {
            Some(record) => {
                assert_eq!(routing_key, &format!("contact.{}.upsert", rig.app_id));
                assert_eq!(body["record"], record);
            }
            None => {
                assert_eq!(routing_key, &format!("contact.{}.missing", rig.app_id));
                assert_eq!(body["record"], Value::Null);
            }
        }
    }

    let mut resumed = args.to_vec();
    resumed.push("--resume");
    let (ok, stdout, _) = run_cli(&rig.env, &resumed);
    assert!(ok && stdout.contains("122 skipped"), "{stdout}");
    assert_eq!(rig.sim.batch_calls().len(), 2, "nothing fetched again");

    std::fs::remove_dir_all(dir).unwrap();
    rig.cleanup().await;
}

async fn post(base: &str, sealed: &SealedCallback) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "{base}/weiling/callback?{}",
            sealed.query.to_query_string()
        ))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(10))
        .body(sealed.body.clone())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn depth(rig: &ProcessRig, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    rig.channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// Puts an inbox-style event into the dead-letter queue the way the broker does when the relay
/// rejects an inbox delivery: through a queue that dead-letters into it, so `x-death` is real.
async fn broker_dead_letter(rig: &ProcessRig, event: &[u8]) {
    let dlq = &rig.settings.amqp.dead_letter_queue;
    let parking = format!("{dlq}.parking");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dlq.as_str().into()),
    );
    rig.channel
        .queue_declare(
            parking.as_str().into(),
            QueueDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "app_id".into(),
        AMQPValue::LongString(rig.app_id.as_str().into()),
    );
    headers.insert(
        "event_type".into(),
        AMQPValue::LongString("add_customer".into()),
    );
    headers.insert("received_at".into(), AMQPValue::LongLongInt(now_s() * 1000));
    rig.channel
        .basic_publish(
            "".into(),
            parking.as_str().into(),
            BasicPublishOptions::default(),
            event,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id("rejected-event-1".into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let message = rig
        .channel
        .basic_get(parking.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    message
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let _ = rig
        .channel
        .queue_delete(parking.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replayed_after_a_key_fix_come_back_as_events_and_their_customers_are_published()
 {
    let rig = ProcessRig::start("dlqreplay").await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let dlq = rig.settings.amqp.dead_letter_queue.clone();

    // Weiling's side switched to a new EncodingAESKey; the relay still has only the old one.
    let switched = Arc::new(
        AppKeys::new(
            &rig.app_id,
            &SecretString::from(TOKEN),
            &SecretString::from(OTHER_AES_KEY),
            true,
        )
        .unwrap(),
    );
    let driver = CallbackDriver::new(&rig.base, switched, RetryPolicy::default());
    let mut customers = HashSet::new();
    for i in 0..5 {
        let id = format!("cust-dlq-{i}");
        let record = rig.sim.create_customer(&rig.app_id, &id);
        let delivery = driver
            .send(&events::add_customer(&record).to_json(&rig.app_id))
            .await;
        assert_eq!(
            delivery.outcome,
            Outcome::Ok,
            "dead-lettered, answered success"
        );
        customers.insert(id);
    }
    // Authentic, but meant for another tenant, and authentic but not JSON: no key fix helps these.
    let old = rig.keys();
    let foreign = old.key().encrypt(b"{}", "wloaAnotherTenant");
    let sealed = seal_ciphertext(&old, &rig.app_id, &foreign, &now_s().to_string(), &nonce());
    assert_eq!(post(&rig.base, &sealed).await, 200);
    let sealed = seal_event(&old, b"{\"header\": ", &now_s().to_string(), &nonce());
    assert_eq!(post(&rig.base, &sealed).await, 200);
    assert_eq!(depth(&rig, &dlq).await, 7);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        rig.sim.batch_calls().is_empty(),
        "nothing readable reached the pipeline"
    );

    let mut fixed = rig.settings.clone();
    fixed.apps[0].rotate_in_aes_key(SecretString::from(OTHER_AES_KEY));
    let stop = CancellationToken::new();

    // The command line, dry run: reports and changes nothing.
    let mut env = rig.env.clone();
    env.insert(
        "WEILING_RELAY_ENCODING_AES_KEY".into(),
        format!("{OTHER_AES_KEY},{AES_KEY}"),
    );
    let (ok, stdout, stderr) = run_cli(&env, &["dlq", "replay", "--dry-run"]);
    eprintln!("$ weiling-relay dlq replay --dry-run\n{stdout}{stderr}");
    assert!(!ok, "a letter would still fail, so the exit code says so");
    assert!(
        stdout.contains("would be replayed:      5 (decrypt 5)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("still failing: 1 (receive_id 1)"),
        "{stdout}"
    );
    assert!(stdout.contains("skipped:       1 (json 1)"), "{stdout}");
    assert_eq!(depth(&rig, &dlq).await, 7);

    // Only receive_id letters: it is re-dead-lettered (x-replayed 1); the others stay untouched.
    let only = dlq_replay::replay(
        &fixed,
        ReplayOptions {
            reason: Some(Reason::ReceiveId),
            ..ReplayOptions::default()
        },
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(only.replayed_total(), 0);
    assert_eq!(only.still_failing.get("receive_id"), Some(&1));
    assert_eq!(only.skipped.get("other reason"), Some(&6));
    assert_eq!(depth(&rig, &dlq).await, 7);

    // A limit: two letters now.
    let two = dlq_replay::replay(
        &fixed,
        ReplayOptions {
            limit: Some(2),
            ..ReplayOptions::default()
        },
        &stop,
    )
    .await
    .unwrap();
    // Requeued letters keep their place, so these are two of the decrypt letters; should the broker
    // have put the receive_id letter first, it is one of the two instead.
    let taken_decrypt = two.replayed.get("decrypt").copied().unwrap_or(0);
    assert_eq!(taken_decrypt + two.still_failing_total(), 2, "{two}");
    assert_eq!(depth(&rig, &dlq).await, 7 - taken_decrypt as u32);
    let decrypt_left = 5 - taken_decrypt;

    // An inbox event the broker dead-lettered (Weiling refused its batch) comes back too.
    let rejected = rig.sim.create_customer(&rig.app_id, "cust-dlq-rejected");
    broker_dead_letter(&rig, &events::add_customer(&rejected).to_json(&rig.app_id)).await;
    customers.insert("cust-dlq-rejected".to_owned());

    let (ok, stdout, stderr) = run_cli(&env, &["dlq", "replay"]);
    eprintln!("$ weiling-relay dlq replay\n{stdout}{stderr}");
    assert!(!ok, "the receive_id letter still fails");
    assert!(
        stdout.contains(&format!(
            "replayed:      {} (decrypt {decrypt_left}, rejected 1)",
            decrypt_left + 1
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("still failing: 1 (receive_id 1)"),
        "{stdout}"
    );

    let (stale, received) = rig.await_latest(&customers, Duration::from_secs(30)).await;
    eprintln!(
        "dlq replay: {received} records after the replay, {} missing",
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "replayed events' customers not published: {stale:?}"
    );

    // json letters are touched only when asked for; this one still does not parse.
    let json = dlq_replay::replay(
        &fixed,
        ReplayOptions {
            reason: Some(Reason::Json),
            ..ReplayOptions::default()
        },
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(json.still_failing.get("json"), Some(&1));
    let left: Vec<_> = {
        let mut left = Vec::new();
        while let Some(m) = rig
            .channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            left.push(m);
        }
        left
    };
    assert_eq!(left.len(), 2);
    let reasons: HashSet<String> = left.iter().map(|m| header_str(m, "x-reason")).collect();
    assert_eq!(
        reasons,
        HashSet::from(["json".to_owned(), "receive_id".to_owned()])
    );
    let receive_id = left
        .iter()
        .find(|m| header_str(m, "x-reason") == "receive_id")
        .unwrap();
    assert!(
        matches!(header(receive_id, "x-replayed"), Some(AMQPValue::LongLongInt(n)) if *n >= 2),
        "replayed at least twice, unreadable each time"
    );
    for name in ["app_id", "msg_signature", "timestamp", "nonce"] {
        assert!(
            !header_str(receive_id, name).is_empty(),
            "{name} kept for the next replay"
        );
    }
    drop(relay);
    rig.cleanup().await;
}

#[tokio::test]
async fn during_a_rotation_old_and_new_keys_are_accepted_and_a_third_is_not() {
    const NEW_TOKEN: &str = "NewTokenNewToken2025";
    const THIRD_KEY: &str = "0123456789abcdefghijABCDEFGHIJklmnopqrstUVW";
    let app = spawn_with(
        Spawn::default()
            .set("WEILING_RELAY_TOKEN", format!("{NEW_TOKEN},{TOKEN}"))
            .set(
                "WEILING_RELAY_ENCODING_AES_KEY",
                format!("{OTHER_AES_KEY},{AES_KEY}"),
            ),
    )
    .await;
    let sender = |token: &str, key: &str| {
        AppKeys::new(
            &app.app_id,
            &SecretString::from(token),
            &SecretString::from(key),
            true,
        )
        .unwrap()
    };
    let send = |keys: AppKeys, customer: &str| {
        seal_event(&keys, &app.event(customer), &now_s().to_string(), &nonce())
    };

    // Old Token + old key (Weiling before the switch), new + new (after), and the mixed states.
    for (i, (token, key)) in [
        (TOKEN, AES_KEY),
        (NEW_TOKEN, OTHER_AES_KEY),
        (NEW_TOKEN, AES_KEY),
        (TOKEN, OTHER_AES_KEY),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = app
            .post(&send(sender(token, key), &format!("rot-{i}")))
            .await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "success"),
            "{i}"
        );
        let echo = seal_echostr(
            &sender(token, key),
            b"echo-check",
            &now_s().to_string(),
            &nonce(),
        );
        let answer = app
            .get(&format!("/weiling/callback?{}", echo.to_query_string()))
            .await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "echo-check"));
    }
    let stored = app.take_all(app.inbox()).await;
    let customers: HashSet<String> = stored
        .iter()
        .map(|m| {
            let event: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            event["event"]["customer_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(customers.len(), 4, "all four are readable events");
    assert_eq!(app.depth(app.dead()).await, 0);

    // A key neither old nor new: authentic (the Token is known) but unreadable → dead letter.
    let answer = app
        .post(&send(sender(NEW_TOKEN, THIRD_KEY), "rot-third-key"))
        .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "success"));
    let dead = app.take_all(app.dead()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header_str(&dead[0], "x-reason"), "decrypt");
    // A Token neither old nor new: refused, nothing stored.
    let answer = app
        .post(&send(
            sender("ThirdTokenThirdToken", AES_KEY),
            "rot-third-token",
        ))
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(app.depth(app.inbox()).await, 0);
    assert_eq!(app.depth(app.dead()).await, 0);
    app.teardown().await;
}

/// One record message as a consumer sees it.
struct Published {
    message_id: String,
    content_hash: String,
    fetched_at: u64,
    record: Value,
}

/// Waits for the next record on the checking queue.
async fn next_record(rig: &ProcessRig) -> Published {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(message) = rig
            .channel
            .basic_get(rig.check.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
            return Published {
                message_id: message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .to_string(),
                content_hash: crate::support::in_process::header_str(&message, "x-content-sha256"),
                fetched_at: body["fetched_at"].as_u64().unwrap(),
                record: body["record"].clone(),
            };
        }
        assert!(tokio::time::Instant::now() < deadline, "no record arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_reverted_after_a_reconcile_is_published_again_under_a_new_message_id() {
    let rig = ProcessRig::start("reverted").await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let app = rig.app_id.clone();
    let id = weiling_sim::new_customer_id();

    // S1 published by the relay.
    let s1 = rig.sim.create_customer(&app, &id);
    rig.send_all(&[events::add_customer(&s1)]).await;
    let first = next_record(&rig).await;
    assert_eq!(first.record, s1);

    // Weiling changes to S2, and a reconcile publishes it.
    let s2 = rig.sim.change_customer(&app, &id);
    let plan = Plan::new(&app, vec![id.clone()]);
    let summary = reconcile::reconcile(
        &rig.settings,
        plan,
        &mut |_| {},
        &CancellationToken::new(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.published, 1);
    let second = next_record(&rig).await;
    assert_eq!(second.record, s2);

    // Weiling goes back to S1 and an event arrives: S1 must be published again, or every mirror
    // stays at S2.
    rig.sim
        .set_raw_record(Entity::Customer, &app, &id, &s1.to_string());
    rig.send_all(&[events::customer_update(&s1, events::CustomerChange::Remark)])
        .await;
    let third = next_record(&rig).await;
    assert_eq!(third.record, s1, "the reverted state is published");
    assert!(third.fetched_at > second.fetched_at);
    assert_ne!(
        third.message_id, first.message_id,
        "a new fetch is a new publication: a consumer dropping seen ids keeps it"
    );
    assert_eq!(
        third.content_hash, first.content_hash,
        "the same state has the same content hash"
    );
    assert_ne!(second.content_hash, first.content_hash);
    drop(relay);
    rig.cleanup().await;
}
