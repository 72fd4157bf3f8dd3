//! `weiling-relay demo` with small numbers, on the real local RabbitMQ and PostgreSQL: the mirror it
//! runs ends equal to the simulator row by row, and its queue and schema are gone afterwards.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use relay::entity::Entity;
use relay_demo::DemoArgs;
use relay_demo::repair::ROTATED;
use relay_mirror::apply::Outcome;

use crate::support::in_process::SHARED_BROKER;

const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn args(database_url: &str) -> DemoArgs {
    DemoArgs {
        callbacks: 150,
        customers: 40,
        concurrency: 8,
        fault_5xx: 0.05,
        database_url: database_url.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_mirror_equals_the_simulator_row_by_row() {
    let outcome = relay_demo::execute(&args(DATABASE_URL)).await.unwrap();
    let mirror = &outcome.mirror;
    assert!(outcome.report.ok(), "{:#?}", outcome.report);
    assert_eq!(mirror.differences, Vec::<String>::new(), "{mirror:#?}");
    assert!(mirror.error.is_none(), "{mirror:#?}");
    assert!(mirror.ok());
    assert!(outcome.ok());

    // Every customer the simulator knows (the scenario's and the rotation's), every unknown id (the
    // scenario's and the reconcile's one).
    let report = &outcome.report;
    assert_eq!(report.not_acknowledged, 0, "{report:#?}");
    assert_eq!(
        mirror.records_compared,
        report.customers_changed + ROTATED,
        "{mirror:#?}"
    );
    assert_eq!(mirror.deleted_compared, report.unknown_ids.len() + 1);
    assert_eq!(
        mirror.compared,
        mirror.records_compared + mirror.deleted_compared
    );
    let applied = mirror.counts.get(Entity::Customer, Outcome::Applied);
    let deleted = mirror.counts.get(Entity::Customer, Outcome::Deleted);
    assert!(
        applied >= mirror.records_compared as u64,
        "{:?}",
        mirror.counts
    );
    assert!(
        deleted >= mirror.deleted_compared as u64,
        "{:?}",
        mirror.counts
    );
    assert_eq!(mirror.counts.dead_lettered(), 0);
    let rows: Vec<&str> = mirror.rows().iter().map(|(name, _)| *name).collect();
    assert!(rows.contains(&"mirror differences"), "{rows:?}");

    // The schema and the queue are gone.
    let (db, connection) = tokio_postgres::connect(DATABASE_URL, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let schemas: i64 = db
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            &[&mirror.schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "schema {} was left behind", mirror.schema);
    let broker = lapin::Connection::connect(SHARED_BROKER, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = broker.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    assert!(!mirror.queue.is_empty());
    assert!(
        channel
            .queue_declare(mirror.queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_err(),
        "queue {} was left behind",
        mirror.queue
    );
    let _ = broker.close(200, "test done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_names_an_unreachable_database_without_its_password() {
    // Nothing listens on port 1.
    let Err(error) =
        relay_demo::execute(&args("postgres://postgres:hunter2@127.0.0.1:1/test")).await
    else {
        panic!("the demo must fail without its PostgreSQL");
    };
    let text = error.to_string();
    assert!(text.contains("postgres@127.0.0.1:1/test"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
