//! `weiling-relay mirror` against the real local RabbitMQ and PostgreSQL. Every test has its own
//! exchanges and queues, and its own PostgreSQL schema, dropped at the end.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Confirmation};
use rand::seq::SliceRandom;
use relay::amqp::Outgoing;
use relay::config::Settings;
use relay::entity::Entity;
use relay::pipeline::publish::record::{self, Op, Record};
use relay::pipeline::window::coalescer::IdSource;
use relay_harness::scenario::{self, relay_env};
use relay_mirror::apply::Outcome;
use relay_mirror::stats::{Counts, Stats};
use relay_mirror::{MirrorError, MirrorOptions};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::in_process::{AES_KEY, SHARED_BROKER, TOKEN, unique};
use crate::support::process::{DATABASE_URL, KillOnDrop, start_mirror};

static SCHEMAS: AtomicUsize = AtomicUsize::new(0);

/// Unique broker names, a schema, a confirm-mode channel to publish records, and a database client
/// whose search_path is the test's schema.
struct Rig {
    env: HashMap<String, String>,
    settings: Settings,
    app_id: String,
    queue: String,
    schema: String,
    connection: lapin::Connection,
    channel: lapin::Channel,
    db: tokio_postgres::Client,
}

impl Rig {
    async fn new(name: &str) -> Rig {
        Self::new_with(name, &[]).await
    }

    async fn new_with(name: &str, extra_env: &[(&str, &str)]) -> Rig {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = relay::telemetry::init(Some(&filter), None);
        }
        let prefix = unique(name);
        let app_id = format!("wloa{}", prefix.replace('-', ""));
        let app = scenario::WeilingApp {
            app_id: app_id.clone(),
            app_secret: "mirror-app-secret".into(),
            token: TOKEN.into(),
            encoding_aes_key: AES_KEY.into(),
        };
        let mut env = relay_env(&prefix, SHARED_BROKER, "http://127.0.0.1:9", &app);
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let settings = Settings::load(None, &env).unwrap();
        let queue = format!("{prefix}.mirror");
        let schema = format!(
            "it_mirror_{}_{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::Relaxed)
        );

        let connection =
            lapin::Connection::connect(SHARED_BROKER, lapin::ConnectionProperties::default())
                .await
                .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // The queue exists before anything is published, so no record is missed before the mirror starts.
        relay::amqp::topology::declare(&connection, &settings.amqp)
            .await
            .unwrap();
        relay_mirror::consumer::declare_queue(&channel, &settings.amqp, &queue)
            .await
            .unwrap();

