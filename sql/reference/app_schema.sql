-- The reference app schema: the contract between the booking app and the worker.
-- Applied only on request (`flavor-worker migrate --reference-schema`), for the demo, the
-- tests and new projects. Every statement is idempotent; tables that already exist are kept
-- as they are (and reported by the migrate command).

CREATE TABLE IF NOT EXISTS public.clients (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    full_name       text        NOT NULL,
    email           text,
    phone           text,
    whatsapp_opt_in boolean     NOT NULL DEFAULT true,
    email_opt_in    boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.performers (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    stage_name      text        NOT NULL,
    full_name       text,
    email           text,
    phone           text,
    whatsapp_opt_in boolean     NOT NULL DEFAULT true,
    email_opt_in    boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE IF NOT EXISTS public.booking_reference_seq START 1001;

CREATE TABLE IF NOT EXISTS public.bookings (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    reference           text UNIQUE NOT NULL
                        DEFAULT 'FE-' || nextval('public.booking_reference_seq'),
    client_id           uuid        NOT NULL REFERENCES public.clients (id),
    performer_id        uuid        NOT NULL REFERENCES public.performers (id),
    status              text        NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'approved', 'deposit_uploaded',
                                          'deposit_verified', 'accepted', 'completed',
                                          'cancelled')),
    event_type          text,
    event_start         timestamptz NOT NULL,
    event_end           timestamptz,
    venue               text,
    timezone            text        NOT NULL DEFAULT 'Australia/Sydney',
    total_amount        numeric(10, 2) NOT NULL DEFAULT 0,
    deposit_amount      numeric(10, 2) NOT NULL DEFAULT 0,
    amount_paid         numeric(10, 2) NOT NULL DEFAULT 0,
    deposit_paid_at     timestamptz,
    cancellation_reason text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.notifications (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recipient_type text        NOT NULL CHECK (recipient_type IN ('client', 'performer', 'admin')),
    recipient_id   uuid,
    booking_id     uuid REFERENCES public.bookings (id) ON DELETE CASCADE,
    type           text        NOT NULL,
    title          text        NOT NULL,
    message        text        NOT NULL,
    read           boolean     NOT NULL DEFAULT false,
    read_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.otp_codes (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email      text        NOT NULL,
    code       text        NOT NULL,
    purpose    text        NOT NULL DEFAULT 'login',
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.audit_logs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    action      text        NOT NULL,
    category    text        NOT NULL DEFAULT 'system',
    entity_type text,
    entity_id   text,
    actor       text,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.vetting_applications (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    full_name    text        NOT NULL,
    stage_name   text,
    email        text        NOT NULL,
    phone        text,
    status       text        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'approved', 'rejected')),
    review_notes text,
    decided_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
