-- The worker's own schema: the durable outbox, the delivery ledger, job-run bookkeeping and
-- the registry of live workers (heartbeats, so a crashed worker's claims are freed quickly).

CREATE TABLE worker.events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL,
    subject_id  text,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    dedup_key   text,
    status      text        NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'processing', 'done', 'failed', 'expired')),
    attempts    integer     NOT NULL DEFAULT 0,
    run_at      timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    locked_by   text,
    locked_at   timestamptz,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

COMMENT ON TABLE worker.events IS
    'Outbox written by triggers and the scheduler; NOTIFY worker_events is only the doorbell.';

-- Claiming walks pending events in id order.
CREATE INDEX events_pending_idx ON worker.events (id) WHERE status = 'pending';
-- Per-subject ordering: "is an older event of this subject still open?"
CREATE INDEX events_open_subject_idx ON worker.events (subject_id, id)
    WHERE status IN ('pending', 'processing');
-- Freeing the claims of dead workers.
CREATE INDEX events_processing_idx ON worker.events (locked_by) WHERE status = 'processing';
-- Expiring pending events whose message is no longer useful.
CREATE INDEX events_expiring_idx ON worker.events (expires_at)
    WHERE status = 'pending' AND expires_at IS NOT NULL;
-- Scheduler-made events carry a dedup key; a partial index, so the common keyless event pays
-- nothing for it on each of its status changes.
CREATE UNIQUE INDEX events_dedup_key_idx ON worker.events (dedup_key) WHERE dedup_key IS NOT NULL;
-- `events list --status failed`, and pruning finished events. (Other statuses are listed by
-- walking the primary key backwards: an index on status would be rewritten on every change.)
CREATE INDEX events_failed_idx ON worker.events (id) WHERE status = 'failed';
CREATE INDEX events_finished_idx ON worker.events (finished_at)
    WHERE status IN ('done', 'failed', 'expired');

CREATE TABLE worker.deliveries (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- No foreign key: its per-row check would cost every ledger insert a lookup and a row lock
    -- on the event; ledger rows are pruned together with their events by the retention job.
    event_id            bigint      NOT NULL,
    channel             text        NOT NULL CHECK (channel IN ('whatsapp', 'email', 'in_app')),
    recipient           text        NOT NULL,
    recipient_role      text,
    template            text,
    status              text        NOT NULL
                        CHECK (status IN ('sent', 'failed', 'skipped', 'simulated',
                                          'delivered', 'read', 'undelivered')),
    provider_message_id text,
    error_code          text,
    error_message       text,
    attempts            integer     NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    UNIQUE (event_id, channel, recipient)
);

CREATE INDEX deliveries_provider_message_idx ON worker.deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

CREATE TABLE worker.job_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job           text        NOT NULL,
    scheduled_for timestamptz NOT NULL,
    trigger       text        NOT NULL DEFAULT 'schedule'
                  CHECK (trigger IN ('schedule', 'catch_up', 'manual', 'http')),
    status        text        NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'succeeded', 'failed')),
    worker_id     text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    summary       jsonb,
    UNIQUE (job, scheduled_for)
);

CREATE TABLE worker.workers (
    id           text PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
