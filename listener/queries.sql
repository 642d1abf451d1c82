-- Every query the daemon runs, each under a `-- name: <name>` header with a one-line purpose.
-- Python calls them by name (listener.queries.QUERIES["claim_batch"]); parameters are
-- psycopg named placeholders, never string-built values. Arrays are bound in binary
-- (`%(name)b`): psycopg's text array dumper quotes every element in Python, three times the
-- cost of a batch's completion.

-- name: claim_batch
-- Claim up to %(limit)s due events, login codes first, then oldest first, subject by subject
-- (sql/006: the plan is pinned; sql/012: and kept); or a group of suspects; or login codes only
-- (sql/008).
SELECT * FROM worker.claim_events_v3(
    %(worker_id)s::text, %(limit)s::integer, %(suspects)s::boolean, %(urgent)s::boolean);

-- name: complete_events
-- Record ledger rows and outcomes in ONE statement (atomic, one round trip). A ledger row comes
-- as soon as its message was handed over, often before its event's outcome (which may never
-- come from this worker: SIGTERM, kill -9); an outcome comes after all its event's rows.
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
    -- Not counted: returned unstarted at shutdown, throttled, or the provider's circuit open.
    attempts = CASE WHEN o.uncounted THEN e.attempts - 1 ELSE e.attempts END,
    last_error = coalesce(o.last_error, e.last_error),
    payload = coalesce(o.payload, e.payload),
    -- A suspect that ran without taking its worker down is cleared (sql/008); one handed back
    -- unstarted is still a suspect.
    suspect_group = CASE WHEN o.released THEN e.suspect_group END,
    locked_by = NULL, updated_at = now(),  -- locked_at stays: when it was last claimed
    finished_at = CASE WHEN o.status IN ('done', 'failed', 'expired') THEN now() END
FROM unnest(%(ids)b::bigint[], %(statuses)b::text[], %(delays)b::float8[],
            %(errors)b::text[], %(payloads)b::jsonb[], %(released)b::boolean[],
            %(uncounted)b::boolean[])
     AS o(id, status, delay, last_error, payload, released, uncounted)
WHERE e.id = o.id AND e.status = 'processing' AND e.locked_by = %(worker_id)s;

-- name: heartbeat
-- Announce this worker, or keep its claims alive (re-adding it after a long disconnect).
INSERT INTO worker.workers (id, hostname, pid)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: release_dead_claims
-- Return to pending the events held by workers whose heartbeat stopped %(stale_seconds)s ago; the
-- attempt is not counted. A crash is a worker that went silent while the server stayed up: its
-- events become suspects in groups half the size of what it held (sql/008), and one that was
-- alone in its group counts a solo crash, failing at %(max_crashes)s. A worker last heard of
-- before the server restarted, or one that unregistered (a clean stop whose last outcomes could
-- not be written), did not crash: its events simply go back.
WITH silent AS (
    SELECT e.locked_by AS worker_id, count(*) AS held,
           count(*) FILTER (WHERE e.suspect_group IS NOT NULL) AS held_suspects,
           bool_and(w.id IS NOT NULL AND w.heartbeat_at > pg_postmaster_start_time()) AS crashed
    FROM worker.events e
    LEFT JOIN worker.workers w ON w.id = e.locked_by
    WHERE e.status = 'processing'
      AND (w.id IS NULL OR w.heartbeat_at < now() - make_interval(secs => %(stale_seconds)s))
    GROUP BY e.locked_by
), crash AS (
    -- A worker running a group of suspects held only them, but for login codes claimed beside
    -- (sql/008): then the crash is the group's, and the login codes go back as plain events.
    SELECT e.id, s.worker_id,
           CASE WHEN s.held_suspects > 0 THEN s.held_suspects ELSE s.held END AS held,
           s.crashed AND (s.held_suspects = 0 OR e.suspect_group IS NOT NULL) AS crashed
    FROM worker.events e JOIN silent s ON s.worker_id = e.locked_by
    WHERE e.status = 'processing'
), verdict AS (
    SELECT c.*, c.crashed AND c.held = 1 AND e.solo_crashes + 1 >= %(max_crashes)s AS gives_up
    FROM crash c JOIN worker.events e ON e.id = c.id
)
UPDATE worker.events e
SET status = CASE WHEN v.gives_up THEN 'failed' ELSE 'pending' END,
    finished_at = CASE WHEN v.gives_up THEN now() END,
    attempts = greatest(e.attempts - 1, 0),
    crashes = e.crashes + v.crashed::int,
    solo_crashes = e.solo_crashes + (v.crashed AND v.held = 1)::int,
    -- Halved, never grown back: a member of a smaller group pulled into a larger one keeps its own.
    suspect_group = CASE WHEN v.crashed
                         THEN least(e.suspect_group, greatest(1, (v.held + 1) / 2))::integer
                         ELSE e.suspect_group END,
    locked_by = NULL, updated_at = now(),
    last_error = CASE WHEN v.gives_up
                      THEN 'gave up: its worker stopped ' || (e.solo_crashes + 1)
                           || ' times while it was handled alone'
                      ELSE coalesce(e.last_error, 'released: worker ' || v.worker_id || ' stopped') END
