-- Claiming moves into a function so that its plan can be pinned. The planner chooses between
-- walking events_pending_idx in id order (stopping at the limit) and collecting every pending
-- event, checking each one's subject and sorting; it picks by the pending count in the table's
-- statistics, which on a queue are nearly always wrong (a fresh table has none; an idle one says
-- "nothing pending" just before a burst). Picked wrongly, every claim costs the whole backlog
-- (26 ms instead of 0.9 ms at 9,000 pending), the worker falls behind, and the backlog that
-- makes the claims slow keeps growing. With sorting off, only the index walk is left.
CREATE FUNCTION worker.claim_events(claimer text, max_events integer, suspects_only boolean)
RETURNS TABLE (id bigint, kind text, subject_id text, payload jsonb, attempts integer,
               expires_at timestamptz, created_at timestamptz)
LANGUAGE sql
VOLATILE
SET enable_sort = off
SET enable_bitmapscan = off
AS $$
    -- Up to max_events due events, oldest first; an event waits while an older one of its
    -- subject is open. suspects_only picks the events freed from crashed workers (claimed one
    -- at a time, run alone) or else the others.
    WITH picked AS (
        SELECT e.id
        FROM worker.events e
        WHERE e.status = 'pending'
          AND e.run_at <= now()
          AND (e.crashes > 0) = suspects_only
          AND NOT EXISTS (
              SELECT 1 FROM worker.events older
              WHERE older.subject_id = e.subject_id
                AND older.id < e.id
                AND older.status IN ('pending', 'processing'))
        ORDER BY e.id
        LIMIT max_events
        FOR UPDATE SKIP LOCKED
    )
    UPDATE worker.events e
    SET status = 'processing', attempts = e.attempts + 1,
        locked_by = claimer, locked_at = now(), updated_at = now()
    FROM picked
    WHERE e.id = picked.id
    RETURNING e.id, e.kind, e.subject_id, e.payload, e.attempts, e.expires_at, e.created_at;
$$;
