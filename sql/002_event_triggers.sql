-- Triggers that turn app-table changes into worker.events rows in the same transaction.
--
-- Silencing: `SET LOCAL flavor_worker.silence = 'on'` inside a transaction makes every trigger
-- below emit nothing for that transaction (bulk imports, backfills, data repair).
--
-- The trigger functions are SECURITY DEFINER with a fixed search_path: they run with the rights of
-- the role that ran the migrations, so the app's own role (Supabase's `authenticated`,
-- `service_role`, ...) needs no privilege on schema `worker`, and its writes never fail because of it.

CREATE FUNCTION worker.events_silenced() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('flavor_worker.silence', true), '') IN ('on', 'true', '1')
$$;

-- Write one outbox row and ring the doorbell. The NOTIFY payload is only the kind: the row is
-- the truth, and identical payloads in one transaction collapse into one notification.
CREATE FUNCTION worker.emit_event(
    p_kind text, p_subject text, p_payload jsonb, p_expires_at timestamptz DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO worker.events (kind, subject_id, payload, expires_at)
    VALUES (p_kind, p_subject, p_payload, p_expires_at);
    PERFORM pg_notify('worker_events', p_kind);
END
$$;

CREATE FUNCTION worker.on_booking_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, worker AS $$
BEGIN
    IF worker.events_silenced() THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM worker.emit_event('booking.created', NEW.id::text,
            jsonb_build_object('booking_id', NEW.id, 'status', NEW.status));
    ELSIF NEW.status IS DISTINCT FROM OLD.status
          AND NEW.status IN ('approved', 'deposit_uploaded', 'deposit_verified',
                             'accepted', 'completed', 'cancelled') THEN
        -- The reason is captured now: it is what the parties must hear, even if edited later.
        PERFORM worker.emit_event('booking.' || NEW.status, NEW.id::text,
            jsonb_strip_nulls(jsonb_build_object(
                'booking_id', NEW.id,
                'from_status', OLD.status,
                'to_status', NEW.status,
                'reason', to_jsonb(NEW) ->> 'cancellation_reason')));
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION worker.on_otp_created() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, worker AS $$
BEGIN
    IF worker.events_silenced() THEN
        RETURN NULL;
    END IF;
    -- The code itself never enters the outbox; the handler reads it from otp_codes.
    PERFORM worker.emit_event('otp.created', 'otp:' || NEW.id::text,
        jsonb_build_object('otp_id', NEW.id, 'purpose', NEW.purpose), NEW.expires_at);
    RETURN NULL;
END
$$;

CREATE FUNCTION worker.on_vetting_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, worker AS $$
BEGIN
    IF worker.events_silenced() THEN
        RETURN NULL;
    END IF;
    IF NEW.status IN ('approved', 'rejected')
       AND (TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status) THEN
        PERFORM worker.emit_event('vetting.decided', 'vetting:' || NEW.id::text,
            jsonb_build_object('application_id', NEW.id, 'decision', NEW.status));
    END IF;
    RETURN NULL;
END
$$;

-- Attach the triggers to whichever app tables exist; returns the tables that got them.
-- Called by every `flavor-worker migrate`, so tables created after the worker's migrations
-- (or by --reference-schema) are covered on the next run. Idempotent.
CREATE FUNCTION worker.install_triggers() RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    installed text[] := '{}';
BEGIN
    IF to_regclass('public.bookings') IS NOT NULL THEN
        CREATE OR REPLACE TRIGGER worker_booking_events
            AFTER INSERT OR UPDATE OF status ON public.bookings
            FOR EACH ROW EXECUTE FUNCTION worker.on_booking_change();
        installed := installed || 'bookings'::text;
    END IF;
    IF to_regclass('public.otp_codes') IS NOT NULL THEN
        CREATE OR REPLACE TRIGGER worker_otp_events
            AFTER INSERT ON public.otp_codes
            FOR EACH ROW EXECUTE FUNCTION worker.on_otp_created();
        installed := installed || 'otp_codes'::text;
    END IF;
    IF to_regclass('public.vetting_applications') IS NOT NULL THEN
        CREATE OR REPLACE TRIGGER worker_vetting_events
            AFTER INSERT OR UPDATE OF status ON public.vetting_applications
            FOR EACH ROW EXECUTE FUNCTION worker.on_vetting_change();
        installed := installed || 'vetting_applications'::text;
    END IF;
    RETURN installed;
END
$$;
