//! TLS to the broker: a private RabbitMQ node with an amqps listener, its certificates made here at
//! test time (no private key is ever committed).

use lapin::ConnectionProperties;
use relay::config::Settings;

use crate::support::in_process::{Spawn, spawn_with, unique};
use crate::support::private_broker::{PrivateBroker, TlsFiles};

/// A CA and a server certificate it signed, for `localhost` and `127.0.0.1`.
pub struct Pki {
    pub ca: String,
    pub files: TlsFiles,
}

pub fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    Pki {
        ca: ca_cert.pem(),
        files: TlsFiles {
            ca: ca_cert.pem(),
            cert: server_cert.pem(),
            key: server_key.serialize_pem(),
        },
    }
}

/// Writes `pem` to a file of its own and returns its path.
pub fn write_temp(name: &str, pem: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}.pem", unique(name)));
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_stored_over_amqps_verified_with_the_configured_ca() {
    let pki = pki("amqps");
    let broker = PrivateBroker::start_with_tls(pki.files.clone()).await;
    let ca_file = write_temp("broker-ca", &pki.ca);
    let app = spawn_with(
        Spawn {
            amqp_url: broker.amqps_url(),
            // The test reads the queues over the plain listener of the same node.
            inspect_url: broker.amqp_url(),
            ..Spawn::default()
        }
        .set("WEILING_RELAY__AMQP__TLS_CA_FILE", &ca_file),
    )
    .await;
    let answer = app.post(&app.callback("cust-tls")).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "success"));
    assert_eq!(
        app.depth(app.inbox()).await,
        1,
        "stored through the TLS link"
    );
    app.teardown().await;
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_of_another_ca_is_refused_with_a_clear_error() {
    let (pki, stranger) = (pki("amqps"), pki("stranger"));
    let broker = PrivateBroker::start_with_tls(pki.files.clone()).await;
    let wrong_ca = write_temp("wrong-ca", &stranger.ca);
    let env = std::collections::HashMap::from([
        ("WEILING_RELAY__AMQP__URL".to_owned(), broker.amqps_url()),
        (
            "WEILING_RELAY__AMQP__TLS_CA_FILE".to_owned(),
            wrong_ca.clone(),
        ),
        ("WEILING_RELAY_APP_ID".to_owned(), "wloatls".to_owned()),
        ("WEILING_RELAY_APP_SECRET".to_owned(), "secret".to_owned()),
        (
            "WEILING_RELAY_TOKEN".to_owned(),
            crate::support::in_process::TOKEN.to_owned(),
        ),
        (
            "WEILING_RELAY_ENCODING_AES_KEY".to_owned(),
            crate::support::in_process::AES_KEY.to_owned(),
        ),
    ]);
    let settings = Settings::load(None, &env).unwrap();
    let connected =
        relay::amqp::connect::connect(&settings.amqp, ConnectionProperties::default()).await;
    let Err(refused) = connected else {
        panic!("a certificate signed by another CA is refused")
    };
    let text = refused.to_string();
    eprintln!("refused: {text}");
    assert!(
        text.contains("UnknownIssuer") || text.contains("unknown issuer"),
        "the error names the cause: {text}"
    );

    // The relay itself stays unready and answers 503, storing nothing.
    let app = spawn_with(
        Spawn {
            amqp_url: broker.amqps_url(),
            inspect_url: broker.amqp_url(),
            wait_ready: false,
            ..Spawn::default()
        }
        .set("WEILING_RELAY__AMQP__TLS_CA_FILE", &wrong_ca),
    )
    .await;
    let answer = app.post(&app.callback("cust-wrong-ca")).await;
    assert_eq!(answer.status, 503);
    app.teardown().await;
    let _ = std::fs::remove_file(wrong_ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_reaches_a_tls_only_postgresql_verified_with_sslrootcert() {
    use relay_mirror::db::Target;
    use secrecy::SecretString;

    let (pki, stranger) = (pki("postgres"), pki("stranger"));
    let pg = crate::support::private_postgres::PrivatePostgres::start_tls_only(&pki.files);
    let (ca, wrong_ca) = (
        write_temp("pg-ca", &pki.ca),
        write_temp("pg-wrong-ca", &stranger.ca),
    );
    let target = |query: &str| {
        Target::new(
            &SecretString::from(format!("{}?{query}", pg.url())),
            Some("tls_mirror"),
        )
        .unwrap()
    };

    // verify-full: the chain leads to the CA and the certificate names 127.0.0.1; the mirror's
    // migrations and statements run over it.
    let db = target(&format!("sslmode=verify-full&sslrootcert={ca}"))
        .connect()
        .await
        .expect("verified TLS connection");
    let row = db
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is encrypted");
    drop(db);

    // Another CA: refused, and the error says why.
    let connected = target(&format!("sslmode=verify-full&sslrootcert={wrong_ca}"))
        .connect()
        .await;
    let Err(refused) = connected else {
        panic!("a certificate of another CA is refused")
    };
    let refused = refused.to_string();
    eprintln!("refused: {refused}");
    assert!(
        refused.contains("UnknownIssuer") || refused.contains("unknown issuer"),
        "the error names the cause: {refused}"
    );
    // Without TLS the server turns the connection away (hostnossl reject): TLS is what was used.
    assert!(target("sslmode=disable").connect().await.is_err());
    // `require` encrypts without checking the certificate, as libpq does.
    assert!(target("sslmode=require").connect().await.is_ok());
    let _ = std::fs::remove_file(ca);
    let _ = std::fs::remove_file(wrong_ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_consumes_over_amqps_and_writes_to_a_tls_only_postgresql() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use relay::entity::Entity;
    use relay::pipeline::publish::record::{self, Op, Record};
    use relay::pipeline::window::coalescer::IdSource;
    use relay_harness::scenario::{WeilingApp, relay_env};
    use relay_mirror::MirrorOptions;
    use relay_mirror::db::Target;
    use relay_mirror::stats::Stats;
    use secrecy::SecretString;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio_util::sync::CancellationToken;

    let (broker_pki, pg_pki) = (pki("amqps"), pki("postgres"));
    let broker = PrivateBroker::start_with_tls(broker_pki.files.clone()).await;
    let pg = crate::support::private_postgres::PrivatePostgres::start_tls_only(&pg_pki.files);
    let (broker_ca, pg_ca) = (
        write_temp("broker-ca", &broker_pki.ca),
        write_temp("pg-ca", &pg_pki.ca),
    );
    let prefix = unique("tls-mirror");
    let app = WeilingApp::generate(&prefix.replace('-', ""));
    let mut env = relay_env(&prefix, &broker.amqps_url(), "http://127.0.0.1:9", &app);
    env.insert("WEILING_RELAY__AMQP__TLS_CA_FILE".into(), broker_ca.clone());
    let settings = Settings::load(None, &env).unwrap();
    let database_url = format!("{}?sslmode=verify-full&sslrootcert={pg_ca}", pg.url());
    let options = MirrorOptions {
        database_url: SecretString::from(database_url.clone()),
        queue: format!("{prefix}.mirror"),
        prefetch: 50,
        schema: Some("tls_mirror".into()),
    };
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (options, settings, stop) = (options.clone(), settings.clone(), stop.clone());
        async move { relay_mirror::run(&options, &settings, stop, Arc::new(Stats::default())).await }
    });

    // A record published (over the node's plain listener) once the mirror's queue exists.
    let connection =
        lapin::Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if probe
            .queue_declare(
                options.queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror never declared its queue over amqps"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = serde_json::json!({"customer_id": "cust-tls", "name": "加密"});
    let raw = serde_json::value::to_raw_value(&state).unwrap();
    let source = IdSource {
        events: 1,
        event_types: BTreeSet::from(["add_customer".to_owned()]),
        first_event_at_ms: 1,
        deliveries: Vec::new(),
    };
    let message = record::message(
        &settings.amqp.customers_exchange,
        &Record {
            entity: Entity::Customer,
            app_id: &app.app_id,
            id: "cust-tls",
            op: Op::Upsert,
            record: Some(&raw),
            source: &source,
            fetched_at_ms: 2,
        },
        None,
    );
    channel
        .basic_publish(
            message.exchange.as_str().into(),
            message.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &message.body,
            message.properties.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // The row arrives in the TLS-only database.
    let db = Target::new(&SecretString::from(database_url), Some("tls_mirror"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let name: String = loop {
        let row = db
            .client
            .query_opt(
                "SELECT name FROM mirror_customers WHERE customer_id = 'cust-tls'",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "the record never reached the mirror"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(name, "加密");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
    let _ = connection.close(200, "done".into()).await;
    let _ = std::fs::remove_file(broker_ca);
    let _ = std::fs::remove_file(pg_ca);
}
