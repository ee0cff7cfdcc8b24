-- The order-status tables are a public contract: describe them where consumers look
-- (\d+ in psql, schema browsers), not only in the repository. Comments only; no data or
-- structure changes.

COMMENT ON TABLE orders IS
    'One row per order: the latest state from the order-status changelog, applied exactly once '
    'by the order-saga sink. Change feed: LISTEN order_status_changed (JSON payload, sent per '
    'committed batch). Written only by the sink.';
COMMENT ON COLUMN orders.order_id IS 'Order id, a UUID; the order-status record key.';
COMMENT ON COLUMN orders.customer_id IS 'Customer who placed the order.';
COMMENT ON COLUMN orders.status IS
    'CREATED, RESERVED, PAID, SHIPPING_SCHEDULED, or terminal COMPLETED, FAILED, CANCELED.';
COMMENT ON COLUMN orders.version IS
    'Increments by one on every change, from 1; the row always holds the highest version seen.';
COMMENT ON COLUMN orders.total_minor IS 'Order total in minor units of currency (e.g. cents).';
COMMENT ON COLUMN orders.currency IS 'ISO 4217 code of total_minor and of the item prices.';
COMMENT ON COLUMN orders.items IS
    'JSON array of {"sku": text, "quantity": int, "unit_price_minor": int}.';
COMMENT ON COLUMN orders.shipping_address IS
    'JSON object {"recipient", "street", "city", "postal_code", "country"}; null if unknown.';
COMMENT ON COLUMN orders.reason IS
    'Why the order failed or was canceled, a refused cancel request, or a note that manual '
    'action is needed; null otherwise.';
COMMENT ON COLUMN orders.created_at IS 'When the customer placed the order.';
COMMENT ON COLUMN orders.updated_at IS 'When the order last changed (the time of version).';
COMMENT ON COLUMN orders.reserved_at IS 'When the order became RESERVED; null if it did not.';
COMMENT ON COLUMN orders.paid_at IS 'When the order became PAID; null if it did not.';
COMMENT ON COLUMN orders.shipping_scheduled_at IS
    'When the order became SHIPPING_SCHEDULED; null if it did not.';
COMMENT ON COLUMN orders.completed_at IS 'When the order became COMPLETED; null if it did not.';
COMMENT ON COLUMN orders.failed_at IS 'When the order became FAILED; null if it did not.';
COMMENT ON COLUMN orders.canceled_at IS 'When the order became CANCELED; null if it did not.';

COMMENT ON TABLE order_status_history IS
    'One row per version of an order (every state change), unique on (order_id, version). '
    'Complete as long as the sink reads order-status before compaction removes old versions.';
COMMENT ON COLUMN order_status_history.version IS 'The order version this row records.';
COMMENT ON COLUMN order_status_history.status IS 'The status reached at this version.';
COMMENT ON COLUMN order_status_history.reason IS 'The order''s reason at this version, if any.';
COMMENT ON COLUMN order_status_history.changed_at IS 'When this version was reached.';

COMMENT ON TABLE sink_offsets IS
    'The sink''s position in order-status per consumer group and partition, committed in the '
    'same transaction as the rows it produced. To replay: stop the group''s sinks, delete its '
    'rows, start them again.';
COMMENT ON COLUMN sink_offsets.next_offset IS 'Offset of the next record to read.';

COMMENT ON VIEW orders_in_flight IS
    'Orders not yet terminal, with stalled_for = now() - updated_at.';
