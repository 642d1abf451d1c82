-- Two repairs found in review.
--
-- 1. A cron tick interrupted by a deploy (SIGTERM) or a crash (kill -9) kept its job_runs row
--    `failed` or `running`, so no worker ever ran it again. `attempts` counts how many times a
--    tick was claimed: a reclaim bumps it (a guard two workers cannot both pass) and stops after
--    a few tries, so a tick that fails every time does not run forever.
ALTER TABLE worker.job_runs ADD COLUMN attempts integer NOT NULL DEFAULT 1;

-- 2. Twilio can call back (delivered, read, failed) before the ledger row exists, because the
--    ledger is written when the whole event finishes. Such a callback waits here; the ledger
--    insert (`complete_events`) applies it, and the cleanup job prunes applied and old ones.
CREATE TABLE worker.delivery_callbacks (
    provider_message_id text        PRIMARY KEY,
    channel             text        NOT NULL CHECK (channel IN ('whatsapp', 'email')),
    status              text        NOT NULL CHECK (status IN ('delivered', 'read', 'failed', 'undelivered')),
    error_code          text,
    error_message       text,
    received_at         timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE worker.delivery_callbacks IS
    'Provider status callbacks that arrived before their worker.deliveries row; applied when it is written.';

CREATE INDEX delivery_callbacks_received_idx ON worker.delivery_callbacks (received_at);
