-- Every query the daemon runs, each under a `-- name: <name>` header with a one-line purpose.
-- Python calls them by name (listener.queries.QUERIES["claim_batch"]); parameters are
-- psycopg named placeholders, never string-built values. Arrays are bound in binary
-- (`%(name)b`): psycopg's text array dumper quotes every element in Python, three times the
-- cost of a batch's completion.

-- name: claim_batch
-- Claim up to %(limit)s due events, oldest first, subject by subject (sql/006: the plan is pinned).
SELECT * FROM worker.claim_events(%(worker_id)s::text, %(limit)s::integer, %(suspects)s::boolean);

-- name: complete_events
-- Record a batch's outcomes and its ledger rows in ONE statement (atomic, one round trip).
WITH ledger AS (
    INSERT INTO worker.deliveries AS d
        (event_id, channel, recipient, recipient_role, template, status,
         provider_message_id, error_code, error_message, sent_at)
    SELECT r.event_id, r.channel, r.recipient, r.recipient_role, r.template,
           coalesce(cb.status, r.status),
           r.provider_message_id, coalesce(r.error_code, cb.error_code),
           coalesce(r.error_message, cb.error_message),
           CASE WHEN r.status IN ('sent', 'simulated') THEN now() END
    FROM unnest(%(d_event_ids)b::bigint[], %(d_channels)b::text[], %(d_recipients)b::text[],
                %(d_roles)b::text[], %(d_templates)b::text[], %(d_statuses)b::text[],
                %(d_message_ids)b::text[], %(d_error_codes)b::text[], %(d_error_messages)b::text[])
         AS r(event_id, channel, recipient, recipient_role, template, status,
              provider_message_id, error_code, error_message)
    -- A provider status callback that beat this row (delivered, read, failed) is applied now;
    -- the cleanup job prunes it later (worker.delivery_callbacks, sql/004).
    LEFT JOIN worker.delivery_callbacks cb
           ON r.status = 'sent' AND cb.provider_message_id = r.provider_message_id
          AND cb.channel = r.channel
    -- A retried delivery keeps its row and counts the attempt.
    ON CONFLICT (event_id, channel, recipient) DO UPDATE
    SET status = EXCLUDED.status,
        provider_message_id = coalesce(EXCLUDED.provider_message_id, d.provider_message_id),
        error_code = EXCLUDED.error_code,
        error_message = EXCLUDED.error_message,
        attempts = d.attempts + 1,
        sent_at = coalesce(EXCLUDED.sent_at, d.sent_at),
        updated_at = now()
)
UPDATE worker.events e
SET status = o.status,
    run_at = CASE WHEN o.status = 'pending' THEN now() + make_interval(secs => o.delay)
                  ELSE e.run_at END,
    attempts = CASE WHEN o.released THEN e.attempts - 1 ELSE e.attempts END,
    last_error = coalesce(o.last_error, e.last_error),
    payload = coalesce(o.payload, e.payload),
    locked_by = NULL, updated_at = now(),  -- locked_at stays: when it was last claimed
    finished_at = CASE WHEN o.status IN ('done', 'failed', 'expired') THEN now() END
FROM unnest(%(ids)b::bigint[], %(statuses)b::text[], %(delays)b::float8[],
            %(errors)b::text[], %(payloads)b::jsonb[], %(released)b::boolean[])
     AS o(id, status, delay, last_error, payload, released)
WHERE e.id = o.id AND e.status = 'processing' AND e.locked_by = %(worker_id)s;

-- name: heartbeat
-- Announce this worker, or keep its claims alive (re-adding it after a long disconnect).
INSERT INTO worker.workers (id, hostname, pid)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: release_dead_claims
-- Return to pending the events held by workers whose heartbeat stopped %(stale_seconds)s ago. The
-- crash is counted, not the attempt (nobody knows whose crash it was); an event whose worker died
-- %(max_crashes)s times, the later ones while it ran alone as a suspect, fails instead.
UPDATE worker.events e
SET status = CASE WHEN e.crashes + 1 >= %(max_crashes)s THEN 'failed' ELSE 'pending' END,
    finished_at = CASE WHEN e.crashes + 1 >= %(max_crashes)s THEN now() END,
    attempts = greatest(e.attempts - 1, 0),
    crashes = e.crashes + 1,
    locked_by = NULL, updated_at = now(),
    last_error = CASE WHEN e.crashes + 1 >= %(max_crashes)s
                      THEN 'gave up: its worker stopped ' || (e.crashes + 1) || ' times while handling it'
                      ELSE coalesce(e.last_error, 'released: worker ' || e.locked_by || ' stopped') END
