//! Stage 6, when Weiling refuses a whole batch: split it until the refused ids stand alone.
//!
//! Weiling answers some batches with one refusal code for all of them (3000 客户不存在, or a code
//! for one malformed id), so one bad id would otherwise hold back up to 99 good ones. The batch is
//! halved; a half that is fetched cleanly proves the cause sits in the other half, which is then
//! split without being asked as a whole. Halves whose sibling was also refused are set aside and
//! asked together once at the end, so one bad id among 100 costs about log2(100) + 2 extra calls.

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use super::{EnrichError, Fetched, WeilingClient, dedup};
use crate::entity::Entity;

/// One id Weiling refused on its own with a code that does not mean "does not exist".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedId {
    pub id: String,
    pub code: i64,
    pub detail: String,
}

/// The outcome of [`WeilingClient::fetch_isolating`].
#[derive(Debug, Default, PartialEq)]
pub struct Isolated {
    pub fetched: Fetched,
    /// Ids that can be neither fetched nor called missing: their events are parked.
    pub refused: Vec<RefusedId>,
    /// Batch calls made (each may have been retried inside [`WeilingClient::fetch`]).
    pub calls: usize,
}

/// A refusal already known for a set, so the set is split without asking it again.
#[derive(Clone)]
struct Refusal {
    code: i64,
    detail: String,
    /// Seen for exactly this set, not inferred from its sibling.
    direct: bool,
}

type Step<'a> = Pin<Box<dyn Future<Output = Result<bool, EnrichError>> + Send + 'a>>;

struct Run<'a> {
    client: &'a WeilingClient,
    app_id: &'a str,
    entity: Entity,
    missing_codes: &'a [i64],
    cancel: &'a CancellationToken,
    out: Isolated,
    deferred: Vec<String>,
}

impl WeilingClient {
    /// [`Self::fetch`], except that a batch refused with a definite code is split until every
    /// refused id stands alone: those refused with a `weiling.missing_codes` code become `missing`, the
    /// others [`Isolated::refused`]; every other id is fetched. Any other error ends the whole call
    /// (nothing is half-published: the caller retries or parks the batch as before).
    pub async fn fetch_isolating(
        &self,
        app_id: &str,
        entity: Entity,
        ids: &[String],
        cancel: &CancellationToken,
    ) -> Result<Isolated, EnrichError> {
        let mut run = Run {
            client: self,
            app_id,
            entity,
            missing_codes: &self.inner.missing_codes,
            cancel,
            out: Isolated::default(),
            deferred: Vec::new(),
        };
        run.resolve(dedup(ids), None).await?;
        while !run.deferred.is_empty() {
            let set = std::mem::take(&mut run.deferred);
            run.resolve(set, None).await?;
        }
        Ok(run.out)
    }
}

impl Run<'_> {
    /// Resolves `set`; `Ok(true)` when it was fetched in one clean call.
    fn resolve(&mut self, set: Vec<String>, known: Option<Refusal>) -> Step<'_> {
        Box::pin(async move {
            let refusal = match known {
                Some(refusal) => refusal,
                None => match self.ask(&set).await? {
                    None => return Ok(true),
                    Some(refusal) => refusal,
                },
            };
            if let [id] = set.as_slice() {
                self.settle_single(id, refusal).await?;
                return Ok(false);
            }
            let mut left = set;
            let right = left.split_off(left.len() / 2);
            if self.resolve(left, None).await? {
                // The left half was fine, so the refusal came from the right half.
                self.resolve(
                    right,
                    Some(Refusal {
                        direct: false,
                        ..refusal
                    }),
                )
                .await?;
            } else {
                self.deferred.extend(right);
            }
            Ok(false)
        })
    }

    /// One id with a refusal: `missing` only on a refusal seen for that id alone, never inferred
    /// (a tombstone downstream must not rest on a guess).
    async fn settle_single(&mut self, id: &str, refusal: Refusal) -> Result<(), EnrichError> {
        let refusal = if self.missing_codes.contains(&refusal.code) && !refusal.direct {
            match self.ask(std::slice::from_ref(&id.to_owned())).await? {
                None => return Ok(()),
                Some(direct) => direct,
            }
        } else {
            refusal
        };
        if self.missing_codes.contains(&refusal.code) {
            self.out.fetched.missing.push(id.to_owned());
        } else {
            self.out.refused.push(RefusedId {
                id: id.to_owned(),
                code: refusal.code,
                detail: refusal.detail,
            });
        }
        Ok(())
    }

    /// One batch call: `None` when fetched (records and missing ids merged into the outcome).
    async fn ask(&mut self, set: &[String]) -> Result<Option<Refusal>, EnrichError> {
        self.out.calls += 1;
        match self
            .client
            .fetch(self.app_id, self.entity, set, self.cancel)
            .await
        {
            Ok(fetched) => {
                self.out.fetched.records.extend(fetched.records);
                self.out.fetched.missing.extend(fetched.missing);
                Ok(None)
            }
            Err(EnrichError::Refused { code, last, .. }) => Ok(Some(Refusal {
                code,
                detail: last,
                direct: true,
            })),
            Err(other) => Err(other),
        }
    }
}
