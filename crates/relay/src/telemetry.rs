//! Logging setup: JSON lines by default, human-readable on a terminal, filtered like `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// lapin logs returned messages at WARN with their body (customer data), so it is held to ERROR
/// unless the operator's filter names it explicitly.
const DEFAULT_FILTER: &str = "info,lapin=error,amq_protocol=error";

pub fn init(filter: Option<&str>) {
    let filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    drop(result);
}
