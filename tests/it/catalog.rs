//! Every event type of Weiling's callback catalog through one relay: each is acknowledged, and only
//! the mapped ones are enriched, each through its own entity's batch endpoint and only for the id the
//! mapping names (a clue, company or group id in the same events is never fetched).

use std::collections::HashSet;
use std::time::Duration;

use relay::entity::Entity;
use weiling_sim::events::{CATALOG_EVENT_TYPES, CatalogIds, catalog_samples};
use weiling_sim::{new_contact_id, new_customer_id};

use crate::support::process::{ProcessRig, RelayProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_event_is_acknowledged_and_only_the_mapped_ids_are_fetched() {
    let rig = ProcessRig::start("catalog").await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let app = rig.app_id.as_str();
    let (customer, contact) = (new_customer_id(), new_contact_id());
    rig.sim.create_customer(app, &customer);
    rig.sim.create(Entity::Contact, app, &contact);

    let samples = catalog_samples(&CatalogIds::new(&customer, &contact));
    let types: HashSet<&str> = samples.iter().map(|s| s.event_type.as_str()).collect();
    assert_eq!(types.len(), CATALOG_EVENT_TYPES.len());
    rig.send_all(&samples).await;

    let (stale, _) = rig
        .await_latest(&HashSet::from([customer.clone()]), Duration::from_secs(20))
        .await;
    assert!(stale.is_empty(), "the customer's record was not published");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let contact_fetched = || {
        rig.sim
            .batch_calls()
            .iter()
            .any(|c| c.entity == Entity::Contact && c.ids.contains(&contact))
    };
    while !contact_fetched() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        contact_fetched(),
        "contact/batch was never asked for the contact"
    );

    let calls = rig.sim.batch_calls();
    for call in &calls {
        let expected = match call.entity {
            Entity::Customer => &customer,
            Entity::Contact => &contact,
        };
        assert!(
            call.ids.iter().all(|id| id == expected),
            "{:?} batch asked for {:?}",
            call.entity,
            call.ids
        );
    }
    eprintln!(
        "catalog: {} events of {} types acknowledged; {} batch calls",
        samples.len(),
        types.len(),
        calls.len()
    );
    drop(relay);
    rig.cleanup().await;
}
