-- Every query of the scheduled jobs, each under a `-- name: <name>` header with a one-line purpose.
-- Thresholds (%(now)s, %(cutoff)s, %(until)s) come from Python's clock, never SQL now(), so a test
-- can move time; record timestamps (updated_at, created_at) stay the database's own now().
-- Status lists are literals so the planner can use the partial indexes of sql/003_job_indexes.sql.

-- name: cancel_stale_bookings
-- Cancel one batch of pending, unpaid bookings created before %(cutoff)s, with an audit_logs row each.
WITH stale AS (
    SELECT id
    FROM public.bookings
    WHERE status = 'pending' AND deposit_paid_at IS NULL AND created_at < %(cutoff)s
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), cancelled AS (
    UPDATE public.bookings b
    SET status = 'cancelled', cancellation_reason = %(reason)s, updated_at = now()
    FROM stale
    WHERE b.id = stale.id
    RETURNING b.id, b.reference, b.created_at
), audited AS (
    INSERT INTO public.audit_logs (action, category, entity_type, entity_id, actor, details)
    SELECT 'booking.auto_cancelled', 'booking', 'booking', c.id::text, 'flavor-worker',
           jsonb_build_object('reference', c.reference, 'reason', %(reason)s::text,
                              'previous_status', 'pending', 'booked_at', c.created_at,
                              'job', 'cleanup_stale_bookings')
    FROM cancelled c
    RETURNING entity_id
)
SELECT entity_id AS booking_id FROM audited;

-- name: delete_old_read_notifications
-- Delete one batch of read notifications created before %(cutoff)s (unread ones are kept).
DELETE FROM public.notifications
WHERE id IN (
    SELECT id FROM public.notifications
    WHERE read AND created_at < %(cutoff)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED);

-- name: delete_expired_otps
-- Delete one batch of OTP codes that expired before %(now)s.
DELETE FROM public.otp_codes
WHERE id IN (
    SELECT id FROM public.otp_codes
    WHERE expires_at < %(now)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED);

-- name: delete_old_audit_logs
-- Delete one batch of audit logs created before %(cutoff)s, except the categories in %(keep)s.
DELETE FROM public.audit_logs
WHERE id IN (
    SELECT id FROM public.audit_logs
    WHERE created_at < %(cutoff)s AND category <> ALL (%(keep)s::text[])
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED);

-- name: prune_finished_events
-- Delete one batch of events finished before %(cutoff)s and their deliveries; returns both counts.
WITH doomed AS (
    SELECT id FROM worker.events
    WHERE status IN ('done', 'failed', 'expired') AND finished_at < %(cutoff)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), gone_deliveries AS (
    DELETE FROM worker.deliveries d USING doomed WHERE d.event_id = doomed.id RETURNING d.id
), gone_events AS (
    DELETE FROM worker.events e USING doomed WHERE e.id = doomed.id RETURNING e.id
)
SELECT (SELECT count(*) FROM gone_events) AS deleted, (SELECT count(*) FROM gone_deliveries) AS deliveries;

-- name: prune_delivery_callbacks
-- Apply stored status callbacks whose ledger row exists by now (written as 'sent' while the callback
-- was being stored), then delete one batch of those and of callbacks received before %(cutoff)s.
-- The table only holds callbacks that beat their ledger row, so it stays small.
WITH doomed AS (
    SELECT cb.provider_message_id, cb.channel, cb.status, cb.error_code, cb.error_message
    FROM worker.delivery_callbacks cb
    WHERE cb.received_at < %(cutoff)s
       OR EXISTS (SELECT 1 FROM worker.deliveries d
                  WHERE d.provider_message_id = cb.provider_message_id AND d.channel = cb.channel)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), applied AS (
    UPDATE worker.deliveries d
    SET status = doomed.status,
        error_code = coalesce(doomed.error_code, d.error_code),
        error_message = coalesce(doomed.error_message, d.error_message),
        updated_at = now()
    FROM doomed
    WHERE d.provider_message_id = doomed.provider_message_id AND d.channel = doomed.channel
      AND d.status = 'sent'
    RETURNING d.id
), gone AS (
    DELETE FROM worker.delivery_callbacks cb USING doomed
    WHERE cb.provider_message_id = doomed.provider_message_id
    RETURNING cb.provider_message_id
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM applied) AS applied;

