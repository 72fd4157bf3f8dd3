//! The callbacks the generator sends: a Zipf-like choice among a fixed set of customers, each callback
//! preceded by a real change of that customer in the simulator, so the relay has something new to fetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use relay::verify::AppKeys;
use relay_harness::scenario::zipf;
use weiling_sim::events::{self, CustomerChange};
use weiling_sim::{Simulator, new_customer_id};

pub struct Workload {
    sim: Simulator,
    app: Arc<AppKeys>,
    customers: Vec<String>,
    sent: AtomicU64,
}

impl Workload {
    /// Creates `customers` customers in the simulator, so every id the relay asks for exists.
    pub fn new(sim: Simulator, app: Arc<AppKeys>, customers: usize) -> Workload {
        let customers: Vec<String> = (0..customers.max(1))
            .map(|i| format!("bench-{i:05}-{}", new_customer_id()))
            .collect();
        for id in &customers {
            sim.create_customer(app.app_id(), id);
        }
        Workload {
            sim,
            app,
            customers,
            sent: AtomicU64::new(0),
        }
    }

    pub fn app(&self) -> &AppKeys {
        &self.app
    }

    pub fn customer(&self, index: u32) -> Option<&str> {
        self.customers.get(index as usize).map(String::as_str)
    }

    /// The next callback's decrypted event, after changing its customer in the simulator; returns
    /// the customer's index too. The three mapped customer events take turns, as in the demo.
    pub fn next_event(&self) -> (u32, Vec<u8>) {
        let index = zipf(&mut rand::rng(), self.customers.len());
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let id = self
            .customers
            .get(index)
            .map(String::as_str)
            .unwrap_or_default();
        let record = self.sim.change_customer(self.app.app_id(), id);
        let event = match n % 3 {
            0 => events::customer_update(&record, CustomerChange::Remark),
            1 => events::history_add(id, 201),
            _ => events::progress_add_customer(id),
        };
        (
            u32::try_from(index).unwrap_or(u32::MAX),
            event.to_json(self.app.app_id()),
        )
    }
}