FROM verdict v
-- Checked again on the locked row: two workers releasing at once release each event once.
WHERE e.id = v.id AND e.status = 'processing' AND e.locked_by = v.worker_id
RETURNING e.id, e.kind, v.worker_id, e.status, v.crashed, e.suspect_group;

-- name: suspects_waiting
-- Is an event freed from a crashed worker due? (Then a worker lets its work finish and runs its
-- group alone.)
SELECT EXISTS (
    SELECT 1 FROM worker.events
    WHERE status = 'pending' AND suspect_group IS NOT NULL AND run_at <= now());

-- name: apply_waiting_callbacks
-- Status callbacks stored before their ledger row whose row was then written without them (its
-- flush had begun before the callback was stored, so it could not see it): applied, then dropped.
WITH applied AS (
    UPDATE worker.deliveries d
    SET status = cb.status,
        error_code = coalesce(cb.error_code, d.error_code),
        error_message = coalesce(cb.error_message, d.error_message),
        updated_at = now()
    FROM worker.delivery_callbacks cb
    WHERE d.provider_message_id = cb.provider_message_id AND d.channel = cb.channel
      AND d.status = 'sent'
    RETURNING cb.provider_message_id
)
DELETE FROM worker.delivery_callbacks cb USING applied a
WHERE cb.provider_message_id = a.provider_message_id;

-- name: forget_dead_workers
-- Drop the registry rows of workers silent for much longer than the stale threshold, once their
-- claims are released (the row is what tells a crash from a clean stop).
DELETE FROM worker.workers w
WHERE w.heartbeat_at < now() - make_interval(secs => %(stale_seconds)s * 30)
  AND NOT EXISTS (SELECT 1 FROM worker.events e WHERE e.status = 'processing' AND e.locked_by = w.id);

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
-- One event with its payload, its crash record (sql/008) and when its retries end.
SELECT id, kind, subject_id, payload, dedup_key, status, attempts, run_at, expires_at,
       locked_by, locked_at, last_error, created_at, updated_at, finished_at,
       crashes, solo_crashes, suspect_group,
       least(expires_at, coalesce(requeued_at, created_at) + make_interval(secs => coalesce(
           (%(deadlines)s::jsonb ->> kind)::float8, %(default_deadline)s::float8))) AS deadline
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
        expires_at = NULL, finished_at = NULL, updated_at = now(),
        requeued_at = now()  -- its retries get a whole deadline again (sql/008)
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

-- name: channel_backlog
-- Per channel: how many open events (pending or being handled) have a message on it that the
-- ledger does not show yet (an event counts once per channel), and the oldest one's age. An
-- event's channels are those its kind routes to (the pairs come from handlers.routing.ROUTES); an
-- email still waiting for its quota counts for email only once its WhatsApp is in the ledger.
SELECT r.channel, count(*)::int AS messages,
       coalesce(extract(epoch FROM now() - min(e.created_at)), 0)::float8 AS oldest_seconds
FROM worker.events e
JOIN unnest(%(kinds)s::text[], %(channels)s::text[]) AS r(kind, channel) ON r.kind = e.kind
WHERE e.status IN ('pending', 'processing')
  AND NOT EXISTS (SELECT 1 FROM worker.deliveries d WHERE d.event_id = e.id AND d.channel = r.channel)
GROUP BY r.channel;
