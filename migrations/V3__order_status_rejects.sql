-- Records of order-status whose row PostgreSQL refused for its data (a timestamp out of
-- range, a violated constraint, ...). The sink writes every other row of the batch, sets
-- these aside here and moves its offsets past them, all in one transaction, so one bad
-- record never stops the table. Written once per record: a replay adds nothing.

CREATE TABLE order_status_rejects (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    record_offset   bigint      NOT NULL,
    order_id        text        NOT NULL,
    version         bigint      NOT NULL,
    sqlstate        text        NOT NULL,
    reason          text        NOT NULL,
    detail          text,
    constraint_name text,
    record          text        NOT NULL,
    rejected_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, record_offset)
);

CREATE INDEX order_status_rejects_rejected_at_idx ON order_status_rejects (rejected_at);

COMMENT ON TABLE order_status_rejects IS
    'order-status records the sink could not write because PostgreSQL refused their data; '
    'every other row of their batch was written. One row per record. Fix the producer, then '
    're-publish a corrected record (a newer version) or apply it by hand; delete the row once '
    'handled.';
COMMENT ON COLUMN order_status_rejects.consumer_group IS 'The sink group that read the record.';
COMMENT ON COLUMN order_status_rejects.topic IS 'The order-status topic, with its prefix.';
COMMENT ON COLUMN order_status_rejects.partition IS 'Partition of the record.';
COMMENT ON COLUMN order_status_rejects.record_offset IS 'Offset of the record in its partition.';
COMMENT ON COLUMN order_status_rejects.order_id IS 'Order id, the record key.';
COMMENT ON COLUMN order_status_rejects.version IS 'Order version the record carried.';
COMMENT ON COLUMN order_status_rejects.sqlstate IS
    'SQLSTATE of the refusal: class 22 a value out of range or not valid, 23 a constraint.';
COMMENT ON COLUMN order_status_rejects.reason IS 'PostgreSQL''s error message.';
COMMENT ON COLUMN order_status_rejects.detail IS 'PostgreSQL''s error detail, if any.';
COMMENT ON COLUMN order_status_rejects.constraint_name IS 'The violated constraint, if any.';
COMMENT ON COLUMN order_status_rejects.record IS
    'The decoded record as a JSON object (the orders columns; times in epoch milliseconds), '
    'non-ASCII characters escaped; record::jsonb to query it.';
COMMENT ON COLUMN order_status_rejects.rejected_at IS 'When the sink set the record aside.';
