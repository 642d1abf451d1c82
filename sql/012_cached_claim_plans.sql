-- The claim of sql/008, in PL/pgSQL so that PostgreSQL keeps its plans between calls.
--
-- worker.claim_events_v2 is a SQL function with SET clauses (the pinned plan of sql/006), which
-- PostgreSQL cannot inline: it parses and plans its statement anew on every call, and that
-- statement (login codes, suspects and the rest as three CTEs, whichever the flags ask for) is
-- large. Measured with pg_stat_statements at 200 bookings/s (null transport, PostgreSQL 15,
-- 2 cores): 830 us of database time per claim against 330 us for sql/006's smaller claim, 2.7
-- claims per event (most of them finding nothing), so 2.2 ms of the database's time per event,
-- nearly all planning, where the rest of an event's life (its insert, trigger, message data and
-- outcome) costs about 0.5 ms. PL/pgSQL keeps its statements' plans for the connection: after
-- five custom plans, PostgreSQL keeps a generic one unless it looks costlier (re-planned when the
-- table's statistics change). The modes are separate statements (suspects; login codes, shared by
-- the plain and urgent-only claims; the rest), so no flag is left for a generic plan to guess.
-- One claim on an empty queue, from Python, round trip included: v2 770-1040 us, this version
-- 170-190 us ("SELECT 1": 130-170 us). At 200 bookings/s the claims' database time per event
-- went from 2.2 ms to 0.46 ms. (Measured with a first form of this function that updated in each
-- mode's statement; this one picks the ids in each and claims them with one update, the same
-- rows for the same cost: an empty claim 210-220 us against 235-290 us for the first form, a
-- batch of 50 out of 20,000 pending 1.2-1.8 ms either way, both in one later, busier run.)
--
-- The SET clauses stay: a kept plan is made under them, so it is still the walk of a partial
-- index in id order (events_pending_idx, events_pending_urgent_idx, events_suspect_group_idx)
-- that stops at the limit, whatever the statistics say: seen with auto_explain over 100,000
-- finished and 20,000 pending events, before and after ANALYZE (first form), and checked by
-- tests/test_claim_plan.py under a forced generic plan (rows read, not time).
--
-- Same contract as v2 (same arguments, same rows): the events are picked (and locked) by the
-- mode's statements, login codes before the rest, then claimed by one update. The previous
-- version's workers keep calling worker.claim_events_v2 during a deploy: both run side by side.
CREATE FUNCTION worker.claim_events_v3(
    claimer text, max_events integer, suspects_only boolean, urgent_only boolean)
RETURNS TABLE (id bigint, kind text, subject_id text, payload jsonb, attempts integer,
               expires_at timestamptz, retry_from timestamptz)
LANGUAGE plpgsql
VOLATILE
SET enable_sort = off
SET enable_bitmapscan = off
AS $$
DECLARE
    picked bigint[];  -- the events this call claims, locked
    head integer;     -- the oldest due suspect's group size
BEGIN
    IF suspects_only AND urgent_only THEN
        RETURN;  -- v2's answer to both: nothing (no caller asks it)
    ELSIF suspects_only THEN
        -- Suspects as one group: as many as the oldest one's group allows, none narrowed down
        -- to a smaller group than the head's.
        SELECT s.suspect_group INTO head
        FROM worker.events s
        WHERE s.status = 'pending' AND s.suspect_group IS NOT NULL AND s.run_at <= now()
        ORDER BY s.id
        LIMIT 1;
        IF head IS NULL THEN
            RETURN;
        END IF;
        picked := ARRAY(
            SELECT e.id
            FROM worker.events e
            WHERE e.status = 'pending' AND e.run_at <= now()
              AND e.suspect_group IS NOT NULL AND e.suspect_group >= head
              AND NOT EXISTS (
                  SELECT 1 FROM worker.events older
                  WHERE older.subject_id = e.subject_id
                    AND older.id < e.id
                    AND older.status IN ('pending', 'processing'))
            ORDER BY e.id
            LIMIT least(max_events, head)
            FOR UPDATE SKIP LOCKED);
    ELSE
        -- Login codes first (someone waits at a login screen), suspects left to their groups.
        picked := ARRAY(
            SELECT e.id
            FROM worker.events e
            WHERE e.status = 'pending' AND e.kind = 'otp.created' AND e.run_at <= now()
              AND e.suspect_group IS NULL
              AND NOT EXISTS (
                  SELECT 1 FROM worker.events older
                  WHERE older.subject_id = e.subject_id
                    AND older.id < e.id
                    AND older.status IN ('pending', 'processing'))
            ORDER BY e.id
            LIMIT max_events
            FOR UPDATE SKIP LOCKED);
        IF NOT urgent_only AND cardinality(picked) < max_events THEN
            -- Then the rest, oldest first; an event waits while an older one of its subject is
            -- open (the login codes just picked are still `pending` to this check).
            picked := picked || ARRAY(
                SELECT e.id
                FROM worker.events e
                WHERE e.status = 'pending' AND e.run_at <= now()
                  AND e.suspect_group IS NULL AND e.kind <> 'otp.created'
                  AND NOT EXISTS (
                      SELECT 1 FROM worker.events older
                      WHERE older.subject_id = e.subject_id
                        AND older.id < e.id
                        AND older.status IN ('pending', 'processing'))
                ORDER BY e.id
                LIMIT max_events - cardinality(picked)
                FOR UPDATE SKIP LOCKED);
        END IF;
    END IF;
    IF cardinality(picked) = 0 THEN
        RETURN;  -- most claims find nothing: no update to run
    END IF;
    -- One update for all of them, whichever way they were picked.
    RETURN QUERY
    UPDATE worker.events e
    SET status = 'processing', attempts = e.attempts + 1,
        locked_by = claimer, locked_at = now(), updated_at = now()
    WHERE e.id = ANY (picked)
    RETURNING e.id, e.kind, e.subject_id, e.payload, e.attempts, e.expires_at,
              coalesce(e.requeued_at, e.created_at);
END;
$$;

-- Only the worker's own role may call it (sql/007), and the roles that may call v2: a worker
-- connecting as another role was granted EXECUTE on the functions that existed then (README), and
-- must still be able to claim once this version runs.
REVOKE EXECUTE ON FUNCTION worker.claim_events_v3(text, integer, boolean, boolean) FROM PUBLIC;
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT acl.grantee::regrole
        FROM pg_proc p, aclexplode(p.proacl) acl
        WHERE p.oid = 'worker.claim_events_v2(text, integer, boolean, boolean)'::regprocedure
          AND acl.privilege_type = 'EXECUTE' AND acl.grantee <> 0 AND acl.grantee <> p.proowner
    LOOP
        EXECUTE format(
            'GRANT EXECUTE ON FUNCTION worker.claim_events_v3(text, integer, boolean, boolean) TO %s',
            grantee);
    END LOOP;
END $$;
