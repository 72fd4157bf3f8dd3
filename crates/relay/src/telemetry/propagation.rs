//! W3C trace context (`traceparent`, `tracestate`) in AMQP headers: an inbox event carries the
//! context of its callback's publish, a record the context of its own publish inside the flush, so
//! one callback's trace crosses the broker twice and a consumer can continue it.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into()));
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

/// `properties` with `span`'s context added to its headers; unchanged while traces are off.
pub fn inject(span: &tracing::Span, properties: BasicProperties) -> BasicProperties {
    if !super::tracing_on() {
        return properties;
    }
    let mut headers = properties.headers().clone().unwrap_or_default();
    TraceContextPropagator::new()
        .inject_context(&span.context(), &mut HeaderInjector(&mut headers));
    properties.with_headers(headers)
}

/// The context a message carries; empty when it carries none (or traces are off).
pub fn extract(headers: Option<&FieldTable>) -> opentelemetry::Context {
    match headers {
        Some(headers) if super::tracing_on() => {
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        }
        _ => opentelemetry::Context::new(),
    }
}

/// Makes `span` (just created, not yet entered) a child of the span whose context the message
/// carries, so a consumer's work joins the producer's trace.
pub fn continue_from(span: &tracing::Span, headers: Option<&FieldTable>) {
    if super::tracing_on() {
        // Only fails for a span already started or disabled: it then stays a root, which is harmless.
        let _ = span.set_parent(extract(headers));
    }
}

/// The span a message's context names, to link to (a window's flush links every event it enriches).
pub fn linked_span(headers: Option<&FieldTable>) -> Option<SpanContext> {
    let context = extract(headers);
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_header_is_read_back() {
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        );
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let span = context.span().span_context().clone();
        assert!(span.is_valid());
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut written = FieldTable::default();
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut written));
        assert_eq!(
            crate::amqp::message::text(Some(&written), "traceparent").as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
