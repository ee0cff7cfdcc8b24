-- The materialized order-status table: a public contract read by other services.
-- Written only by the order-saga sink, which applies the order-status changelog
-- exactly once (rows and consumed offsets commit in one transaction).

CREATE TABLE orders (
    order_id              text        PRIMARY KEY,
    customer_id           text        NOT NULL,
    status                text        NOT NULL CHECK (status IN
                              ('CREATED','RESERVED','PAID','SHIPPING_SCHEDULED',
                               'COMPLETED','FAILED','CANCELED')),
    -- Increments on every change; the sink only ever applies a newer version.
    version               bigint      NOT NULL CHECK (version > 0),
    total_minor           bigint      NOT NULL,
    currency              text        NOT NULL,
    items                 jsonb       NOT NULL DEFAULT '[]'::jsonb,
    shipping_address      jsonb,
    -- Failure or cancel reason, or a recorded refusal of a cancel.
    reason                text,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    reserved_at           timestamptz,
    paid_at               timestamptz,
    shipping_scheduled_at timestamptz,
    completed_at          timestamptz,
    failed_at             timestamptz,
    canceled_at           timestamptz
);

CREATE INDEX orders_status_updated_idx ON orders (status, updated_at);
CREATE INDEX orders_customer_created_idx ON orders (customer_id, created_at DESC);
CREATE INDEX orders_updated_idx ON orders (updated_at);

-- One row per state change of an order, written idempotently.
CREATE TABLE order_status_history (
    order_id   text        NOT NULL,
    version    bigint      NOT NULL,
    status     text        NOT NULL,
    reason     text,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (order_id, version)
);

-- The sink's consumed position in order-status, stored with the rows it produced.
CREATE TABLE sink_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    -- The offset of the next record to read.
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Orders not yet in a terminal status, with how long since they last changed.
-- Stuck orders: SELECT * FROM orders_in_flight WHERE stalled_for > interval '5 minutes'.
CREATE VIEW orders_in_flight AS
SELECT o.*, now() - o.updated_at AS stalled_for
FROM orders o
WHERE o.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED');
