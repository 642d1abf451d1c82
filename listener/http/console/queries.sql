-- The operator console's reads (and its audit rows), each under a `-- name: <name>` header,
-- loaded by listener/http/console/store.py. Every read of the ledger is served by an index
-- (sql/011_console_indexes.sql; tests/test_console_plans.py fails on a sequential scan), and
-- lists are keyset-paginated. When worker.deliveries gains columns or states, this file is the
-- one place the console adapts.

-- name: event_counts
-- Open and failed events per kind, counted in events_open_kind_idx alone (sql/011).
SELECT kind, status, count(*) AS n
FROM worker.events
WHERE status IN ('pending', 'processing', 'failed')
GROUP BY kind, status
ORDER BY kind, status;

-- name: oldest_pending
-- The oldest pending event (due or waiting for its retry), first in events_pending_idx.
SELECT id, kind, created_at, extract(epoch FROM now() - created_at)::float8 AS age_seconds
FROM worker.events
WHERE status = 'pending'
ORDER BY id
LIMIT 1;

-- name: recent_failed_events
-- The latest failed events (events_failed_idx, backwards): a failed event may have no failed
-- delivery at all (its data was gone, its worker kept crashing), so the failures list misses it.
SELECT id, kind, attempts, crashes, last_error, finished_at
FROM worker.events
WHERE status = 'failed'
ORDER BY id DESC
LIMIT 10;

-- name: channel_problems
-- Failed, skipped and undelivered ledger rows per channel, written in the last 24 hours.
SELECT channel, status, count(*) AS n
FROM worker.deliveries
WHERE status IN ('failed', 'skipped', 'undelivered')
  AND created_at > now() - interval '24 hours'
GROUP BY channel, status
ORDER BY channel, status;

-- name: last_job_runs
-- The most recent run of each job (job_runs' unique (job, scheduled_for) index, walked per job).
SELECT DISTINCT ON (job) job, scheduled_for, trigger, status, worker_id, started_at, finished_at,
       attempts, summary
FROM worker.job_runs
ORDER BY job, scheduled_for DESC;

-- name: workers
-- Registered workers and the age of their last heartbeat.
SELECT id, hostname, pid, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at)::float8 AS silent_seconds
FROM worker.workers
ORDER BY started_at;

-- name: event
-- One event, for its timeline.
SELECT id, kind, subject_id, payload, status, attempts, crashes, run_at, expires_at, locked_by,
       locked_at, last_error, created_at, updated_at, finished_at
FROM worker.events WHERE id = %(id)s;

-- name: event_deliveries
-- One event's ledger rows, with a provider status callback still waiting for its row, if any.
SELECT d.id, d.channel, d.recipient, d.recipient_role, d.template, d.status, d.provider_message_id,
       d.error_code, d.error_message, d.attempts, d.created_at, d.updated_at, d.sent_at,
       cb.status AS callback_status, cb.error_code AS callback_error_code, cb.received_at
FROM worker.deliveries d
LEFT JOIN worker.delivery_callbacks cb ON cb.provider_message_id = d.provider_message_id
WHERE d.event_id = %(id)s
ORDER BY d.id;

-- name: booking_reference
-- The human reference of an event's booking (its subject, when that is a booking's uuid).
SELECT reference FROM public.bookings WHERE id = %(booking_id)s::uuid;

-- name: events_of_booking
-- A booking's events (by its reference), newest first, each with its ledger's tally.
SELECT e.id, e.kind, e.status, e.attempts, e.created_at, e.finished_at, e.last_error,
       tally.sent, tally.problems
FROM public.bookings b
JOIN worker.events e ON e.subject_id = b.id::text
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE d.status IN ('sent', 'simulated', 'delivered', 'read')) AS sent,
           count(*) FILTER (WHERE d.status IN ('failed', 'skipped', 'undelivered')) AS problems
    FROM worker.deliveries d WHERE d.event_id = e.id
) tally
WHERE b.reference = %(reference)s
ORDER BY e.id DESC
LIMIT 200;

