-- Crash recovery in seconds instead of minutes, and a database outage that is not a crash.
--
-- Until now the events freed from a dead worker (sql/005) ran one at a time, each alone, the
-- next only after the next heartbeat: one worker killed while holding ~200 claims took its
-- successor 305 s to work through them, and four workers killed ten times drained 1,413
-- suspects at exactly 2/s. A crash says only that one of the dead worker's claims MAY be poison,
-- so the freed events now run in groups, each group alone: a group that finishes clears its
-- members; a group that takes its worker down too is split in half (bisection). Only a crash
-- while an event ran entirely alone counts against it (`solo_crashes`, failing it at
-- MAX_CRASHES): a poison event among 400 bystanders is cornered in about nine crashes, while
-- the bystanders go out in the groups that finish.
--
-- `crashes` keeps counting every release from a dead worker, as the previous version reads it.
--
-- The two indexes are built inside this migration's transaction, which holds worker.events for
-- that long; on a large outbox, build them first with CREATE INDEX CONCURRENTLY under the same
-- names (IF NOT EXISTS then leaves them alone).

ALTER TABLE worker.events ADD COLUMN suspect_group integer;
ALTER TABLE worker.events ADD COLUMN solo_crashes integer NOT NULL DEFAULT 0;

COMMENT ON COLUMN worker.events.suspect_group IS
    'Set when freed from a worker that died: the largest group this event may run in, alone '
    '(half the group that died). Cleared once it is handled.';
COMMENT ON COLUMN worker.events.solo_crashes IS
    'Worker deaths while this event ran entirely alone; MAX_CRASHES of them fail it.';

-- Suspects freed by the previous version ran one at a time: so they still do.
UPDATE worker.events SET suspect_group = 1 WHERE status = 'pending' AND crashes > 0;

-- Retries end at a deadline counted from an event's creation (EVENT_DEADLINE_SECONDS); an
-- operator who requeues a failed event (`events retry`, the console) starts that count anew,
-- or an event failed at its deadline would fail again at its first transient error.
ALTER TABLE worker.events ADD COLUMN requeued_at timestamptz;

CREATE INDEX IF NOT EXISTS events_suspect_group_idx ON worker.events (id)
    WHERE status = 'pending' AND suspect_group IS NOT NULL;

-- Login codes first: someone is waiting at a login screen, while most events can wait a
-- second. The claim takes due `otp.created` events before any other (through their own small
-- index, so looking costs nothing when there are none), and a worker running a group of
-- suspects alone still claims them (urgent_only): a recovery must not hold up a login.
CREATE INDEX IF NOT EXISTS events_pending_urgent_idx ON worker.events (id)
    WHERE status = 'pending' AND kind = 'otp.created';

-- The claim of sql/006, with login codes first and suspects picked by group. The previous
-- version's workers keep calling worker.claim_events during a deploy; both may run side by side.
CREATE FUNCTION worker.claim_events_v2(
    claimer text, max_events integer, suspects_only boolean, urgent_only boolean)
RETURNS TABLE (id bigint, kind text, subject_id text, payload jsonb, attempts integer,
               expires_at timestamptz, retry_from timestamptz)
LANGUAGE sql
VOLATILE
SET enable_sort = off
SET enable_bitmapscan = off
AS $$
    -- Up to max_events due events, oldest first, login codes before the rest; an event waits
    -- while an older one of its subject is open. With suspects_only, the events freed from
    -- dead workers instead, as many as the oldest one's group allows (they then run alone,
    -- together). With urgent_only, login codes only.
    WITH urgent AS (
        SELECT e.id
        FROM worker.events e
        WHERE NOT suspects_only
          AND e.status = 'pending' AND e.kind = 'otp.created'
          AND e.run_at <= now()
          AND e.suspect_group IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM worker.events older
              WHERE older.subject_id = e.subject_id
                AND older.id < e.id
                AND older.status IN ('pending', 'processing'))
        ORDER BY e.id
        LIMIT max_events
        FOR UPDATE SKIP LOCKED
    ), head AS (
        SELECT s.suspect_group
        FROM worker.events s
        WHERE suspects_only AND s.status = 'pending' AND s.suspect_group IS NOT NULL
          AND s.run_at <= now()
        ORDER BY s.id
        LIMIT 1
    ), rest AS (
        SELECT e.id
        FROM worker.events e
        WHERE NOT urgent_only
          AND e.status = 'pending'
          AND e.run_at <= now()
          AND (e.suspect_group IS NOT NULL) = suspects_only
          -- A group is of one size: a suspect already narrowed down to a smaller group than the
          -- head's is not pulled back into a larger one.
          AND (NOT suspects_only OR e.suspect_group >= (SELECT suspect_group FROM head))
          AND (suspects_only OR e.kind <> 'otp.created')
          AND NOT EXISTS (
              SELECT 1 FROM worker.events older
              WHERE older.subject_id = e.subject_id
                AND older.id < e.id
                AND older.status IN ('pending', 'processing'))
        ORDER BY e.id
        LIMIT CASE WHEN suspects_only
                   THEN least(max_events, coalesce((SELECT suspect_group FROM head), 0))
                   ELSE max_events - (SELECT count(*) FROM urgent) END
        FOR UPDATE SKIP LOCKED
    )
    UPDATE worker.events e
    SET status = 'processing', attempts = e.attempts + 1,
        locked_by = claimer, locked_at = now(), updated_at = now()
    FROM (SELECT id FROM urgent UNION ALL SELECT id FROM rest) picked
    WHERE e.id = picked.id
    RETURNING e.id, e.kind, e.subject_id, e.payload, e.attempts, e.expires_at,
              coalesce(e.requeued_at, e.created_at);
$$;

-- Only the worker's own role may call it (sql/007).
REVOKE EXECUTE ON FUNCTION worker.claim_events_v2(text, integer, boolean, boolean) FROM PUBLIC;
