//! TLS to PostgreSQL, as libpq's `sslmode` names it: `disable`, `prefer` (the default: encrypted
//! when the server offers it), `require` (encrypted, certificate not checked), `verify-ca` (signed by
//! a CA of `sslrootcert`) and `verify-full` (that, and issued for the host connected to).
//! tokio-postgres itself knows only the first three and refuses `sslrootcert`, so both are taken out
//! of the connection string here and enforced by the rustls client configuration.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode `{0}` is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("sslmode={0} needs sslrootcert=FILE (the CA certificates to trust, PEM)")]
    NoRootCert(&'static str),
    #[error("sslrootcert {path}: {problem}")]
    RootCert { path: String, problem: String },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// What the connection string asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS side of a PostgreSQL target: tokio-postgres' mode and the client configuration.
#[derive(Clone)]
pub struct Tls {
    pub ssl_mode: SslMode,
    /// `None`: no TLS at all (`sslmode=disable`).
    pub config: Option<Arc<ClientConfig>>,
}

/// Splits `sslmode` and `sslrootcert` off a `postgres://` URL or a `key=value` string and builds
/// the TLS side from them; returns the string tokio-postgres can parse.
pub fn split(conninfo: &str) -> Result<(String, Tls), TlsError> {
    let (rest, mode, root_cert) = take_params(conninfo);
    let mode = match mode.as_deref() {
        None | Some("prefer") => Mode::Prefer,
        Some("disable") => Mode::Disable,
        // libpq: `require` with a root certificate given verifies the chain like `verify-ca`.
        Some("require") if root_cert.is_some() => Mode::VerifyCa,
        Some("require") => Mode::Require,
        Some("verify-ca") => Mode::VerifyCa,
        Some("verify-full") => Mode::VerifyFull,
        Some(other) => return Err(TlsError::Mode(other.to_owned())),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let unverified = || -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider.clone())))
            .with_no_client_auth();
        Ok(Arc::new(config))
    };
    let tls = match mode {
        Mode::Disable => Tls {
            ssl_mode: SslMode::Disable,
            config: None,
        },
        Mode::Prefer => Tls {
            ssl_mode: SslMode::Prefer,
            config: Some(unverified()?),
        },
        Mode::Require => Tls {
            ssl_mode: SslMode::Require,
            config: Some(unverified()?),
        },
        Mode::VerifyCa | Mode::VerifyFull => {
            let name = if mode == Mode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            };
            let path = root_cert.ok_or(TlsError::NoRootCert(name))?;
            let roots = Arc::new(read_roots(&path)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| TlsError::RootCert {
                    path: path.clone(),
                    problem: error.to_string(),
                })?;
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous();
            let config = if mode == Mode::VerifyCa {
                builder.with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
            } else {
                builder.with_custom_certificate_verifier(webpki)
            };
            Tls {
                ssl_mode: SslMode::Require,
                config: Some(Arc::new(config.with_no_client_auth())),
            }
        }
    };
    Ok((rest, tls))
}

fn read_roots(path: &str) -> Result<RootCertStore, TlsError> {
    let problem = |problem: String| TlsError::RootCert {
        path: path.to_owned(),
        problem,
    };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|error| problem(error.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|error| problem(error.to_string()))?;
    if certificates.is_empty() {
        return Err(problem("no PEM certificate in it".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|error| problem(error.to_string()))?;
    }
    Ok(roots)
}

/// `(what remains, sslmode, sslrootcert)`: URL query parameters or `key=value` words.
fn take_params(conninfo: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root_cert) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root_cert = Some(value.to_owned());
            true
        }
        _ => false,
    };
    let rest = if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        match conninfo.split_once('?') {
            None => conninfo.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(key, &percent_decode(value))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        conninfo
            .split_whitespace()
            .filter(|word| {
                let (key, value) = word.split_once('=').unwrap_or((word, ""));
                !take(key.trim(), value.trim().trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, mode, root_cert)
}

/// `%2F` and friends in a query value (a file path in `sslrootcert`).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (byte, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `prefer` and `require`: encrypted, the certificate not checked (libpq's meaning of those modes);
/// the handshake's signatures are still verified.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not compared.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, mode, root) = take_params(
            "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        );
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = take_params("host=h user=u sslmode=require dbname=d");
        assert_eq!(rest, "host=h user=u dbname=d");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);
        let (rest, mode, _) = take_params("postgres://h/db?sslmode=disable");
        assert_eq!(
            (rest.as_str(), mode.as_deref()),
            ("postgres://h/db", Some("disable"))
        );
    }

    #[test]
    fn verifying_modes_need_a_root_certificate_and_unknown_modes_are_refused() {
        assert!(matches!(
            split("postgres://h/db?sslmode=verify-full"),
            Err(TlsError::NoRootCert("verify-full"))
        ));
        assert!(matches!(
            split("postgres://h/db?sslmode=allow-maybe"),
            Err(TlsError::Mode(_))
        ));
        let (_, tls) = split("postgres://h/db").unwrap();
        assert_eq!(tls.ssl_mode, SslMode::Prefer);
        let (_, tls) = split("postgres://h/db?sslmode=disable").unwrap();
        assert!(tls.config.is_none());
    }
}
