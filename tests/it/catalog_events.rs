//! One test per catalog event type the relay enriches: the entity changes in Weiling, the documented
//! event about it arrives, and the entity's latest state is published; and one test sending every
//! other catalog event, each found on the raw event stream, acked, and nothing enriched.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lapin::options::BasicGetOptions;
use relay::entity::Entity;
use serde_json::Value;
use weiling_sim::events::{self, CatalogIds, CustomerChange, SimEvent, TagObject, TagObjectV2};
use weiling_sim::{new_contact_id, new_customer_id};

use crate::support::process::{ProcessRig, RelayProcess};

/// Changes one customer or contact in Weiling, sends the events `about` builds for it, and waits for
/// its latest state on the records exchange. Only that id is ever fetched.
async fn enriched(name: &str, entity: Entity, about: impl Fn(&str, &Value) -> Vec<SimEvent>) {
    let rig = ProcessRig::start(name).await;
    let records = rig
        .own_queue(
            "records",
            &rig.settings.amqp.customers_exchange,
            &format!("{}.#", entity.as_str()),
        )
        .await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let app = rig.app_id.as_str();
    let id = match entity {
        Entity::Customer => new_customer_id(),
        Entity::Contact => new_contact_id(),
    };
    rig.sim.create(entity, app, &id);
    let record = rig.sim.change(entity, app, &id);
    let samples = about(&id, &record);
    assert!(!samples.is_empty());
    rig.send_all(&samples).await;

    let latest = rig.sim.record(entity, app, &id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen: Option<Value> = None;
    while seen.as_ref() != Some(&latest) && tokio::time::Instant::now() < deadline {
        match rig
            .channel
            .basic_get(records.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
                assert_eq!(body[entity.id_field()], id.as_str());
                assert_eq!(body["op"], "upsert");
                seen = Some(body["record"].clone());
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        seen.as_ref(),
        Some(&latest),
        "{name}: the latest state was published"
    );
    for call in rig.sim.batch_calls() {
        assert_eq!(call.entity, entity, "{name}: only the {entity:?} endpoint");
        assert!(
            call.ids.iter().all(|i| *i == id),
            "{name}: asked for {:?}",
            call.ids
        );
    }
    drop(relay);
    rig.cleanup().await;
}

fn company() -> String {
    new_customer_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_customer_publishes_the_customer() {
    enriched("ev-add-customer", Entity::Customer, |_, record| {
        vec![events::add_customer(record)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_update_publishes_the_customer_for_every_change_type() {
    enriched("ev-customer-update", Entity::Customer, |_, record| {
        CustomerChange::ALL
            .into_iter()
            .map(|change| events::customer_update(record, change))
            .collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_add_publishes_the_customer() {
    enriched("ev-history-add", Entity::Customer, |id, _| {
        vec![events::history_add(id, 201), events::history_add(id, 208)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_add_on_a_customer_publishes_it() {
    enriched("ev-progress-add", Entity::Customer, |id, _| {
        vec![events::progress_add(1, id)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_update_on_a_customer_publishes_it_whether_type_is_a_string_or_a_number() {
    enriched("ev-tag-update", Entity::Customer, |id, _| {
        let as_string = events::tag_update(id, TagObject::Customer);
        let mut as_number = as_string.clone();
        as_number.event["type"] = 1.into();
        vec![as_string, as_number]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_update_v2_on_a_contact_publishes_it() {
    enriched("ev-tag-update-v2", Entity::Contact, |id, _| {
        vec![events::tag_update_v2(id, TagObjectV2::Contact)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_add_publishes_its_contacts_and_skips_visitors() {
    enriched("ev-company-add", Entity::Contact, |id, _| {
        let visitor = new_contact_id();
        vec![events::company_add(&company(), &[(id, 0), (&visitor, 4)])]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_v2_update_publishes_its_contacts() {
    enriched("ev-company-v2-update", Entity::Contact, |id, _| {
        vec![events::company_v2_update(&company(), &[id])]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_v2_add_publishes_its_contacts() {
    // The name in the 企业更新-新版 page's example header; the body is that page's.
    enriched("ev-company-v2-add", Entity::Contact, |id, _| {
        let update = events::company_v2_update(&company(), &[id]);
        vec![SimEvent::new("company_v2_add", update.event)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_customer_add_publishes_its_contacts() {
    enriched("ev-company-customer-add", Entity::Contact, |id, _| {
        vec![events::company_customer_add(&company(), &[id])]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_add_publishes_the_contact() {
    enriched("ev-contact-add", Entity::Contact, |_, record| {
        vec![events::contact_add(record)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_update_publishes_the_contact() {
    enriched("ev-contact-update", Entity::Contact, |_, record| {
        vec![events::contact_update(record)]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_catalog_event_is_on_the_raw_stream_acked_and_nothing_is_enriched() {
    let rig = ProcessRig::start("ev-raw-only").await;
    let raw = rig
        .own_queue(
            "raw",
            &rig.settings.amqp.events_exchange,
            &format!("event.{}.#", rig.app_id),
        )
        .await;
    let mut relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let ids = CatalogIds::new(&new_customer_id(), &new_contact_id());
    rig.sim
        .create(Entity::Customer, &rig.app_id, &ids.customer_id);
    rig.sim
        .create(Entity::Contact, &rig.app_id, &ids.contact_id);
    let mut samples = events::samples_naming_neither(&ids);
    // A clue converted into this customer names it, but clues are not enriched.
    samples.push(events::clue_update(
        &ids.clue_id,
        Some(&ids.customer_id),
        events::ClueChange::Status,
    ));
    rig.send_all(&samples).await;

    // Each event, by its exact body, on the raw stream under its own routing key.
    let mut expected: HashMap<Value, String> = samples
        .iter()
        .map(|s| (s.event.clone(), s.event_type.clone()))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !expected.is_empty() && tokio::time::Instant::now() < deadline {
        match rig
            .channel
            .basic_get(raw.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
                let event_type = body["header"]["event_type"].as_str().unwrap().to_owned();
                assert_eq!(
                    message.delivery.routing_key.as_str(),
                    format!("event.{}.{event_type}", rig.app_id)
                );
                if expected.get(&body["event"]) == Some(&event_type) {
                    expected.remove(&body["event"]);
                }
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let missing: HashSet<&String> = expected.values().collect();
    assert!(missing.is_empty(), "not on the raw stream: {missing:?}");

    // Acked: once the relay is gone, nothing comes back to the inbox.
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.kill_9();
    let _ = relay.wait_exit(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inbox =
        crate::support::in_process::depth(&rig.channel, &rig.settings.amqp.inbox_queue).await;
    assert_eq!(inbox, 0, "every raw-only event was acked");
    assert!(
        rig.sim.batch_calls().is_empty(),
        "nothing enriched: {:?}",
        rig.sim
            .batch_calls()
            .iter()
            .map(|c| &c.ids)
            .collect::<Vec<_>>()
    );
    rig.cleanup().await;
}
