//! The mirror's tables, as migrations compiled into the binary and run at every (re)connect.

use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("src/migrations");
}

/// Where refinery records which migrations ran, in the mirror's schema.
pub const HISTORY_TABLE: &str = "mirror_schema_history";
/// Serialises migrations of mirrors that start together against one database.
const MIGRATION_LOCK: i64 = 0x7765_696c_6d69_7272; // "weilmirr"

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("could not take the migration lock: {}", super::db::error_text(.0))]
    Lock(#[source] tokio_postgres::Error),
    #[error("migration failed: {}", super::db::error_text(.0))]
    Migrate(#[source] refinery::Error),
}

impl MigrationError {
    /// A lost connection is worth retrying; a migration PostgreSQL refused, or one that differs from
    /// what the database recorded, is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Lock(error) => super::db::is_transient(error),
            Self::Migrate(error) => match error.kind() {
                refinery::error::Kind::Connection(_, source) => source
                    .downcast_ref::<tokio_postgres::Error>()
                    .is_some_and(super::db::is_transient),
                _ => false,
            },
        }
    }
}

/// Applies the migrations not yet recorded in [`HISTORY_TABLE`]. Idempotent; concurrent callers wait
/// for each other on an advisory lock.
pub async fn migrate(client: &mut Client) -> Result<usize, MigrationError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(MigrationError::Lock)?;
    let result = embedded::migrations::runner()
        .set_migration_table_name(HISTORY_TABLE)
        .run_async(client)
        .await;
    // Also released when the session ends, should this fail.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    Ok(result
        .map_err(MigrationError::Migrate)?
        .applied_migrations()
        .len())
}