-- name: prune_inbound_messages
-- Delete one batch of answered inbound messages received before %(cutoff)s (Twilio's retries are long over).
DELETE FROM worker.inbound_messages
WHERE message_sid IN (
    SELECT message_sid FROM worker.inbound_messages
    WHERE received_at < %(cutoff)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED);

-- name: enqueue_booking_reminders
-- Insert one batch of booking.reminder_due events for confirmed bookings starting in (now, until].
WITH due AS (
    SELECT b.id, b.event_start
    FROM public.bookings b
    WHERE b.status IN ('deposit_verified', 'accepted')
      AND b.event_start > %(now)s AND b.event_start <= %(until)s
      AND NOT EXISTS (SELECT 1 FROM worker.events e
                      WHERE e.dedup_key = 'booking.reminder_due:' || b.id::text)
    ORDER BY b.event_start
    LIMIT %(limit)s
)
INSERT INTO worker.events (kind, subject_id, payload, dedup_key, expires_at)
SELECT 'booking.reminder_due', due.id::text,
       jsonb_build_object(
           'booking_id', due.id,
           'hours_until_event',
           ceil(extract(epoch FROM due.event_start - %(now)s::timestamptz) / 3600)::int),
       'booking.reminder_due:' || due.id::text, due.event_start
FROM due
ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
RETURNING subject_id AS booking_id;

-- name: enqueue_payment_reminders
-- Insert one batch of booking.payment_due events: deposit paid, balance left, starting in (now, until].
WITH due AS (
    SELECT b.id, b.event_start, b.total_amount - b.amount_paid AS outstanding
    FROM public.bookings b
    WHERE b.deposit_paid_at IS NOT NULL AND b.status <> 'cancelled'
      AND b.event_start > %(now)s AND b.event_start <= %(until)s
      AND b.total_amount - b.amount_paid > 0
      AND NOT EXISTS (SELECT 1 FROM worker.events e
                      WHERE e.dedup_key = 'booking.payment_due:' || b.id::text)
    ORDER BY b.event_start
    LIMIT %(limit)s
)
INSERT INTO worker.events (kind, subject_id, payload, dedup_key, expires_at)
SELECT 'booking.payment_due', due.id::text,
       jsonb_build_object('booking_id', due.id, 'outstanding', due.outstanding::text),
       'booking.payment_due:' || due.id::text, due.event_start
FROM due
ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
RETURNING subject_id AS booking_id;

-- name: notify_worker_events
-- Ring the claim loop's doorbell for events inserted in this transaction.
SELECT pg_notify('worker_events', %(kind)s);

-- name: claim_job_run
-- Record a run of a job; for a scheduled tick the unique (job, scheduled_for) lets one worker win.
INSERT INTO worker.job_runs (job, scheduled_for, trigger, worker_id)
VALUES (%(job)s, coalesce(%(scheduled_for)s::timestamptz, clock_timestamp()), %(trigger)s, %(worker_id)s)
ON CONFLICT (job, scheduled_for) DO NOTHING
RETURNING id, scheduled_for;

-- name: reclaim_tick
-- Take over a tick whose run was interrupted: `failed`, or `running` for a worker that is gone.
-- The attempts guard lets one of several concurrent reclaimers win (the others re-check the row
-- after the winner commits and no longer match); a tick is tried at most %(max_attempts)s times.
UPDATE worker.job_runs r
SET status = 'running', trigger = %(trigger)s, worker_id = %(worker_id)s, attempts = r.attempts + 1,
    started_at = now(), finished_at = NULL, summary = NULL
FROM worker.job_runs previous
WHERE previous.id = r.id
  AND r.job = %(job)s AND r.scheduled_for = %(scheduled_for)s
  AND r.attempts = previous.attempts AND r.attempts < %(max_attempts)s
  AND (r.status = 'failed'
       OR (r.status = 'running'
           -- a fresh claim is left alone while its worker may not have sent a heartbeat yet
           AND r.started_at < now() - make_interval(secs => %(stale_seconds)s)
           AND NOT EXISTS (
               SELECT 1 FROM worker.workers w
               WHERE w.id = r.worker_id
                 AND w.heartbeat_at > now() - make_interval(secs => %(stale_seconds)s))))
RETURNING r.id, previous.status, previous.worker_id, r.attempts;

-- name: finish_job_run
-- Store a run's outcome and its JSON summary.
UPDATE worker.job_runs
SET status = %(status)s, finished_at = clock_timestamp(), summary = %(summary)s
WHERE id = %(run_id)s;

-- name: try_lock_job
-- Serialise runs of one job across processes (scheduled, catch-up, CLI and HTTP runs); true when
-- taken. Held until the caller's transaction ends (scheduler/runs.py `job_lock` says why).
SELECT pg_try_advisory_xact_lock(%(lock_class)s, %(lock_id)s);
