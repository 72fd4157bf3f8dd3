//! What keeping Weiling's bytes costs: a 100-record `customer/batch` answer (the simulator's records,
//! exactly the seed's fields) read the way the relay reads it, as a list of raw JSON values with only
//! each `customer_id` parsed, against reading it into a `serde_json::Value` tree and serialising each
//! record again (which reorders nothing with `preserve_order` but rewrites number text).
//! `cargo bench --bench batch_answer` prints microseconds per answer; nothing is asserted.

use std::hint::black_box;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

const RECORDS: usize = 100;
/// `cargo test --all-targets` also runs this file, unoptimised: a few rounds prove it works there.
const ROUNDS: usize = if cfg!(debug_assertions) { 20 } else { 3_000 };

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    customer_list: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Id {
    customer_id: Value,
}

fn answer() -> String {
    let list: Vec<Value> = (0..RECORDS)
        .map(|i| {
            weiling_sim::records::new_record(
                "wloabench",
                &format!("cust-{i:03}"),
                1_745_818_723_565,
            )
        })
        .collect();
    serde_json::json!({ "code": 0, "msg": "success", "data": { "customer_list": list } })
        .to_string()
}

/// The relay's way: raw elements, the id parsed out of each, the element's text kept as it came.
fn raw(body: &str) -> usize {
    let answer: Answer = serde_json::from_str(body).unwrap_or_else(|e| panic!("answer: {e}"));
    answer
        .data
        .customer_list
        .iter()
        .map(|record| {
            let id: Id = serde_json::from_str(record.get()).unwrap_or_else(|e| panic!("id: {e}"));
            black_box(id.customer_id);
            record.get().len()
        })
        .sum()
}

/// A tree: the whole answer parsed into `Value`s, each record serialised again for its message.
fn tree(body: &str) -> usize {
    let answer: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("answer: {e}"));
    answer
        .pointer("/data/customer_list")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|record| {
                    black_box(record.get("customer_id"));
                    serde_json::to_vec(record).map(|v| v.len()).unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

fn per_answer_us(read: fn(&str) -> usize, body: &str) -> f64 {
    for _ in 0..ROUNDS / 10 {
        black_box(read(black_box(body)));
    }
    let started = Instant::now();
    for _ in 0..ROUNDS {
        black_box(read(black_box(body)));
    }
    started.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64
}

fn main() {
    let body = answer();
    let raw_us = per_answer_us(raw, &body);
    let tree_us = per_answer_us(tree, &body);
    println!(
        "batch answer of {RECORDS} records, {} bytes: raw elements + id {raw_us:.1} µs, \
         Value tree + re-serialised records {tree_us:.1} µs (raw / tree = {:.2})",
        body.len(),
        raw_us / tree_us
    );
}