-- name: event_exists
-- Is there an event with this id (find by event id)?
SELECT EXISTS (SELECT 1 FROM worker.events WHERE id = %(id)s);

-- name: deliveries_to
-- One recipient's ledger rows, newest first, a page after the keyset cursor %(before_id)s.
SELECT d.id, d.event_id, e.kind, d.channel, d.recipient, d.recipient_role, d.template, d.status,
       d.error_code, d.error_message, d.attempts, d.created_at
FROM worker.deliveries d
JOIN worker.events e ON e.id = d.event_id
WHERE d.recipient = %(recipient)s AND d.id < %(before_id)s
ORDER BY d.id DESC
LIMIT %(limit)s;

-- name: problems
-- Failed, skipped and undelivered deliveries (only failed ones with %(failed_only)s) matching
-- kind, channel and reason, newest first, among the next %(scan_limit)s problem rows of the time
-- range after the keyset cursor (%(before_at)s, %(before_id)s). The walk reads the index alone
-- (its INCLUDE columns answer every filter but the kind, which costs one event lookup a
-- candidate) and its rows come out in order, so the page stops at %(limit)s matches; bounding
-- the walk bounds the page's time when a filter matches little (`problems_frontier` says where
-- the walk stopped, to continue from there). The status list is the index predicate, written
-- out so that the planner sees the query implies it.
SELECT d.id, d.event_id, e.kind, e.status AS event_status, d.channel, d.recipient,
       d.recipient_role, d.template, d.status, d.error_code, d.error_message, d.attempts,
       d.created_at
FROM (
    SELECT w.id, w.created_at, w.event_id, w.channel, w.error_code, w.status
    FROM worker.deliveries w
    WHERE w.status IN ('failed', 'skipped', 'undelivered')
      AND w.created_at >= %(since)s::timestamptz
      AND w.created_at < %(until)s::timestamptz
      AND (w.created_at, w.id) < (%(before_at)s::timestamptz, %(before_id)s::bigint)
    ORDER BY w.created_at DESC, w.id DESC
    LIMIT %(scan_limit)s
) walked
JOIN worker.deliveries d ON d.id = walked.id
JOIN worker.events e ON e.id = d.event_id
WHERE (NOT %(failed_only)s::boolean OR walked.status = 'failed')
  AND (%(channel)s::text IS NULL OR walked.channel = %(channel)s::text)
  AND (%(reason)s::text IS NULL OR walked.error_code = %(reason)s::text)
  AND (%(kind)s::text IS NULL OR e.kind = %(kind)s::text)
ORDER BY walked.created_at DESC, walked.id DESC
LIMIT %(limit)s;

-- name: problems_frontier
-- Where the walk of `problems` (the same rows, the same order) stopped: its %(scan_limit)s-th
-- row, or none when the time range had fewer problem rows left.
SELECT w.created_at, w.id
FROM worker.deliveries w
WHERE w.status IN ('failed', 'skipped', 'undelivered')
  AND w.created_at >= %(since)s::timestamptz
  AND w.created_at < %(until)s::timestamptz
  AND (w.created_at, w.id) < (%(before_at)s::timestamptz, %(before_id)s::bigint)
ORDER BY w.created_at DESC, w.id DESC
OFFSET %(scan_limit)s - 1
LIMIT 1;

-- name: notify_retry
-- Ring the workers' doorbell after requeueing (as `flavor-worker events retry` does).
SELECT pg_notify('worker_events', 'retry');

-- name: audit
-- One audit row per console action: sign-ins (category security), retries (operations).
INSERT INTO public.audit_logs (action, category, entity_type, entity_id, actor, details)
VALUES (%(action)s, %(category)s, %(entity_type)s, %(entity_id)s, 'console', %(details)s);

-- name: recipient_of
-- The recipient of one ledger row: the find page pages through a recipient's deliveries by the
-- last row shown, so no link carries the address itself.
SELECT recipient FROM worker.deliveries WHERE id = %(id)s;
