//! The downstream consumer of the bench: one queue bound to every relay's customers exchange. It
//! always counts records; while a scenario asks for detail it also measures the lag from callback
//! received to record delivered and keeps each customer's latest state, to check nothing was lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::Channel;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use serde::Deserialize;
use serde_json::Value;
use tokio::task::JoinHandle;

#[derive(Deserialize)]
struct RecordBody {
    customer_id: String,
    fetched_at: u64,
    source: SourceBody,
    #[serde(default)]
    record: Value,
}

#[derive(Deserialize)]
struct SourceBody {
    first_event_at: u64,
}

#[derive(Default)]
struct Detail {
    /// Lag of every record whose window opened after the scenario began, in ms.
    lag_ms: Vec<u32>,
    /// Per customer: the record with the latest `fetched_at` (last writer wins, as the contract says).
    latest: HashMap<String, (u64, Value)>,
}

pub struct Records {
    total: Arc<AtomicU64>,
    detail_on: Arc<AtomicBool>,
    /// Records from windows that opened before this (ms since the epoch) are not the scenario's.
    since_ms: Arc<AtomicU64>,
    detail: Arc<Mutex<Detail>>,
    task: JoinHandle<()>,
}

impl Records {
    /// Starts consuming `queue` (auto-ack: the bench is a fast reader, not the subject).
    pub async fn start(channel: &Channel, queue: &str) -> Result<Records, lapin::Error> {
        let consumer = channel
            .basic_consume(
                queue.into(),
                "weiling-relay-bench".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let total = Arc::new(AtomicU64::new(0));
        let detail_on = Arc::new(AtomicBool::new(false));
        let since_ms = Arc::new(AtomicU64::new(0));
        let detail = Arc::new(Mutex::new(Detail::default()));
        let task = tokio::spawn(consume(
            consumer,
            total.clone(),
            detail_on.clone(),
            since_ms.clone(),
            detail.clone(),
        ));
        Ok(Records {
            total,
            detail_on,
            since_ms,
            detail,
            task,
        })
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Starts measuring lag and latest states afresh (`detail`), or goes back to counting only.
    pub fn begin(&self, detail: bool) {
        *lock(&self.detail) = Detail::default();
        self.since_ms.store(now_ms(), Ordering::Relaxed);
        self.detail_on.store(detail, Ordering::Relaxed);
    }

    /// The lags measured since [`Records::begin`], in ms, sorted.
    pub fn lags_ms(&self) -> Vec<u32> {
        let mut lags = lock(&self.detail).lag_ms.clone();
        lags.sort_unstable();
        lags
    }

    /// How many of `customers` have, as their latest record, the state `truth` gives.
    pub fn latest_matching(
        &self,
        customers: &[&str],
        truth: impl Fn(&str) -> Option<Value>,
    ) -> usize {
        let detail = lock(&self.detail);
        customers
            .iter()
            .filter(|id| {
                detail
                    .latest
                    .get(**id)
                    .is_some_and(|(_, record)| Some(record) == truth(id).as_ref())
            })
            .count()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn consume(
    mut consumer: lapin::Consumer,
    total: Arc<AtomicU64>,
    detail_on: Arc<AtomicBool>,
    since_ms: Arc<AtomicU64>,
    detail: Arc<Mutex<Detail>>,
) {
    while let Some(Ok(delivery)) = consumer.next().await {
        total.fetch_add(1, Ordering::Relaxed);
        if !detail_on.load(Ordering::Relaxed) {
            continue;
        }
        let received_ms = now_ms();
        let Ok(body) = serde_json::from_slice::<RecordBody>(&delivery.data) else {
            continue;
        };
        let mut detail = lock(&detail);
        if body.source.first_event_at >= since_ms.load(Ordering::Relaxed) {
            let lag = received_ms.saturating_sub(body.source.first_event_at);
            detail.lag_ms.push(u32::try_from(lag).unwrap_or(u32::MAX));
        }
        let newer = detail
            .latest
            .get(&body.customer_id)
            .is_none_or(|(at, _)| body.fetched_at >= *at);
        if newer {
            detail
                .latest
                .insert(body.customer_id, (body.fetched_at, body.record));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
