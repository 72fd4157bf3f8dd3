//! The kinds of Weiling object the pipeline enriches. Everything that differs between them is named
//! here, so windowing, enrichment and publishing are one code path parameterised by [`Entity`].
//!
//! Weiling merged 企微好友 and 手机号线索 into 联系人 (contacts) but kept the customer APIs
//! (weiling-api.md §7): a tenant may need either or both, chosen per event type in `[events]`.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    /// 企微好友: `POST /openapi/customer/batch`, `customer_ids` → `data.customer_list[].customer_id`.
    #[default]
    Customer,
    /// 联系人: `POST /openapi/contact/batch`, `contact_ids` → `data.contact_list[].contact_id`.
    Contact,
}

impl Entity {
    pub const ALL: [Entity; 2] = [Self::Customer, Self::Contact];

    /// Lower-case name: the first word of routing keys and message types, and a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Contact => "contact",
        }
    }

    /// The batch endpoint relative to the OpenAPI base URL.
    pub fn batch_path(self) -> &'static str {
        match self {
            Self::Customer => "/openapi/customer/batch",
            Self::Contact => "/openapi/contact/batch",
        }
    }

    /// The `endpoint` label of the Weiling request metrics.
    pub fn batch_endpoint(self) -> &'static str {
        match self {
            Self::Customer => "customer/batch",
            Self::Contact => "contact/batch",
        }
    }

    /// The request body's id list.
    pub fn ids_field(self) -> &'static str {
        match self {
            Self::Customer => "customer_ids",
            Self::Contact => "contact_ids",
        }
    }

    /// The list inside the answer's `data`.
    pub fn list_field(self) -> &'static str {
        match self {
            Self::Customer => "customer_list",
            Self::Contact => "contact_list",
        }
    }

    /// The id inside each listed object, and the id field of the published record.
    pub fn id_field(self) -> &'static str {
        match self {
            Self::Customer => "customer_id",
            Self::Contact => "contact_id",
        }
    }

    /// The `schema` of the published record.
    pub fn schema(self) -> &'static str {
        match self {
            Self::Customer => "weiling-relay.customer.v1",
            Self::Contact => "weiling-relay.contact.v1",
        }
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Entity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown entity {s:?} (expected customer or contact)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_stay_consistent() {
        for entity in Entity::ALL {
            assert_eq!(entity.as_str().parse::<Entity>(), Ok(entity));
            assert!(entity.batch_path().ends_with(entity.batch_endpoint()));
            assert!(entity.ids_field().starts_with(entity.as_str()));
            assert!(entity.list_field().starts_with(entity.as_str()));
            assert!(entity.id_field().starts_with(entity.as_str()));
            assert!(entity.schema().contains(entity.as_str()));
        }
        assert!("lead".parse::<Entity>().is_err());
        assert_eq!(Entity::default(), Entity::Customer);
    }
}
