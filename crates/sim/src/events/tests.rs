//! Event builders against the catalog of weiling-events.md: names, `event` fields, and the
//! discriminators' wire types.

use std::collections::BTreeSet;

use super::*;
use crate::contacts::new_contact_record;
use crate::records::new_record;

fn parse(json: &[u8]) -> Value {
    serde_json::from_slice(json).unwrap()
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

/// The `event` keys of each type, as the catalog lists them.
fn documented_keys(event_type: &str) -> Vec<&'static str> {
    let customer = vec![
        "customer_id",
        "external_userid",
        "userid",
        "name",
        "avatar",
        "type",
        "gender",
        "position",
        "corp_name",
        "corp_full_name",
        "remark_corp_name",
        "remark_mobiles",
        "lost_state",
    ];
    let opportunity = vec![
        "business_id",
        "business_opp_number",
        "business_name",
        "company_id",
        "stage",
        "owner_id",
        "except_amount",
        "except_date",
        "create_user_id",
        "create_time",
    ];
    match event_type {
        "user_insert" | "user_update" => vec![
            "userid",
            "name",
            "mobile",
            "position",
            "gender",
            "email",
            "avatar",
            "telephone",
            "alias",
            "status",
            "saas_status",
        ],
        "add_customer" => customer,
        "customer_update" => [customer, vec!["change_type"]].concat(),
        "history_add" => vec!["customer_id", "history"],
        "clue_history" => vec!["clue_id", "history"],
        "clue_add" => vec!["clue_id"],
        "clue_update" => vec![
            "clue_id",
            "customer_id",
            "owner_id",
            "create_user_id",
            "sea_id",
            "status",
            "is_useless",
            "mobile",
            "change_type",
        ],
        "progress_add" => vec![
            "progress_id",
            "create_user_id",
            "type",
            "business_related_id",
            "content",
            "image_file",
            "remark",
            "create_time",
        ],
        "company_add" => vec![
            "company_id",
            "creator",
            "user_list",
            "customer_list",
            "status",
            "credit_code",
            "abbreviation",
            "company_name",
            "create_time",
        ],
        "company_update" => vec![
            "company_id",
            "user_list",
            "creator",
            "credit_code",
            "status",
            "abbreviation",
            "company_name",
            "create_time",
        ],
        "company_v2_update" => vec![
            "company_id",
            "abbreviation",
            "company_name",
            "create_time",
            "creator",
            "customer_list",
            "user_list",
        ],
        "add_company_user" => vec!["company_id", "staff_list", "user_list"],
        "company_customer_add" => vec![
            "company_id",
            "customer_list",
            "user_list",
            "creator",
            "abbreviation",
            "company_name",
            "create_time",
        ],
        "opportunity_add" => opportunity,
        "opportunity_update" => [
            opportunity,
            vec![
                "change_type",
                "update_time",
                "winning_amount",
                "winning_date",
                "approval_completion_time",
            ],
        ]
        .concat(),
        "material_add" => vec![
            "material_id",
            "material_type",
            "material_name",
            "material_url",
            "material_scope",
            "create_user_id",
            "create_time",
            "update_time",
        ],
        "material_browse_add" => vec!["material_id"],
        "group_chat_add" => vec!["group_chat_id"],
        "group_chat_update" => vec!["group_chat_id", "group_chat_name", "change_type"],
        "group_chat_dismiss" => vec!["group_chat_id", "group_chat_name"],
        "tag_update" | "tag_update_v2" => {
            vec!["id", "type", "user_id", "add_tag_list", "delete_tag_list"]
        }
        "add_moment" => vec!["userid", "content", "create_time"],
        "dept_add" => vec!["dept_id", "name", "create_time"],
        "company_delete" => vec!["company_id", "company_name"],
        "company_owner_change" => vec!["company_id", "user_id", "create_time"],
        "contact_add" => vec![
            "contact_id",
            "user_name",
            "contact_ways",
            "status",
            "contact_source",
            "from_channel_name",
            "level",
            "corp_name",
            "position",
            "create_time",
        ],
        "contact_update" => vec![
            "contact_id",
            "customer_id",
            "owner_id",
            "create_user_id",
            "sea_id",
            "status",
            "is_useless",
            "is_repeat",
            "contact_ways",
            "contact_source",
            "remark",
        ],
        other => panic!("no documented fields for {other}"),
    }
}

