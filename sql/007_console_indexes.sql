-- Indexes for the operator console (listener/http/console/queries.sql), so each of its pages
-- reads a few index pages however large the ledger grows: without them, "find by booking",
-- "find by recipient" and "failed deliveries" each read the whole of worker.events or
-- worker.deliveries (a sequential scan of 3,000,000 ledger rows is about a second; the console
-- promises 100 ms a page). tests/test_console_plans.py fails on a sequential scan of either table.
--
-- What they cost the write path, measured on PostgreSQL 15 (2-core VM, bulk statements over
-- 200,000 events and 600,000 ledger rows, three runs each, without -> with these indexes):
--   insert events            1.66 s -> 2.06 s   (+2 us an event)
--   claim (-> processing)    2.0-2.9 s -> 2.5-2.9 s
--   complete (-> done)       1.40 s -> 2.00-2.50 s   (+4 us an event: a status change is never a
--                            HOT update, since status is in the partial indexes' predicates, so
--                            every full index of the table gets an entry on each change)
--   insert ledger rows       2.1-2.7 s -> 3.9 s  (+2.5 us a row)
-- about 14 us of database time per event over its life with three deliveries: 1.4 % of one core
-- at 1,000 events a second. Only the subject index is a full index of the events table; the
-- ledger's problem index is partial (failed, skipped, undelivered rows only).
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
