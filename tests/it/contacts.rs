//! Contacts end to end: contact events → inbox → contact windows → `contact/batch` → records routed
//! `contact.<app_id>.upsert|missing` with schema `weiling-relay.contact.v1`, beside customers that run
//! through the same relay at the same time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use relay::entity::Entity;
use serde_json::Value;
use weiling_sim::{Outcome, events, new_contact_id};

use crate::support::process::{ProcessRig, RelayProcess};

/// The latest record per contact id, with its op, read off a queue bound to `contact.#`.
struct ContactRecord {
    fetched_at: u64,
    op: String,
    record: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_events_are_enriched_with_contact_batch_and_published_as_contact_records() {
    let rig = ProcessRig::start("contacts").await;
    let contacts_queue = rig
        .own_queue(
            "contacts",
            &rig.settings.amqp.customers_exchange,
            "contact.#",
        )
        .await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;

    // 40 contacts, each added, then a third of them edited twice; 5 contact ids Weiling does not know;
    // and one customer whose id equals a contact's, which must stay a customer.
    let app = rig.app_id.as_str();
    let known: Vec<String> = (0..40).map(|_| new_contact_id()).collect();
    let unknown: Vec<String> = (0..5).map(|_| new_contact_id()).collect();
    let shared_id = known[0].clone();
    let mut callbacks: Vec<Vec<u8>> = Vec::new();
    for id in &known {
        let record = rig.sim.create(Entity::Contact, app, id);
        callbacks.push(events::contact_add(&record).to_json(app));
    }
    for round in 0..2 {
        for id in known.iter().skip(round).step_by(3) {
            let record = rig.sim.change(Entity::Contact, app, id);
            callbacks.push(events::contact_update(&record).to_json(app));
        }
    }
    for id in &unknown {
        callbacks.push(events::contact_update_for(id).to_json(app));
    }
    let customer = rig.sim.create_customer(app, &shared_id);
    callbacks.push(events::add_customer(&customer).to_json(app));

    let driver = rig.driver();
    let outcomes: Vec<Outcome> = futures::stream::iter(callbacks)
        .map(|json| {
            let driver = &driver;
            async move { driver.send(&json).await.outcome }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Ok),
        "every callback acknowledged: {outcomes:?}"
    );

    // Read contact records until every known contact shows the simulator's state and every unknown
    // one is `missing`.
    let mut latest: HashMap<String, ContactRecord> = HashMap::new();
    let mut received = 0;
    let done = |latest: &HashMap<String, ContactRecord>| {
        known.iter().all(|id| {
            latest.get(id).is_some_and(|r| {
                r.op == "upsert"
                    && Some(&r.record) == rig.sim.record(Entity::Contact, app, id).as_ref()
            })
        }) && unknown.iter().all(|id| {
            latest
                .get(id)
                .is_some_and(|r| r.op == "missing" && r.record.is_null())
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&latest) && tokio::time::Instant::now() < deadline {
        let Some(message) = rig
            .channel
            .basic_get(
                contacts_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        received += 1;
        let delivery = &message.delivery;
        let body: Value = serde_json::from_slice(&delivery.data).unwrap();
        let op = body["op"].as_str().unwrap().to_owned();
        assert_eq!(body["schema"], "weiling-relay.contact.v1");
        assert_eq!(body["app_id"], app);
        assert!(body.get("customer_id").is_none(), "{body}");
        assert_eq!(delivery.routing_key.as_str(), format!("contact.{app}.{op}"));
        assert_eq!(
            delivery.properties.kind().as_ref().map(|k| k.as_str()),
            Some(format!("contact.{op}").as_str())
        );
        let id = body["contact_id"].as_str().unwrap().to_owned();
        let headers = delivery.properties.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("contact_id"),
            Some(&AMQPValue::LongString(id.as_str().into()))
        );
        let fetched_at = body["fetched_at"].as_u64().unwrap();
        if latest.get(&id).is_none_or(|r| fetched_at >= r.fetched_at) {
            latest.insert(
                id,
                ContactRecord {
                    fetched_at,
                    op,
                    record: body["record"].clone(),
                },
            );
        }
    }
    assert!(
        done(&latest),
        "contacts stale or missing after 30 s: {:?}",
        known
            .iter()
            .chain(&unknown)
            .filter(|id| !latest.contains_key(*id))
            .collect::<Vec<_>>()
    );

    // The customer with the shared id came out as a customer, with the customer schema.
    let (stale, _) = rig
        .await_latest(&HashSet::from([shared_id.clone()]), Duration::from_secs(15))
        .await;
    assert!(stale.is_empty(), "the customer record was not published");

    let calls = rig.sim.batch_calls();
    let contact_calls: Vec<_> = calls
        .iter()
        .filter(|c| c.entity == Entity::Contact)
        .collect();
    let customer_calls: Vec<_> = calls
        .iter()
        .filter(|c| c.entity == Entity::Customer)
        .collect();
    let contact_ids: HashSet<&String> = known.iter().chain(&unknown).collect();
    assert!(contact_calls.iter().all(|c| c.ids.len() <= 100));
    assert!(
        contact_calls
            .iter()
            .flat_map(|c| &c.ids)
            .all(|id| contact_ids.contains(id)),
        "contact/batch was asked only for contact ids"
    );
    assert!(
        customer_calls
            .iter()
            .flat_map(|c| &c.ids)
            .all(|id| *id == shared_id),
        "customer/batch was asked only for the customer"
    );
    eprintln!(
        "contacts: {} callbacks | contact/batch calls {} customer/batch calls {} | contact records {received} | known {} missing {}",
        outcomes.len(),
        contact_calls.len(),
        customer_calls.len(),
        known.len(),
        unknown.len()
    );

    drop(relay);
    rig.cleanup().await;
}
