//! The PostgreSQL side: where to connect (the URL never reaches a log), the optional schema, and one
//! live connection with its migrations run and its statements prepared.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};
use tracing::{info, warn};

use super::apply::Statements;
use super::schema::{self, MigrationError};
use super::tls::{self, Tls, TlsError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Setting up a connection (schema, migrations, statements) on a healthy server takes milliseconds;
/// a first migration on a big database may take longer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Server-side bound on one statement, so a stuck one ends on the server too, not only here.
const STATEMENT_TIMEOUT_MS: u32 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {}", error_text(.0))]
    Url(#[source] tokio_postgres::Error),
    #[error(
        "invalid schema name `{0}`: use 1–63 letters, digits and underscores, not starting with a digit"
    )]
    SchemaName(String),
    #[error("PostgreSQL: {}", error_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("PostgreSQL TLS: {0}")]
    Tls(#[from] TlsError),
}

impl DbError {
    /// Worth another attempt after a backoff (the server is down, restarting, or slow), as opposed to
    /// a configuration or migration problem that no retry fixes.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Url(_) | Self::SchemaName(_) | Self::Tls(_) => false,
            Self::Postgres(error) => is_transient(error),
            Self::Migration(error) => error.is_transient(),
            Self::Timeout(_) => true,
        }
    }
}

/// An error with its causes: tokio-postgres' own text is only the kind ("db error"); the server's
/// message and SQLSTATE are in the source.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if let Some(db) = error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
    {
        text.push_str(&format!(" (SQLSTATE {})", db.code().code()));
    }
    text
}

/// No answer, a lost connection, or a server that is starting, stopping, short of resources or broke a
/// transaction off (SQLSTATE classes 08, 40, 53, 57): the same work may well succeed later.
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    error.code().is_none_or(|c| {
        ["08", "40", "53", "57"]
            .iter()
            .any(|class| c.code().starts_with(class))
    })
}

/// PostgreSQL refused a value (SQLSTATE class 22, data exception, or 23, integrity violation): the
/// record itself is at fault and would fail again on every redelivery.
pub fn is_data_error(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// Where the mirror writes.
#[derive(Clone)]
pub struct Target {
    config: Config,
    tls: Tls,
    schema: Option<String>,
}

impl Target {
    /// `url` is a `postgres://` URL or a `key=value` string; `schema`, if given, is created when
    /// missing and becomes the connection's `search_path`.
    pub fn new(url: &SecretString, schema: Option<&str>) -> Result<Self, DbError> {
        let (conninfo, tls) = tls::split(url.expose_secret())?;
        let mut config = Config::from_str(&conninfo).map_err(DbError::Url)?;
        config.ssl_mode(tls.ssl_mode);
        if config.get_application_name().is_none() {
            config.application_name("weiling-relay-mirror");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let schema = match schema {
            Some(name) if valid_schema_name(name) => Some(name.to_owned()),
            Some(name) => return Err(DbError::SchemaName(name.to_owned())),
            None => None,
        };
        Ok(Self {
            config,
            tls,
            schema,
        })
    }

    /// `user@host:port/dbname[ schema s]`: enough to find the database, never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(
                self.config
                    .get_ports()
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(5432)),
            )
            .map(|(host, port)| match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            })
            .collect();
        let mut out = format!(
            "{}@{}/{}",
            self.config.get_user().unwrap_or("(default user)"),
            if hosts.is_empty() {
                "(default host)".to_owned()
            } else {
                hosts.join(",")
            },
            self.config.get_dbname().unwrap_or("(default database)")
        );
        if let Some(schema) = &self.schema {
            out.push_str(&format!(" schema {schema}"));
        }
        out
    }

    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Connects, sets the schema, runs the migrations and prepares the statements.
    pub async fn connect(&self) -> Result<Db, DbError> {
        let connect_timeout = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        let timed_out = |_| DbError::Timeout(connect_timeout);
        let (mut client, task) = match &self.tls.config {
            None => {
                let (client, connection) =
                    tokio::time::timeout(connect_timeout, self.config.connect(NoTls))
                        .await
                        .map_err(timed_out)??;
                (client, drive(connection))
            }
            Some(config) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**config).clone());
                let (client, connection) =
                    tokio::time::timeout(connect_timeout, self.config.connect(tls))
                        .await
                        .map_err(timed_out)??;
                (client, drive(connection))
            }
        };
        match tokio::time::timeout(SETUP_TIMEOUT, self.set_up(&mut client)).await {
            Ok(Ok(statements)) => Ok(Db {
                client,
                statements,
                task,
            }),
            Ok(Err(error)) => {
                task.abort();
                Err(error)
            }
            Err(_) => {
                task.abort();
                Err(DbError::Timeout(SETUP_TIMEOUT))
            }
        }
    }

    async fn set_up(&self, client: &mut Client) -> Result<Statements, DbError> {
        // The server's NOTICEs ("already exists, skipping") would only clutter the log.
        client
            .batch_execute("SET client_min_messages = warning")
            .await?;
        if let Some(schema) = &self.schema {
            // The name was checked to be a plain identifier; quoting keeps its case.
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\""
                ))
                .await?;
        }
        let applied = schema::migrate(client).await?;
        if applied > 0 {
            info!(applied, "mirror migrations applied");
        }
        client
            .batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            .await?;
        Ok(Statements::prepare(client).await?)
    }
}

/// Runs a connection until it ends; the client talks to it through its channel.
fn drive<S, T>(connection: tokio_postgres::Connection<S, T>) -> JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            warn!(error = %error_text(&error), "PostgreSQL connection ended");
        }
    })
}

fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

/// One live connection, ready to apply records.
pub struct Db {
    pub client: Client,
    pub statements: Statements,
    task: JoinHandle<()>,
}

impl Db {
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // The client is going away anyway; ending the connection task at once frees the socket.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_never_shows_the_password() {
        let url = SecretString::from("postgres://mirror:s3cr3t@db.internal:6543/crm");
        let target = Target::new(&url, Some("crm_mirror")).unwrap();
        let text = target.describe();
        assert_eq!(text, "mirror@db.internal:6543/crm schema crm_mirror");
        assert!(!text.contains("s3cr3t"));
        let kv = SecretString::from("host=127.0.0.1 user=postgres password=hunter2 dbname=test");
        let text = Target::new(&kv, None).unwrap().describe();
        assert_eq!(text, "postgres@127.0.0.1:5432/test");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        let url = SecretString::from("postgres://u@h/d");
        for good in ["mirror", "_x", "it_mirror_123_4", "CRM"] {
            assert!(Target::new(&url, Some(good)).is_ok(), "{good}");
        }
        for bad in ["", "1abc", "a-b", "a\"b", "a;drop", &"x".repeat(64)] {
            assert!(
                matches!(Target::new(&url, Some(bad)), Err(DbError::SchemaName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let url = SecretString::from("postgres://u:pw@h:notaport/d");
        let Err(error) = Target::new(&url, None) else {
            panic!("a port that is not a number must be refused");
        };
        assert!(!error.to_string().contains("pw"), "{error}");
    }
}
