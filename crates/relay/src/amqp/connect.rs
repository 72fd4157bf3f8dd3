//! Opening a broker connection the way every part of the relay does: the configured heartbeat, and
//! for `amqps://` TLS (rustls) verified against the system's roots plus `amqp.tls_ca_file`.

use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};
use rand::seq::SliceRandom;

use crate::config::AmqpSettings;

/// Reads a PEM file of CA certificates; the error says what is wrong with it, never its content.
pub fn read_ca_file(path: &str) -> Result<String, String> {
    let pem = std::fs::read_to_string(path).map_err(|error| format!("{path}: {error}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{path}: no PEM certificate (BEGIN CERTIFICATE) in it"
        ));
    }
    Ok(pem)
}

/// Connects to one of `amqp.url`'s addresses with the configured heartbeat (an `amqps://` URL over
/// TLS). Several addresses (the nodes of one cluster) are tried in a shuffled order, so replicas
/// spread over the nodes and a dead node costs one refused or timed-out attempt; each attempt is
/// bounded by `amqp.connect_timeout_ms`. The error is the last address's.
pub async fn connect(
    amqp: &AmqpSettings,
    properties: ConnectionProperties,
) -> Result<Connection, lapin::Error> {
    let mut addresses = amqp.addresses();
    addresses.shuffle(&mut rand::rng());
    let timeout = Duration::from_millis(amqp.connect_timeout_ms);
    let mut last = None;
    for address in addresses {
        match tokio::time::timeout(timeout, connect_one(amqp, address, properties.clone())).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => last = Some(error),
            Err(_) => {
                let message = format!("no connection within {} ms", timeout.as_millis());
                last = Some(std::io::Error::new(std::io::ErrorKind::TimedOut, message).into());
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("amqp.url names no address").into()))
}

async fn connect_one(
    amqp: &AmqpSettings,
    address: &str,
    properties: ConnectionProperties,
) -> Result<Connection, lapin::Error> {
    let uri = with_query(address, amqp.heartbeat_s, amqp.frame_max);
    if amqp.tls_ca_file.is_empty() {
        return Connection::connect(&uri, properties).await;
    }
    // Read at each connect, so a renewed CA file is picked up by the next reconnect.
    let pem = read_ca_file(&amqp.tls_ca_file).map_err(std::io::Error::other)?;
    let tls = OwnedTLSConfig {
        cert_chain: Some(pem),
        ..OwnedTLSConfig::default()
    };
    DefaultConnectionBuilder::new()?
        .with_uri_str(uri)
        .with_properties(properties)
        .with_tls_config(tls)
        .connect()
        .await
}

/// Asks for a short heartbeat, so a half-open link is noticed in seconds, and for the configured
/// frame_max, which sizes the client's buffers; a value the URL sets itself wins.
fn with_query(url: &str, heartbeat_s: u16, frame_max: u32) -> String {
    let mut url = url.to_owned();
    for (name, value) in [
        ("heartbeat", heartbeat_s.to_string()),
        ("frame_max", frame_max.to_string()),
    ] {
        if !url.contains(&format!("{name}=")) {
            let separator = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{separator}{name}={value}");
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_and_frame_max_are_added_once() {
        assert_eq!(
            with_query("amqp://h/%2f", 10, 16384),
            "amqp://h/%2f?heartbeat=10&frame_max=16384"
        );
        assert_eq!(
            with_query("amqp://h/%2f?frame_max=8192", 10, 16384),
            "amqp://h/%2f?frame_max=8192&heartbeat=10"
        );
        assert_eq!(
            with_query("amqp://h/?heartbeat=5", 10, 16384),
            "amqp://h/?heartbeat=5&frame_max=16384"
        );
    }
}
