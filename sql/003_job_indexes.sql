-- Indexes that serve every selection of the scheduled jobs (scheduler/queries.sql).
--
-- The worker's own tables are already covered (events_finished_idx for pruning, the unique
-- dedup_key for reminders, job_runs' unique (job, scheduled_for)). The app tables may not exist
-- when the worker migrates, so their indexes are created by worker.install_app_indexes(), which
-- every `flavor-worker migrate` calls after worker.install_triggers(), like the triggers.
--
-- On a large existing table CREATE INDEX blocks writes while it builds; create the index by hand
-- first with CREATE INDEX CONCURRENTLY under the same name and this function leaves it alone.

CREATE FUNCTION worker.install_app_indexes() RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    installed text[] := '{}';
BEGIN
    IF to_regclass('public.bookings') IS NOT NULL THEN
        -- cleanup_stale_bookings
        CREATE INDEX IF NOT EXISTS bookings_stale_pending_idx ON public.bookings (created_at)
            WHERE status = 'pending' AND deposit_paid_at IS NULL;
        -- send_booking_reminders
        CREATE INDEX IF NOT EXISTS bookings_confirmed_start_idx ON public.bookings (event_start)
            WHERE status IN ('deposit_verified', 'accepted');
        -- send_payment_reminders
        CREATE INDEX IF NOT EXISTS bookings_deposit_paid_start_idx ON public.bookings (event_start)
            WHERE deposit_paid_at IS NOT NULL AND status <> 'cancelled';
        installed := installed || 'bookings'::text;
    END IF;
    IF to_regclass('public.notifications') IS NOT NULL THEN
        -- cleanup_old_notifications
        CREATE INDEX IF NOT EXISTS notifications_read_created_idx ON public.notifications (created_at)
            WHERE read;
        installed := installed || 'notifications'::text;
    END IF;
    IF to_regclass('public.otp_codes') IS NOT NULL THEN
        -- cleanup_expired_otps
        CREATE INDEX IF NOT EXISTS otp_codes_expires_idx ON public.otp_codes (expires_at);
        installed := installed || 'otp_codes'::text;
    END IF;
    IF to_regclass('public.audit_logs') IS NOT NULL THEN
        -- cleanup_old_audit_logs (the critical categories are a setting, so filtered after the range)
        CREATE INDEX IF NOT EXISTS audit_logs_created_idx ON public.audit_logs (created_at);
        installed := installed || 'audit_logs'::text;
    END IF;
    RETURN installed;
END
$$;
