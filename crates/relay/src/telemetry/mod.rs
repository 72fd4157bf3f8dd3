//! Logs, and traces when asked for: JSON lines by default (human-readable on a terminal), filtered
//! like `RUST_LOG`; with `telemetry.otlp_endpoint` set, the same spans also go to an OpenTelemetry
//! collector over OTLP/HTTP. With it empty no exporter, provider or layer is built, and the
//! trace-only code ([`tracing_on`]) does not run.

pub mod propagation;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// lapin logs returned messages at WARN with their body (customer data), so it is held to ERROR
/// unless the operator's filter names it explicitly.
const DEFAULT_FILTER: &str = "info,lapin=error,amq_protocol=error";
/// The spans exported: the relay's own (info and up), none of the AMQP client's internals.
const SPAN_FILTER: &str = "info,lapin=off,amq_protocol=off";
/// One export request to the collector; a collector that does not answer costs spans, never the relay.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. Trace context headers and the spans that exist only for traces
/// are made only then.
pub fn tracing_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter for `telemetry.otlp_endpoint` could not be built: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Where traces go: the collector's OTLP/HTTP base URL and the name this process reports.
#[derive(Debug, Clone)]
pub struct Otlp {
    pub endpoint: String,
    pub service: &'static str,
}

/// Holds the tracer provider, if any; [`Telemetry::shutdown`] sends the spans still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether an exporter was built.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Call outside the async runtime: the exporter's HTTP client blocks.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            TRACING.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown() {
                tracing::warn!(error = %error, "spans not exported at shutdown");
            }
        }
    }
}

/// Installs the process' subscriber (a second call, in tests, keeps the first one). With `otlp`
/// `None` nothing of OpenTelemetry is built.
pub fn init(filter: Option<&str>, otlp: Option<Otlp>) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let provider = otlp.map(tracer_provider).transpose()?;
    // Traces have a filter of their own: a quieter log level must not cut spans out of them.
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("weiling-relay"))
            .with_filter(EnvFilter::new(SPAN_FILTER))
    });
    let registry = tracing_subscriber::registry().with(spans);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let installed = if std::io::stderr().is_terminal() {
        registry.with(logs.with_filter(filter)).try_init()
    } else {
        registry
            .with(logs.json().flatten_event(true).with_filter(filter))
            .try_init()
    };
    if installed.is_ok() && provider.is_some() {
        TRACING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(otlp: Otlp) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(&otlp.endpoint))
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(otlp.service).build())
        .build())
}

/// A producer span for one publish (or a batch of them) to `exchange`, named and attributed after
/// the messaging conventions; the caller records the routing key or the batch size. `Span::none()`
/// while traces are off.
pub fn publish_span(exchange: &str) -> tracing::Span {
    if !tracing_on() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "publish",
        otel.name = format!("publish {exchange}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "publish",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = tracing::field::Empty,
        messaging.batch.message_count = tracing::field::Empty,
    )
}

/// OTLP/HTTP's traces path on the collector's base URL (given as is, the exporter posts to it).
fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_endpoint_nothing_is_built() {
        let telemetry = init(Some("off"), None).unwrap_or_default();
        assert!(!telemetry.exporting(), "no provider, no exporter");
        assert!(!tracing_on());
    }

    #[test]
    fn spans_go_to_the_collectors_traces_path() {
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c.example"),
            "https://c.example/v1/traces"
        );
    }
}