        let (db, db_connection) = tokio_postgres::connect(DATABASE_URL, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL answers on 127.0.0.1:5432 (scripts/ensure-postgres)");
        tokio::spawn(db_connection);
        db.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
        ))
        .await
        .unwrap();
        Rig {
            env,
            settings,
            app_id,
            queue,
            schema,
            connection,
            channel,
            db,
        }
    }

    fn options(&self) -> MirrorOptions {
        MirrorOptions {
            database_url: DATABASE_URL.into(),
            queue: self.queue.clone(),
            prefetch: 200,
            schema: Some(self.schema.clone()),
        }
    }

    /// The mirror in this process, as `weiling-relay mirror` runs it.
    fn start(&self) -> Running {
        self.start_with(self.options())
    }

    fn start_with(&self, options: MirrorOptions) -> Running {
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let settings = self.settings.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            let stats = stats.clone();
            async move { relay_mirror::run(&options, &settings, stop, stats).await }
        });
        Running { stop, stats, task }
    }

    fn customer(&self, id: &str, op: Op, record: Option<&Value>, fetched_at: u64) -> Outgoing {
        self.message(Entity::Customer, id, op, record, fetched_at)
    }

    fn message(
        &self,
        entity: Entity,
        id: &str,
        op: Op,
        record: Option<&Value>,
        fetched_at: u64,
    ) -> Outgoing {
        let source = IdSource {
            events: 1,
            event_types: BTreeSet::from(["add_customer".to_owned()]),
            first_event_at_ms: fetched_at.saturating_sub(300),
            deliveries: Vec::new(),
        };
        let raw = record.map(|r| serde_json::value::to_raw_value(r).unwrap());
        record::message(
            &self.settings.amqp.customers_exchange,
            &Record {
                entity,
                app_id: &self.app_id,
                id,
                op,
                record: raw.as_deref(),
                source: &source,
                fetched_at_ms: fetched_at,
            },
            // Signed exactly when the relay would be: when the settings have a key.
            Some(&self.settings.security.sign_records_key),
        )
    }

    /// Publishes in order and waits for every confirm.
    async fn publish(&self, messages: &[Outgoing]) {
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            confirms.push(
                self.channel
                    .basic_publish(
                        m.exchange.as_str().into(),
                        m.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: m.mandatory,
                            ..BasicPublishOptions::default()
                        },
                        &m.body,
                        m.properties.clone(),
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)));
        }
    }

    /// A body that is not a record the mirror knows, published like one.
    async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                self.settings.amqp.customers_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id("raw-1".into()),
            )
            .await
            .unwrap();
        assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)));
    }

    async fn customer_row(&self, id: &str) -> Option<CustomerRow> {
        self.db
            .query_opt(
                "SELECT record, name, customer_stage, lost_state, external_userid, follow_user_ids, \
                        fetched_at, deleted, message_id, applied_at::text, xmin::text \
                 FROM mirror_customers WHERE app_id = $1 AND customer_id = $2",
                &[&self.app_id, &id],
            )
            .await
            .unwrap()
            .map(|row| CustomerRow {
                record: row.get(0),
                name: row.get(1),
                customer_stage: row.get(2),
                lost_state: row.get(3),
                external_userid: row.get(4),
                follow_user_ids: row.get(5),
                fetched_at: row.get(6),
                deleted: row.get(7),
                message_id: row.get(8),
                applied_at: row.get(9),
                xmin: row.get(10),
            })
    }

    /// Every customer row of the test's app: id → (record, fetched_at, deleted, message_id).
    async fn all_customers(&self) -> HashMap<String, (Option<Value>, i64, bool, String)> {
        self.db
            .query(
                "SELECT customer_id, record, fetched_at, deleted, message_id FROM mirror_customers WHERE app_id = $1",
                &[&self.app_id],
            )
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
                    .collect()
            })
            // The table exists once a mirror has connected.
            .unwrap_or_default()
    }

    async fn depth(&self, queue: &str) -> u32 {
        crate::support::in_process::depth(&self.channel, queue).await
    }

    async fn cleanup(self) {
        scenario::cleanup(&self.channel, &self.settings.amqp, &self.queue).await;
        let _ = self.connection.close(200, "test done".into()).await;
        self.db
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
            .unwrap();
    }
}

#[derive(Debug, Clone, PartialEq)]
struct CustomerRow {
    record: Option<Value>,
    name: Option<String>,
    customer_stage: Option<String>,
    lost_state: Option<bool>,
    external_userid: Option<String>,
    follow_user_ids: Option<Vec<String>>,
    fetched_at: i64,
    deleted: bool,
    message_id: String,
    applied_at: String,
    xmin: String,
}

struct Running {
    stop: CancellationToken,
    stats: Arc<Stats>,
    task: JoinHandle<Result<(), MirrorError>>,
}

