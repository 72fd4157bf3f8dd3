//! Records → rows. One statement per record decides and writes in a single round trip; a batch of
//! records is one transaction, its statements pipelined in delivery order.
//!
//! The rule, per (app_id, id): a state replaces the row only when it is newer — a greater
//! `fetched_at`, or on an equal `fetched_at` the greater `message_id` (so mirrors converge to the same
//! row whatever order they saw the two states in). A state with the row's own `message_id` is a
//! duplicate: nothing changes, except that the row's `fetched_at` advances when this copy was fetched
//! later (the same content fetched again still outranks an older, different state that may yet
//! arrive). `missing` follows the same rule and leaves `record` and the typed columns NULL and
//! `deleted` true; a later upsert brings the row back.

use futures::future::try_join_all;
use tokio_postgres::{Client, Statement, Transaction};

use super::message::{Entity, MirrorRecord, Op};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The row now holds this upsert.
    Applied,
    /// The row now holds this `missing` (deleted = true).
    Deleted,
    /// The row holds a newer state; nothing changed.
    Stale,
    /// The row already holds this very state (same `message_id`).
    Duplicate,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Applied,
        Outcome::Deleted,
        Outcome::Stale,
        Outcome::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Deleted => "deleted",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
        }
    }

    /// `prior` is the row's `message_id` before the statement, `written` whether it changed the row.
    fn decide(op: Op, incoming: &str, prior: Option<&str>, written: bool) -> Self {
        if prior == Some(incoming) {
            Self::Duplicate
        } else if !written {
            Self::Stale
        } else {
            match op {
                Op::Upsert => Self::Applied,
                Op::Missing => Self::Deleted,
            }
        }
    }
}

/// The condition under which an incoming state (`excluded`) replaces the row (`t`), and the
/// `applied_at` that marks a content change; shared by both tables.
const NEWER: &str = "excluded.fetched_at > t.fetched_at \
     OR (excluded.fetched_at = t.fetched_at AND excluded.message_id > t.message_id)";
/// `applied_at` moves only when the content does: a later publication of the same state (a new
/// `message_id`, a newer `fetched_at`) advances `fetched_at` alone.
const APPLIED_AT: &str = "CASE WHEN t.record IS NOT DISTINCT FROM excluded.record \
     AND t.deleted = excluded.deleted THEN t.applied_at ELSE now() END";

fn upsert_sql(table: &str, id: &str, columns: &[&str]) -> String {
    let all: Vec<&str> = ["app_id", id, "record"]
        .into_iter()
        .chain(columns.iter().copied())
        .chain(["fetched_at", "deleted", "message_id"])
        .collect();
    let placeholders: Vec<String> = (1..=all.len()).map(|i| format!("${i}")).collect();
    let updates: Vec<String> = all
        .iter()
        .skip(2)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "WITH prior AS (SELECT message_id FROM {table} WHERE app_id = $1 AND {id} = $2), \
         written AS (\
           INSERT INTO {table} AS t ({names}) VALUES ({values}) \
           ON CONFLICT (app_id, {id}) DO UPDATE SET {updates}, applied_at = {APPLIED_AT} \
           WHERE {NEWER} RETURNING 1) \
         SELECT (SELECT message_id FROM prior), EXISTS (SELECT 1 FROM written)",
        names = all.join(", "),
        values = placeholders.join(", "),
        updates = updates.join(", "),
    )
}

/// The two upserts, prepared once per connection.
pub struct Statements {
    customer: Statement,
    contact: Statement,
}

impl Statements {
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let customer = upsert_sql(
            "mirror_customers",
            "customer_id",
            &[
                "name",
                "customer_stage",
                "lost_state",
                "external_userid",
                "follow_user_ids",
            ],
        );
        let contact = upsert_sql(
            "mirror_contacts",
            "contact_id",
            &["user_name", "customer_stage", "owner_id", "status"],
        );
        Ok(Self {
            customer: client.prepare(&customer).await?,
            contact: client.prepare(&contact).await?,
        })
    }
}

/// Applies `records` in one transaction, in order, and commits. One outcome per record; on an error
/// nothing is committed.
pub async fn apply_batch(
    client: &mut Client,
    statements: &Statements,
    records: &[&MirrorRecord],
) -> Result<Vec<Outcome>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Polled together, the statements are pipelined: sent in this order, executed by the server in
    // this order, without a round trip each.
    let outcomes = try_join_all(records.iter().map(|r| apply_one(&tx, statements, r))).await?;
    tx.commit().await?;
    Ok(outcomes)
}

async fn apply_one(
    tx: &Transaction<'_>,
    statements: &Statements,
    r: &MirrorRecord,
) -> Result<Outcome, tokio_postgres::Error> {
    let deleted = r.op == Op::Missing;
    let row = match r.entity {
        Entity::Customer => {
            let c = r.customer_columns();
            tx.query_one(
                &statements.customer,
                &[
                    &r.app_id,
                    &r.id,
                    &r.record,
                    &c.name,
                    &c.customer_stage,
                    &c.lost_state,
                    &c.external_userid,
                    &c.follow_user_ids,
                    &r.fetched_at,
                    &deleted,
                    &r.message_id,
                ],
            )
            .await?
        }
        Entity::Contact => {
            let c = r.contact_columns();
            tx.query_one(
                &statements.contact,
                &[
                    &r.app_id,
                    &r.id,
                    &r.record,
                    &c.user_name,
                    &c.customer_stage,
                    &c.owner_id,
                    &c.status,
                    &r.fetched_at,
                    &deleted,
                    &r.message_id,
                ],
            )
            .await?
        }
    };
    let prior: Option<String> = row.try_get(0)?;
    let written: bool = row.try_get(1)?;
    Ok(Outcome::decide(
        r.op,
        &r.message_id,
        prior.as_deref(),
        written,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_prior_row_and_the_write() {
        use Outcome::*;
        assert_eq!(Outcome::decide(Op::Upsert, "a", None, true), Applied);
        assert_eq!(Outcome::decide(Op::Missing, "a", None, true), Deleted);
        assert_eq!(Outcome::decide(Op::Upsert, "a", Some("b"), true), Applied);
        assert_eq!(Outcome::decide(Op::Upsert, "a", Some("b"), false), Stale);
        // Same state again: a duplicate whether or not fetched_at advanced.
        assert_eq!(
            Outcome::decide(Op::Upsert, "a", Some("a"), false),
            Duplicate
        );
        assert_eq!(
            Outcome::decide(Op::Missing, "a", Some("a"), true),
            Duplicate
        );
        // A concurrent writer inserted first and won.
        assert_eq!(Outcome::decide(Op::Upsert, "a", None, false), Stale);
    }

    #[test]
    fn the_upsert_names_every_column_once_and_numbers_its_parameters() {
        let sql = upsert_sql("mirror_contacts", "contact_id", &["user_name", "status"]);
        assert!(sql.contains(
            "INSERT INTO mirror_contacts AS t (app_id, contact_id, record, user_name, status, fetched_at, deleted, message_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ));
        assert!(sql.contains("ON CONFLICT (app_id, contact_id) DO UPDATE SET record = excluded.record, user_name = excluded.user_name, status = excluded.status, fetched_at = excluded.fetched_at, deleted = excluded.deleted, message_id = excluded.message_id, applied_at = CASE"));
        assert!(sql.contains("WHERE app_id = $1 AND contact_id = $2"));
    }
}