#[test]
fn the_default_header_has_a_13_digit_ms_string() {
    let json = parse(&event_json("wloa1", "user_update", json!({"userid": "x"})));
    assert_eq!(json["header"]["to_app"], "wloa1");
    assert_eq!(json["header"]["event_type"], "user_update");
    let stamp = json["header"]["time_stamp"].as_str().unwrap();
    assert_eq!(stamp.len(), 13);
    assert!(stamp.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(json["event"]["userid"], "x");
}

#[test]
fn every_header_style_puts_the_time_under_its_key_and_type() {
    for style in HeaderStyle::ALL {
        let event = customer_update_for("c1", CustomerChange::Remark);
        let json = parse(&event.to_json_with("wloa1", style));
        let header = json["header"].as_object().unwrap();
        assert_eq!(header.len(), 3, "{style:?}");
        assert_eq!(header["event_type"], "customer_update");
        let value = &header[style.key()];
        match style {
            HeaderStyle::TimeStampString | HeaderStyle::TimestampString => {
                assert_eq!(value.as_str().unwrap().len(), 13)
            }
            _ => assert!(value.as_u64().unwrap() > 1_000_000_000_000),
        }
    }
    let quirky = (0..10)
        .filter(|&n| HeaderStyle::varied(n) != HeaderStyle::TimeStampString)
        .count();
    assert_eq!(quirky, 3);
}

#[test]
fn the_samples_cover_the_catalog_with_the_documented_fields() {
    let ids = CatalogIds::new("cust-1", "contact-1");
    let samples = catalog_samples(&ids);
    let types: BTreeSet<&str> = samples.iter().map(|s| s.event_type.as_str()).collect();
    assert_eq!(types, CATALOG_EVENT_TYPES.into_iter().collect());
    assert_eq!(
        CATALOG_EVENT_TYPES.len(),
        types.len(),
        "no type listed twice"
    );
    for sample in &samples {
        // The builders write the keys in the catalog's order, and the JSON keeps it.
        let documented = documented_keys(&sample.event_type);
        assert_eq!(keys(&sample.event), documented, "{}", sample.event_type);
        let json = parse(&sample.to_json("wloa1"));
        assert_eq!(json["header"]["event_type"], sample.event_type.as_str());
        assert_eq!(json["event"], sample.event);
    }
    let count = |event_type: &str| {
        samples
            .iter()
            .filter(|s| s.event_type == event_type)
            .count()
    };
    assert_eq!(count("customer_update"), 3);
    assert_eq!(count("clue_update"), 4);
    assert_eq!(count("progress_add"), 3);
    assert_eq!(count("group_chat_update"), 2);
    assert_eq!(count("tag_update"), 3);
    assert_eq!(count("tag_update_v2"), 2);
    assert!(
        samples
            .iter()
            .all(|s| CATALOG_EVENT_TYPES.contains(&s.event_type.as_str())),
        "every sample carries a name from Weiling's catalog, none of our own"
    );
}

#[test]
fn the_samples_name_the_given_customer_and_contact_where_the_catalog_puts_them() {
    let ids = CatalogIds::new("cust-1", "contact-1");
    let samples = catalog_samples(&ids);
    // Where one type names different objects, its discriminator tells which sample is meant.
    let naming = |id: &str| -> BTreeSet<String> {
        samples
            .iter()
            .filter(|s| s.event.to_string().contains(&format!("\"{id}\"")))
            .map(|s| match s.event_type.as_str() {
                "progress_add" | "tag_update" | "tag_update_v2" => {
                    format!("{} {}", s.event_type, s.event["type"])
                }
                _ => s.event_type.clone(),
            })
            .collect()
    };
    let customer: BTreeSet<String> = [
        "add_customer",
        "customer_update",
        "history_add",
        "progress_add 1",
        "tag_update \"1\"",
        "clue_update",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(naming("cust-1"), customer);
    let contact: BTreeSet<String> = [
        "company_add",
        "company_v2_update",
        "company_customer_add",
        "tag_update_v2 0",
        "contact_add",
        "contact_update",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(naming("contact-1"), contact);
    for sample in &samples {
        match sample.event_type.as_str() {
            "add_customer" | "customer_update" | "history_add" => {
                assert_eq!(sample.event["customer_id"], "cust-1")
            }
            "contact_add" | "contact_update" => assert_eq!(sample.event["contact_id"], "contact-1"),
            "progress_add" if sample.event["type"] == 1 => {
                assert_eq!(sample.event["business_related_id"], "cust-1")
            }
            _ => {}
        }
    }
}

#[test]
fn discriminators_have_their_documented_values_and_wire_types() {
    let changes: Vec<Value> = CustomerChange::ALL
        .into_iter()
        .map(|c| customer_update_for("c", c).event["change_type"].clone())
        .collect();
    assert_eq!(
        changes,
        [
            json!("change_remark"),
            json!("change_company"),
            json!("customer_loss")
        ]
    );
    assert_eq!(
        customer_update_for("c", CustomerChange::Loss).event["lost_state"],
        true
    );
    let tag_types: Vec<Value> = TagObject::ALL
        .into_iter()
        .map(|o| tag_update("x", o).event["type"].clone())
        .collect();
    assert_eq!(tag_types, [json!("1"), json!("0"), json!("3")]);
    let v2_types: Vec<Value> = TagObjectV2::ALL
        .into_iter()
        .map(|o| tag_update_v2("x", o).event["type"].clone())
        .collect();
    assert_eq!(v2_types, [json!(0), json!(3)]);
    let item = &tag_update_v2("x", TagObjectV2::Contact).event["add_tag_list"][0];
    assert_eq!(keys(item), ["group_id", "group_name", "tag_info", "type"]);
    assert_eq!(keys(&item["tag_info"][0]), ["tag_id", "tag_name", "type"]);
    let clue_changes: Vec<Value> = ClueChange::ALL
        .into_iter()
        .map(|c| clue_update("k", None, c).event["change_type"].clone())
        .collect();
    assert_eq!(
        clue_changes,
        [
            json!("change_content"),
            json!("change_owner"),
            json!("change_status"),
            json!("clue_disuse")
        ]
    );
    assert_eq!(
        clue_update("k", Some("c"), ClueChange::Status).event["status"],
        3
    );
    assert_eq!(
        clue_history("k", 401).event["history"]["history_type"],
        "401"
    );
    let groups: Vec<Value> = GroupChatChange::ALL
        .into_iter()
        .map(|c| group_chat_update("wr1", c).event["change_type"].clone())
        .collect();
    assert_eq!(groups, [json!("change_company"), json!("change_owner")]);
    let company = company_add("co", &[("k1", 0), ("v1", 4)]).event;
    assert_eq!(
        keys(&company["customer_list"][0]),
        ["id", "type", "nick_name"]
    );
    assert_eq!(company["customer_list"][0]["type"], 0);
    assert_eq!(company["customer_list"][1]["type"], 4);
    assert_eq!(
        company_customer_add("co", &["k1"]).event["customer_list"][0]["type"],
        0
    );
    assert_eq!(
        opportunity_update("b", "co").event["change_type"],
        "change_stage"
    );
    assert_eq!(
        company_delete("co").event["company_name"],
        company_update("co").event["company_name"],
        "a company keeps its name across events"
    );
}

#[test]
fn record_based_events_agree_with_the_simulators_records() {
    let record = new_record("wloa1", "cust-1", 1_745_818_723_000);
    let add = add_customer(&record).event;
    // Every field the event shares with the record by name; the other two come from the follow user.
    for key in documented_keys("add_customer")
        .into_iter()
        .filter(|k| !["userid", "remark_corp_name"].contains(k))
    {
        assert_eq!(add[key], record[key], "{key}");
    }
    assert_eq!(add["userid"], record["follow_users"][0]["userid"]);
    assert_eq!(
        add["remark_corp_name"],
        record["follow_users"][0]["remark_corp_name"]
    );
    assert!(add["remark_mobiles"].is_array());
    assert!(add["lost_state"].is_boolean());
    let update = customer_update(&record, CustomerChange::Company).event;
    assert_eq!(update["customer_id"], "cust-1");
    assert_eq!(update["change_type"], "change_company");

    let history = history_add("cust-1", 208).event;
    assert_eq!(history["history"]["history_type"], 208);
    assert!(
        history["history"]["create_time"]
            .as_i64()
            .unwrap()
            .rem_euclid(1000)
            == 0
    );
    assert!(history["history"]["create_user_id"].is_string());
    assert_eq!(progress_add_customer("cust-1").event["type"], 1);
    assert_eq!(progress_add_clue(&new_clue_id()).event["type"], 0);

    let contact = new_contact_record("wloa1", "k1", 0);
    let add = contact_add(&contact).event;
    assert_eq!(add["contact_id"], "k1");
    assert_eq!(add["user_name"], contact["user_name"]);
    assert_eq!(add["contact_ways"], contact["contact_ways"]);
    let update = contact_update(&contact).event;
    assert_eq!(update["contact_id"], "k1");
    assert_eq!(update["owner_id"], contact["owner_id"]);
    assert_eq!(
        update["customer_id"],
        contact
            .pointer("/related_customer/0/id")
            .cloned()
            .unwrap_or(json!(""))
    );
    assert_eq!(contact_update_for("k2").event["contact_id"], "k2");
    assert_eq!(user_update("lisi").event, user_update("lisi").event);
    assert_eq!(user_insert("lisi").event_type, "user_insert");
}