WHERE e.status = 'processing'
  AND NOT EXISTS (
      SELECT 1 FROM worker.workers w
      WHERE w.id = e.locked_by
        AND w.heartbeat_at > now() - make_interval(secs => %(stale_seconds)s))
RETURNING e.id, e.kind, e.locked_by, e.status;

-- name: suspects_waiting
-- Is an event freed from a crashed worker due? (Then a worker lets its work finish and runs it alone.)
SELECT EXISTS (
    SELECT 1 FROM worker.events
    WHERE status = 'pending' AND crashes > 0 AND run_at <= now());

-- name: forget_dead_workers
-- Drop the registry rows of workers silent for much longer than the stale threshold.
DELETE FROM worker.workers
WHERE heartbeat_at < now() - make_interval(secs => %(stale_seconds)s * 30);

-- name: expire_pending
-- Pending events past their expiry are no longer worth sending.
UPDATE worker.events
SET status = 'expired', finished_at = now(), updated_at = now(),
    last_error = coalesce(last_error, 'expired before delivery')
WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at < now()
RETURNING id, kind;

-- name: unregister_worker
-- A clean shutdown removes the worker from the registry.
DELETE FROM worker.workers WHERE id = %(worker_id)s;

-- name: list_events
-- Newest events first, optionally of one status.
SELECT id, kind, subject_id, status, attempts, run_at, created_at, last_error
FROM worker.events
WHERE %(status)s::text IS NULL OR status = %(status)s::text
ORDER BY id DESC
LIMIT %(limit)s;

-- name: show_event
-- One event with its payload.
SELECT id, kind, subject_id, payload, dedup_key, status, attempts, run_at, expires_at,
       locked_by, locked_at, last_error, created_at, updated_at, finished_at
FROM worker.events WHERE id = %(id)s;

-- name: event_deliveries
-- The ledger rows of one event.
SELECT channel, recipient_role, recipient, template, status, provider_message_id,
       error_code, error_message, attempts, sent_at, updated_at
FROM worker.deliveries WHERE event_id = %(id)s ORDER BY id;

-- name: retry_events
-- Requeue one finished event (failed, expired or done), or, with a null id, every failed one. Their
-- failed deliveries are forgotten so they are tried again; what was sent stays sent. An operator
-- requeueing an expired event means it: its expiry is lifted (an OTP's own expiry still holds).
WITH requeued AS (
    UPDATE worker.events
    SET status = 'pending', run_at = now(), attempts = 0, locked_by = NULL,
        expires_at = NULL, finished_at = NULL, updated_at = now()
    WHERE CASE WHEN %(id)s::bigint IS NULL THEN status = 'failed'
               ELSE id = %(id)s::bigint AND status IN ('failed', 'expired', 'done') END
    RETURNING id
), forgotten AS (
    DELETE FROM worker.deliveries d
    USING requeued r
    WHERE d.event_id = r.id AND d.status = 'failed'
)
SELECT id FROM requeued ORDER BY id;

-- name: queue_stats
-- Due pending depth, and the age of the oldest event a worker could claim right now (events waiting
-- behind an older open event of their subject, e.g. one in retry backoff, are not "stuck").
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(e.run_at) FILTER (WHERE NOT EXISTS (
           SELECT 1 FROM worker.events older
           WHERE older.subject_id = e.subject_id
             AND older.id < e.id
             AND older.status IN ('pending', 'processing')))), 0)::float8 AS oldest_pending_seconds
FROM worker.events e
WHERE e.status = 'pending' AND e.run_at <= now();

-- name: app_columns
-- The columns of the app's tables (public schema) among those the data contract names.
SELECT c.relname, a.attname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped;

-- name: app_triggers
-- The worker's event triggers on the app's tables, and whether each is enabled.
SELECT c.relname, t.tgname, t.tgenabled <> 'D'
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT t.tgisinternal AND t.tgname LIKE 'worker\_%%';

-- name: app_indexes
-- The indexes of the app's tables (the scheduled jobs' are created by worker.install_app_indexes()).
SELECT indexname FROM pg_indexes WHERE schemaname = 'public';
