-- Provider quotas are the account's, not the process's: Resend allows RESEND_RATE_PER_SECOND
-- requests per API key and Twilio its rate per account, however many workers send. Per-process
-- limiters let two workers send 4.6 requests/s against Resend's 2 (up to 7 in one second).
--
-- One row per provider holds `tat`, the time from which its next request slot is free (GCRA,
-- no burst). A worker books a slot with ONE statement on that row (`take_rate_slot` in
-- handlers/queries.sql) and sleeps until it; handlers/rate_limit.py says how urgent requests go
-- first and when a request gives up its event's turn instead of waiting.
--
-- Rows are created by the first request of each provider (an upsert), so no row is written in advance.
-- UNLOGGED: the row is rewritten by every message, and it is only a clock: no WAL for it, and a
-- crash that empties it costs at most one slot's spacing. Workers of the previous release never
-- read it (they limit per process, as before) until they are replaced.
CREATE UNLOGGED TABLE worker.rate_limits (
    provider text PRIMARY KEY,
    tat      timestamptz NOT NULL
);

COMMENT ON TABLE worker.rate_limits IS
    'Shared provider rate limits: the next free request slot per provider (see 007).';
