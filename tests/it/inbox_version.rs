//! The classic inbox's storage version (`amqp.inbox_queue_version`): a new inbox gets the configured
//! version, and an inbox that already exists with another one (an upgrade from a relay that declared
//! it without the argument, or a relay set to the other version) keeps its version and its messages
//! while the declare still succeeds, so the relay starts against it.

use std::collections::HashMap;

use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use relay::config::Settings;
use relay_harness::scenario::{WeilingApp, cleanup, relay_env};

use crate::support::in_process::{AES_KEY, SHARED_BROKER, TOKEN, unique};

fn settings(name: &str, version: Option<&str>) -> Settings {
    let prefix = unique(name);
    let app = WeilingApp {
        app_id: format!("wloa{}", prefix.replace('-', "")),
        app_secret: "test-app-secret".into(),
        token: TOKEN.into(),
        encoding_aes_key: AES_KEY.into(),
    };
    let mut env: HashMap<String, String> =
        relay_env(&prefix, SHARED_BROKER, "http://127.0.0.1:9", &app);
    if let Some(version) = version {
        env.insert(
            "WEILING_RELAY__AMQP__INBOX_QUEUE_VERSION".into(),
            version.into(),
        );
    }
    Settings::load(None, &env).unwrap()
}

/// The inbox's arguments as `rabbitmqctl list_queues` prints them.
async fn arguments_of(queue: &str) -> String {
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "arguments",
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{queue}\t")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{queue} is not on the broker"))
}

async fn depth(channel: &lapin::Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// The inbox as every relay declared it before the setting existed: no `x-queue-version`.
async fn declare_old_inbox(channel: &lapin::Channel, settings: &Settings) {
    let amqp = &settings.amqp;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(amqp.dead_letter_queue.as_str().into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(amqp.inbox_queue.as_str().into(), durable, args)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_inbox_gets_the_configured_version_and_an_existing_one_keeps_its_own() {
    let connection = Connection::connect(SHARED_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();

    // A new inbox: version 2 by default.
    let fresh = settings("inbox-v2", None);
    relay::amqp::topology::declare(&connection, &fresh.amqp)
        .await
        .unwrap();
    let args = arguments_of(&fresh.amqp.inbox_queue).await;
    assert!(args.contains(r#"{"x-queue-version",2}"#), "{args}");

    // An inbox from before the setting, holding a message: the relay's declare succeeds, the inbox
    // keeps its arguments and its message, and the relay's channel stays usable after the refusal.
    let old = settings("inbox-old", None);
    declare_old_inbox(&channel, &old).await;
    channel
        .basic_publish(
            "".into(),
            old.amqp.inbox_queue.as_str().into(),
            BasicPublishOptions::default(),
            b"stored before the upgrade",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    relay::amqp::topology::declare(&connection, &old.amqp)
        .await
        .unwrap();
    let args = arguments_of(&old.amqp.inbox_queue).await;
    assert!(!args.contains("x-queue-version"), "{args}");
    assert_eq!(depth(&channel, &old.amqp.inbox_queue).await, 1);
    // The declare bound it as usual.
    channel
        .queue_bind(
            old.amqp.inbox_queue.as_str().into(),
            old.amqp.events_exchange.as_str().into(),
            relay::amqp::topology::INBOX_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // An inbox created as version 1 and a relay set to 2 (and back): each keeps what it has.
    let v1 = settings("inbox-v1", Some("1"));
    relay::amqp::topology::declare(&connection, &v1.amqp)
        .await
        .unwrap();
    let mut v1_now_2 = v1.clone();
    v1_now_2.amqp.inbox_queue_version = 2;
    relay::amqp::topology::declare(&connection, &v1_now_2.amqp)
        .await
        .unwrap();
    let args = arguments_of(&v1.amqp.inbox_queue).await;
    assert!(args.contains(r#"{"x-queue-version",1}"#), "{args}");

    for done in [&fresh, &old, &v1] {
        cleanup(&channel, &done.amqp, "").await;
    }
    let _ = connection.close(200, "test done".into()).await;
}
