-- The mirror's tables: one row per (app, entity id), the latest state by fetched_at.
-- Written only by `weiling-relay mirror`; see README.md "Mirror" for the semantics.

CREATE TABLE mirror_customers (
    app_id          text        NOT NULL,
    customer_id     text        NOT NULL,
    -- One element of Weiling's customer_list, exactly as the relay published it; NULL once `missing`.
    record          jsonb,
    -- Copied out of `record` for filtering; NULL when the record lacks them or the row is deleted.
    name            text,
    customer_stage  text,
    lost_state      boolean,
    external_userid text,
    follow_user_ids text[],     -- record.follow_users[].userid
    fetched_at      bigint      NOT NULL,  -- ms since the epoch; orders the states of one customer
    deleted         boolean     NOT NULL DEFAULT false,
    message_id      text        NOT NULL,  -- content hash of the state this row holds
    applied_at      timestamptz NOT NULL DEFAULT now(),  -- when the content last changed
    PRIMARY KEY (app_id, customer_id)
);

-- Filter columns lead their indexes: an index led by app_id would compete with the primary key for the
-- mirror's own per-row lookup, and a plan cached while the table was small could pick it and turn
-- every write into a scan of the app's rows.
CREATE INDEX mirror_customers_stage ON mirror_customers (customer_stage, app_id);
CREATE INDEX mirror_customers_external_userid ON mirror_customers (external_userid);
CREATE INDEX mirror_customers_follow_user_ids ON mirror_customers USING gin (follow_user_ids);

CREATE TABLE mirror_contacts (
    app_id          text        NOT NULL,
    contact_id      text        NOT NULL,
    -- One element of Weiling's contact_list; NULL once `missing`.
    record          jsonb,
    user_name       text,
    customer_stage  text,
    owner_id        text,
    status          text,       -- numbers are kept as their decimal text
    fetched_at      bigint      NOT NULL,
    deleted         boolean     NOT NULL DEFAULT false,
    message_id      text        NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, contact_id)
);

CREATE INDEX mirror_contacts_stage ON mirror_contacts (customer_stage, app_id);
CREATE INDEX mirror_contacts_owner ON mirror_contacts (owner_id, app_id);