impl Running {
    /// Waits until `n` deliveries were committed or dead-lettered in all.
    async fn settled(&self, n: u64) -> Counts {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let counts = self.stats.snapshot();
            if counts.settled() >= n {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "mirror settled only {counts:?} of {n}"
            );
            assert!(!self.task.is_finished(), "mirror ended early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("mirror stops in time")
            .unwrap()
            .expect("mirror ends cleanly");
    }
}

/// Some of the seed's fields, the ones the mirror's typed columns read among them; the revision is in
/// the first follow user's remark, where the simulator keeps it.
fn customer_record(id: &str, revision: u64, stage: &str) -> Value {
    json!({
        "customer_id": id,
        "external_userid": format!("wm{id}"),
        "name": format!("客户{revision}"),
        "customer_stage": stage,
        "lost_state": revision % 2 == 1,
        "follow_users": [
            {"userid": "zhangsan", "create_time": 1_745_818_700_000u64, "remark": format!("客户{revision} #{revision}")},
            {"userid": format!("staff{revision}"), "create_time": 1_745_818_700_000u64 + revision * 1000, "remark": ""},
        ],
    })
}

fn message_id(m: &Outgoing) -> String {
    m.properties.message_id().as_ref().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_keeps_the_newer_of_two_states_delivered_out_of_order() {
    let rig = Rig::new("mirror-order").await;
    let mirror = rig.start();
    let older = customer_record("c1", 1, "初步接触");
    let newer = customer_record("c1", 2, "赢单");
    rig.publish(&[
        rig.customer("c1", Op::Upsert, Some(&newer), 2_000),
        rig.customer("c1", Op::Upsert, Some(&older), 1_000),
    ])
    .await;
    let counts = mirror.settled(2).await;
    assert_eq!(counts.get(Entity::Customer, Outcome::Applied), 1);
    assert_eq!(counts.get(Entity::Customer, Outcome::Stale), 1);
    let row = rig.customer_row("c1").await.unwrap();
    assert_eq!(row.record.as_ref(), Some(&newer));
    assert_eq!(row.fetched_at, 2_000);
    assert!(!row.deleted);
    // The typed columns come from the record that won.
    assert_eq!(row.name.as_deref(), Some("客户2"));
    assert_eq!(row.customer_stage.as_deref(), Some("赢单"));
    assert_eq!(row.lost_state, Some(false));
    assert_eq!(row.external_userid.as_deref(), Some("wmc1"));
    assert_eq!(
        row.follow_user_ids,
        Some(vec!["zhangsan".to_owned(), "staff2".to_owned()])
    );

    // A tie in fetched_at goes to the greater message_id, whichever order the two arrive in.
    let mut settled = 2;
    for (id, first_is_a) in [("tie1", true), ("tie2", false)] {
        let a = rig.customer(id, Op::Upsert, Some(&customer_record(id, 10, "a")), 5_000);
        let b = rig.customer(id, Op::Upsert, Some(&customer_record(id, 11, "b")), 5_000);
        let winner = message_id(&a).max(message_id(&b));
        let pair = if first_is_a { [a, b] } else { [b, a] };
        rig.publish(&pair).await;
        settled += 2;
        mirror.settled(settled).await;
        assert_eq!(
            rig.customer_row(id).await.unwrap().message_id,
            winner,
            "{id}"
        );
    }
    for id in ["tie1", "tie2"] {
        let row = rig.customer_row(id).await.unwrap();
        assert_eq!(row.fetched_at, 5_000);
    }
    mirror.stop().await;
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_changes_nothing() {
    let rig = Rig::new("mirror-dup").await;
    let mirror = rig.start();
    let state = customer_record("c1", 1, "需求确认");
    let message = rig.customer("c1", Op::Upsert, Some(&state), 1_000);
    rig.publish(std::slice::from_ref(&message)).await;
    mirror.settled(1).await;
    let before = rig.customer_row("c1").await.unwrap();

    rig.publish(std::slice::from_ref(&message)).await;
    let counts = mirror.settled(2).await;
    assert_eq!(counts.get(Entity::Customer, Outcome::Duplicate), 1);
    let after = rig.customer_row("c1").await.unwrap();
    // Not even rewritten: the row version (xmin) is the same.
    assert_eq!(before, after);

    // The same content fetched again later is a new publication (its own message_id): applied, so its
    // fetched_at counts and an older, different state arriving afterwards does not win over it; the
    // content did not change, so applied_at stays.
    rig.publish(&[rig.customer("c1", Op::Upsert, Some(&state), 3_000)])
        .await;
    mirror.settled(3).await;
    rig.publish(&[rig.customer(
        "c1",
        Op::Upsert,
        Some(&customer_record("c1", 2, "赢单")),
        2_000,
    )])
    .await;
    let counts = mirror.settled(4).await;
    assert_eq!(counts.get(Entity::Customer, Outcome::Duplicate), 1);
    assert_eq!(counts.get(Entity::Customer, Outcome::Applied), 2);
    assert_eq!(counts.get(Entity::Customer, Outcome::Stale), 1);
    let last = rig.customer_row("c1").await.unwrap();
    assert_eq!(last.record.as_ref(), Some(&state));
    assert_eq!(last.fetched_at, 3_000);
    assert_eq!(
        last.applied_at, before.applied_at,
        "the content never changed"
    );
    mirror.stop().await;
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_marks_the_row_deleted_and_only_a_newer_upsert_revives_it() {
    let rig = Rig::new("mirror-missing").await;
    let mirror = rig.start();
    let first = customer_record("c1", 1, "方案报价");
    rig.publish(&[
        rig.customer("c1", Op::Upsert, Some(&first), 1_000),
        rig.customer("c1", Op::Missing, None, 2_000),
        // Older than the tombstone: stays deleted.
        rig.customer("c1", Op::Upsert, Some(&first), 1_500),
        // Never seen before: a tombstone row, so a late older upsert cannot resurrect it either.
        rig.customer("gone", Op::Missing, None, 4_000),
        rig.customer(
            "gone",
            Op::Upsert,
            Some(&customer_record("gone", 1, "x")),
            3_000,
        ),
    ])
    .await;
    let counts = mirror.settled(5).await;
    assert_eq!(counts.get(Entity::Customer, Outcome::Deleted), 2);
    assert_eq!(counts.get(Entity::Customer, Outcome::Stale), 2);
    for id in ["c1", "gone"] {
        let row = rig.customer_row(id).await.unwrap();
        assert!(row.deleted, "{id}");
        assert_eq!(row.record, None);
        assert_eq!(row.name, None);
        assert_eq!(row.follow_user_ids, None);
    }
    assert_eq!(rig.customer_row("c1").await.unwrap().fetched_at, 2_000);

    let back = customer_record("c1", 3, "赢单");
    rig.publish(&[rig.customer("c1", Op::Upsert, Some(&back), 3_000)])
        .await;
    mirror.settled(6).await;
    let row = rig.customer_row("c1").await.unwrap();
    assert!(!row.deleted);
    assert_eq!(row.record.as_ref(), Some(&back));
    assert_eq!(row.customer_stage.as_deref(), Some("赢单"));
    mirror.stop().await;
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_are_mirrored_into_their_own_table() {
    let rig = Rig::new("mirror-contact").await;
    let mirror = rig.start();
    let contact = json!({
        "contact_id": "k1", "user_name": "李四", "customer_stage": "需求确认", "owner_id": "lisi",
        "status": 1, "related_customer": [{"id": "c1", "type": 1}],
    });
    let upsert = rig.message(Entity::Contact, "k1", Op::Upsert, Some(&contact), 1_000);
    assert_eq!(upsert.routing_key, format!("contact.{}.upsert", rig.app_id));
    rig.publish(&[
        upsert,
        rig.message(
            Entity::Contact,
            "k2",
            Op::Upsert,
            Some(&json!({"contact_id": "k2"})),
            1_000,
        ),
        rig.message(Entity::Contact, "k2", Op::Missing, None, 2_000),
    ])
    .await;
    let counts = mirror.settled(3).await;
    assert_eq!(counts.get(Entity::Contact, Outcome::Applied), 2);
    assert_eq!(counts.get(Entity::Contact, Outcome::Deleted), 1);
    let rows = rig
        .db
        .query(
            "SELECT contact_id, record, user_name, customer_stage, owner_id, status, deleted, fetched_at \
             FROM mirror_contacts WHERE app_id = $1 ORDER BY contact_id",
            &[&rig.app_id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let k1 = &rows[0];
    assert_eq!(k1.get::<_, String>(0), "k1");
    assert_eq!(k1.get::<_, Option<Value>>(1).as_ref(), Some(&contact));
    assert_eq!(k1.get::<_, Option<String>>(2).as_deref(), Some("李四"));
    assert_eq!(k1.get::<_, Option<String>>(3).as_deref(), Some("需求确认"));
    assert_eq!(k1.get::<_, Option<String>>(4).as_deref(), Some("lisi"));
    assert_eq!(k1.get::<_, Option<String>>(5).as_deref(), Some("1"));
    assert!(!k1.get::<_, bool>(6));
    let k2 = &rows[1];
    assert!(k2.get::<_, bool>(6));
    assert_eq!(k2.get::<_, Option<Value>>(1), None);
    assert_eq!(k2.get::<_, i64>(7), 2_000);
    // Nothing landed among the customers.
    assert!(rig.all_customers().await.is_empty());
    // Both tables are small now: the moment a cached plan could go wrong.
    assert_lookups_use_the_primary_key(&rig).await;
    mirror.stop().await;
    rig.cleanup().await;
}

/// The mirror's per-row lookup must use the primary key even as a generic plan made while the table
/// was small (the plan a long-lived connection keeps), or every write would scan the app's rows: an
/// index led by app_id looks just as good to the planner then.
async fn assert_lookups_use_the_primary_key(rig: &Rig) {
    for (table, id) in [
        ("mirror_customers", "customer_id"),
        ("mirror_contacts", "contact_id"),
    ] {
        rig.db
            .batch_execute(&format!(
                "SET plan_cache_mode = force_generic_plan; \
                 PREPARE lookup_{table}(text, text) AS SELECT message_id FROM {table} WHERE app_id = $1 AND {id} = $2"
            ))
            .await
            .unwrap();
        let plan: Vec<String> = rig
            .db
            .query(&format!("EXPLAIN EXECUTE lookup_{table}('a', 'b')"), &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(
            plan.iter()
                .any(|line| line.contains(&format!("{table}_pkey"))),
            "{plan:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_are_dead_lettered_with_a_reason_and_acked() {
    let rig = Rig::new("mirror-dead").await;
    let mirror = rig.start();
    let key = format!("customer.{}.upsert", rig.app_id);
    rig.publish_raw(&key, b"{not json").await;
    rig.publish_raw(
        &key,
        br#"{"schema":"weiling-relay.customer.v9","op":"upsert","app_id":"a","customer_id":"c","fetched_at":1,"record":{}}"#,
    )
    .await;
    let good = customer_record("c1", 1, "初步接触");
    rig.publish(&[rig.customer("c1", Op::Upsert, Some(&good), 1_000)])
        .await;
    // A batch whose dead-letter publish fails (the mirror's publisher still connecting) is requeued
    // whole and read again: its letters and records may then be counted twice (at least once).
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let counts = mirror.stats.snapshot();
        if counts.dead_letters.get("mirror_schema") >= Some(&2)
            && counts.get(Entity::Customer, Outcome::Applied) >= 1
        {
            break counts;
        }
        assert!(Instant::now() < deadline, "mirror settled only {counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(counts.get(Entity::Customer, Outcome::Applied), 1);
    // Stopping returns unacked deliveries to the queue: an empty queue means all three were acked.
    mirror.stop().await;
    assert_eq!(rig.depth(&rig.queue).await, 0);

    let dead = &rig.settings.amqp.dead_letter_queue;
    let mut letters = Vec::new();
    while let Some(m) = rig
        .channel
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        // A letter published again after a requeued batch is the same letter.
        if !letters
            .iter()
            .any(|l: &lapin::message::BasicGetMessage| l.delivery.data == m.delivery.data)
        {
            letters.push(m);
        }
    }
    assert_eq!(letters.len(), 2);
    let header = |m: &lapin::message::BasicGetMessage, name: &str| match m
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
    {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{name}: {other:?}"),
    };
    // Either may be parked first: a batch requeued by a lost database link parks its letters again.
    letters.sort_by_key(|l| l.delivery.data != b"{not json");
    assert_eq!(letters[0].delivery.data, b"{not json");
    for letter in &letters {
        assert_eq!(header(letter, "x-reason"), "mirror_schema");
        assert_eq!(header(letter, "x-original-routing-key"), key);
    }
    assert!(header(&letters[0], "x-detail").contains("not JSON"));
    assert!(header(&letters[1], "x-detail").contains("unknown schema"));
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_signing_key_only_signed_records_are_mirrored() {
    let rig = Rig::new_with(
        "mirror-signed",
        &[(
            "WEILING_RELAY__SECURITY__SIGN_RECORDS_KEY",
            "mirror-test-key",
        )],
    )
    .await;
    let mirror = rig.start();
    let signed = rig.customer(
        "c1",
        Op::Upsert,
        Some(&customer_record("c1", 1, "a")),
        1_000,
    );
    let mut forged = rig.customer(
        "c2",
        Op::Upsert,
        Some(&customer_record("c2", 1, "a")),
        1_000,
    );
    forged.body = serde_json::to_vec(&{
        let mut body: Value = serde_json::from_slice(&forged.body).unwrap();
        body["record"]["name"] = json!("changed after signing");
        body
    })
    .unwrap();
    rig.publish(&[signed, forged]).await;
    let counts = mirror.settled(2).await;
    assert_eq!(counts.get(Entity::Customer, Outcome::Applied), 1);
    assert_eq!(counts.dead_letters.get("mirror_signature"), Some(&1));
    assert!(rig.customer_row("c1").await.is_some());
    assert!(rig.customer_row("c2").await.is_none());
    mirror.stop().await;
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_connection_is_made_anew_and_nothing_is_lost() {
    let rig = Rig::new("mirror-dbloss").await;
    let application = format!("it-{}", rig.schema);
    let mut options = rig.options();
    options.database_url = format!("{DATABASE_URL}?application_name={application}").into();
    let mirror = rig.start_with(options);
    rig.publish(&[rig.customer("c0", Op::Upsert, Some(&customer_record("c0", 1, "a")), 1)])
        .await;
    mirror.settled(1).await;
    let killed = rig
        .db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(killed, 1, "the mirror's one connection");
    let batch: Vec<Outgoing> = (1..=50)
        .map(|i| {
            let id = format!("c{i}");
            rig.customer(&id, Op::Upsert, Some(&customer_record(&id, 1, "a")), 1)
        })
        .collect();
    rig.publish(&batch).await;
    mirror.settled(51).await;
    assert_eq!(rig.all_customers().await.len(), 51);
    mirror.stop().await;
    rig.cleanup().await;
}

/// The binary as a child process, killed for real.
fn mirror_process(rig: &Rig) -> KillOnDrop {
    start_mirror(&rig.env, &rig.queue, &rig.schema, &["--prefetch", "200"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mirror_restarted_ends_equal_to_the_latest_state_of_every_customer() {
    const CUSTOMERS: usize = 500;
    const STATES: u64 = 7;
    let rig = Rig::new("mirror-kill").await;
    let mut rng = rand::rng();

    // Several states per customer with increasing fetched_at, some ending deleted, a tenth of them
    // published twice, all shuffled: the expected mirror is the newest state of each.
    let mut messages = Vec::new();
    let mut expected: HashMap<String, (Option<Value>, i64, bool, String)> = HashMap::new();
    for c in 0..CUSTOMERS {
        let id = format!("cust-{c:04}");
        for s in 1..=STATES {
            let fetched_at = 1_745_818_700_000 + s * 1_000 + (c as u64 % 7);
            let gone = s == STATES && c.is_multiple_of(5);
            let record = customer_record(&id, s, ["初步接触", "需求确认", "赢单"][s as usize % 3]);
            let message = if gone {
                rig.customer(&id, Op::Missing, None, fetched_at)
            } else {
                rig.customer(&id, Op::Upsert, Some(&record), fetched_at)
            };
            if s == STATES {
                expected.insert(
                    id.clone(),
                    (
                        (!gone).then_some(record),
                        fetched_at as i64,
                        gone,
                        message_id(&message),
                    ),
                );
            }
            if (c + s as usize).is_multiple_of(10) {
                messages.push(message.clone());
            }
            messages.push(message);
        }
    }
    messages.shuffle(&mut rng);
    let total = messages.len();
    let (first_half, second_half) = messages.split_at(total / 2);

    let mut process = mirror_process(&rig);
    rig.publish(first_half).await;
    // Kill it once it has committed a few batches, while deliveries are still flowing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if rig.all_customers().await.len() >= CUSTOMERS / 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the mirror never wrote a row");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    process.kill_9();
    let at_kill = rig.all_customers().await;
    let waiting = rig.depth(&rig.queue).await;
    assert_ne!(at_kill, expected, "killed before the stream was complete");

    rig.publish(second_half).await;
    let restarted = Instant::now();
    let restarted_process = mirror_process(&rig);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rows = HashMap::new();
    while Instant::now() < deadline {
        rows = rig.all_customers().await;
        if rows == expected && rig.depth(&rig.queue).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = restarted.elapsed();
    let wrong: Vec<&String> = expected
        .keys()
        .filter(|id| rows.get(*id) != expected.get(*id))
        .collect();
    assert!(
        wrong.is_empty() && rows.len() == expected.len(),
        "{} of {} customers differ from their latest state (e.g. {:?}); {} rows",
        wrong.len(),
        expected.len(),
        wrong.first(),
        rows.len()
    );
    eprintln!(
        "mirror kill test: {total} records, {} rows at the kill with {waiting} still queued; \
         after the restart at least {} deliveries settled in {:.2} s ({:.0} records/s, start-up included)",
        at_kill.len(),
        u64::from(waiting) + second_half.len() as u64,
        elapsed.as_secs_f64(),
        (u64::from(waiting) + second_half.len() as u64) as f64 / elapsed.as_secs_f64()
    );
    drop(restarted_process);

    rig.cleanup().await;
}
