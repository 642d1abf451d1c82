-- The HTTP surface's own queries, each under a `-- name: <name>` header with a one-line purpose.
-- (Ledger updates it shares with the claim loop stay in listener/queries.sql.)

-- name: store_delivery_callback
-- Keep a status callback whose ledger row does not exist yet; `complete_events` applies it when it is
-- written (or, if that write had already begun, the heartbeat's `apply_waiting_callbacks` just
-- after). A later callback replaces an earlier one, except that read is never undone by delivered.
INSERT INTO worker.delivery_callbacks AS cb (provider_message_id, channel, status, error_code, error_message)
SELECT %(message_id)s::text, %(channel)s::text, %(status)s::text, %(error_code)s::text, %(error_message)s::text
WHERE NOT EXISTS (SELECT 1 FROM worker.deliveries d
                  WHERE d.provider_message_id = %(message_id)s::text AND d.channel = %(channel)s::text)
ON CONFLICT (provider_message_id) DO UPDATE
SET status = EXCLUDED.status,
    error_code = coalesce(EXCLUDED.error_code, cb.error_code),
    error_message = coalesce(EXCLUDED.error_message, cb.error_message),
    received_at = now()
WHERE NOT (cb.status = 'read' AND EXCLUDED.status = 'delivered')
RETURNING provider_message_id;

-- name: record_delivery_status
-- A provider's status callback for one message: delivered, read, failed or undelivered (read is never undone).
UPDATE worker.deliveries
SET status = %(status)s::text,
    error_code = coalesce(%(error_code)s::text, error_code),
    error_message = coalesce(%(error_message)s::text, error_message),
    updated_at = now()
WHERE provider_message_id = %(message_id)s::text
  AND channel = %(channel)s::text
  AND NOT (status = 'read' AND %(status)s::text = 'delivered')
RETURNING id, event_id;
