//! One callback's trace, across both AMQP hops: an OTLP/HTTP receiver inside the test collects what
//! a relay process and a mirror process export, and the spans join by their ids and links.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use weiling_sim::events;

use crate::support::in_process::{AES_KEY, SHARED_BROKER, TOKEN, unique};
use crate::support::process::{ProcessRig, RelayProcess, drop_schema, free_port, start_mirror};

/// One exported span, as the test needs it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    links: Vec<(String, String)>,
    micros: u64,
    attributes: Vec<(String, String)>,
}

type Collected = Arc<Mutex<Vec<Exported>>>;

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn pairs(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

async fn receive(body: web::Bytes, collected: web::Data<Collected>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut spans = collected.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                let mut attributes = pairs(&span.attributes);
                for event in &span.events {
                    attributes.push(("event".into(), event.name.clone()));
                    attributes.extend(pairs(&event.attributes));
                }
                spans.push(Exported {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace: hex::encode(&span.trace_id),
                    id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    micros: span
                        .end_time_unix_nano
                        .saturating_sub(span.start_time_unix_nano)
                        / 1000,
                    attributes,
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

/// The spans that make up one callback's path, found by name and joined by ids and links.
struct Path {
    callback: Exported,
    stored: Exported,
    flush: Exported,
    call: Exported,
    records: Exported,
    applied: Exported,
}

fn find_path(spans: &[Exported], inbox: &str, events: &str, customers: &str) -> Option<Path> {
    let named = |service: &'static str, name: String| {
        spans
            .iter()
            .filter(move |s| s.service == service && s.name == name)
    };
    let callback = named("weiling-relay", "POST /weiling/callback".into())
        .next()?
        .clone();
    let stored = named("weiling-relay", format!("publish {events}"))
        .find(|s| s.trace == callback.trace && s.parent == callback.id)?
        .clone();
    let flush = named("weiling-relay", format!("process {inbox}"))
        .find(|s| s.links.contains(&(stored.trace.clone(), stored.id.clone())))?
        .clone();
    let call = named("weiling-relay", "POST /openapi/customer/batch".into())
        .find(|s| s.trace == flush.trace && s.parent == flush.id)?
        .clone();
    let records = named("weiling-relay", format!("publish {customers}"))
        .find(|s| s.trace == flush.trace && s.parent == flush.id)?
        .clone();
    let applied = named("weiling-relay-mirror", "process records".into())
        .find(|s| s.trace == records.trace && s.parent == records.id)?
        .clone();
    Some(Path {
        callback,
        stored,
        flush,
        call,
        records,
        applied,
    })
}

fn line(depth: usize, how: &str, span: &Exported) -> String {
    format!(
        "{}{how}{} [{}] {:.1} ms",
        "   ".repeat(depth),
        span.name,
        span.service,
        span.micros as f64 / 1000.0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callback_is_one_trace_from_the_http_edge_to_the_mirror() {
    let collected: Collected = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = {
        let collected = web::Data::new(collected.clone());
        HttpServer::new(move || {
            App::new()
                .app_data(collected.clone())
                .app_data(web::PayloadConfig::new(16 << 20))
                .route("/v1/traces", web::post().to(receive))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run()
    };
    let receiver = server.handle();
    tokio::spawn(server);

    let rig = ProcessRig::start_with(
        "traces",
        SHARED_BROKER,
        &[
            ("WEILING_RELAY__TELEMETRY__OTLP_ENDPOINT", &otlp),
            // The SDK's batch processor sends every half second instead of every five.
            ("OTEL_BSP_SCHEDULE_DELAY", "500"),
        ],
    )
    .await;
    let mut relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let mirror_queue = format!("{}.mirror", rig.check);
    let schema = unique("traces").replace('-', "_");
    let mirror = start_mirror(
        &rig.env,
        &mirror_queue,
        &schema,
        &["--metrics-listen", &format!("127.0.0.1:{}", free_port())],
    );
    // The mirror's queue exists once it is up: only then can the record reach it. A passive
    // declare of a missing queue closes its channel, so each try gets a channel of its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let channel = rig.connection.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(mirror_queue.as_str().into(), passive, Default::default())
            .await;
        if declared.is_ok() {
            let _ = channel.close(200, "found".into()).await;
            break;
        }
        assert!(Instant::now() < deadline, "the mirror declared its queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let customer = format!("trace-{}", unique("c"));
    let record = rig.sim.create_customer(&rig.app_id, &customer);
    let sent = rig
        .driver()
        .send(&events::add_customer(&record).to_json(&rig.app_id))
        .await;
    assert_eq!(sent.outcome, weiling_sim::Outcome::Ok);

    let amqp = &rig.settings.amqp;
    let deadline = Instant::now() + Duration::from_secs(60);
    let path = loop {
        let spans = collected.lock().unwrap().clone();
        if let Some(path) = find_path(
            &spans,
            &amqp.inbox_queue,
            &amqp.events_exchange,
            &amqp.customers_exchange,
        ) {
            break Some((path, spans));
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    relay.terminate();
    let _ = relay.wait_exit(Duration::from_secs(30)).await;
    drop(mirror);
    receiver.stop(false).await;
    let _ = rig
        .channel
        .queue_delete(mirror_queue.as_str().into(), Default::default())
        .await;
    drop_schema(&schema).await;
    let app_secret = rig.app_secret.clone();
    rig.cleanup().await;

    let Some((path, spans)) = path else {
        let names: Vec<_> = collected
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {} trace {} parent {}",
                    s.service, s.name, s.trace, s.parent
                )
            })
            .collect();
        panic!("no joined path of spans within 60 s; exported: {names:#?}");
    };
    assert_eq!(path.flush.trace, path.applied.trace);
    let kinds: HashMap<&str, &str> = [
        ("callback", &path.callback),
        ("flush", &path.flush),
        ("records", &path.records),
    ]
    .into_iter()
    .map(|(what, span)| {
        let system = span
            .attributes
            .iter()
            .find(|(k, _)| k == "messaging.system")
            .map_or("", |(_, v)| v.as_str());
        (what, system)
    })
    .collect();
    assert_eq!(
        kinds["flush"], "rabbitmq",
        "messaging conventions on the flush"
    );
    assert_eq!(kinds["records"], "rabbitmq");
    for span in &spans {
        for (key, value) in &span.attributes {
            for secret in [TOKEN, AES_KEY, app_secret.as_str(), customer.as_str()] {
                assert!(
                    !value.contains(secret) && !key.contains(secret),
                    "span {} carries a secret or the customer id in {key}",
                    span.name
                );
            }
        }
    }
    let tree = [
        line(0, "", &path.callback),
        line(1, "└─ ", &path.stored),
        line(2, "⇢ linked from ", &path.flush),
        line(3, "├─ ", &path.call),
        line(3, "└─ ", &path.records),
        line(4, "└─ ", &path.applied),
    ]
    .join("\n");
    eprintln!("one callback's trace:\n{tree}");
}
