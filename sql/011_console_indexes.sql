-- Indexes for the operator console (listener/http/console/queries.sql), so each of its pages
-- reads a few index pages however large the ledger grows: without them, "find by booking",
-- "find by recipient" and "failed deliveries" each read the whole of worker.events or
-- worker.deliveries (a sequential scan of 3,000,000 ledger rows is about a second; the console
-- promises 100 ms a page). tests/test_console_plans.py fails on a sequential scan of either table.
--
-- What they cost the write path, measured with bulk statements over 200,000 events and
-- 600,000 ledger rows (insert the events; claim all; complete all; insert the ledger rows),
-- total time without -> with these indexes, PostgreSQL 15 on a 2-core VM shared with other test
-- suites (load average 6 to 8, so the spread is wide): 13.7 and 16.3 s -> 28.5 and 32.7 s in the
-- quieter of two rounds (29.9 s -> 39.3 and 40.9 s in the other): about 75 us more database time
-- per event over its life with three deliveries, on that loaded machine. (An earlier, quieter
-- measurement of the first version, without events_open_kind_idx and the INCLUDE columns: 39 ->
-- 53 us an event.) A status change is never a HOT update (status is in the partial indexes'
-- predicates), so each change of an event adds an entry to events_subject_idx, and to
-- events_open_kind_idx while the event is open; finished events and delivered ledger rows stay
-- out of the partial indexes. `make bench` was not rerun with them.
--
-- Created without CONCURRENTLY (a migration runs in a transaction): on a large live ledger,
-- create them by hand first with CREATE INDEX CONCURRENTLY under the same names; IF NOT EXISTS
-- then leaves them alone.

-- The overview's open and failed events per kind, counted from the index alone (a bitmap heap
-- scan of 16,000 open or failed rows scattered over 1,000,000 events took 120 to 270 ms). Partial:
-- finished events (nearly all of them) are not in it.
CREATE INDEX IF NOT EXISTS events_open_kind_idx ON worker.events (status, kind)
    WHERE status IN ('pending', 'processing', 'failed');

-- Find by booking reference: every event of one subject, newest first.
CREATE INDEX IF NOT EXISTS events_subject_idx ON worker.events (subject_id, id);

-- Find by recipient: one person's deliveries, newest first.
CREATE INDEX IF NOT EXISTS deliveries_recipient_idx ON worker.deliveries (recipient, id);

-- Failed and skipped deliveries, newest first, keyset-paginated, optionally since/until a time;
-- also the overview's per-channel counts of the last 24 hours. The included columns let a
-- filtered page be picked from the index alone (an index-only scan), reading the table only
-- for the rows shown.
CREATE INDEX IF NOT EXISTS deliveries_problems_idx ON worker.deliveries (created_at, id)
    INCLUDE (status, channel, error_code, event_id)
    WHERE status IN ('failed', 'skipped', 'undelivered');
