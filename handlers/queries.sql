-- The handlers' queries, each under a `-- name: <name>` header (loaded by handlers.router).
-- Arrays are bound in binary (`%(name)b`), as in listener/queries.sql.

-- name: load_event_context
-- One row per event of a batch: its booking with both parties, its OTP, its vetting application, and what the ledger already holds for it.
SELECT i.event_id,
       b.id::text, b.reference, b.status, b.event_type, b.event_start, b.event_end, b.venue, b.timezone,
       b.total_amount, b.deposit_amount, b.amount_paid, b.cancellation_reason,
       c.id::text, c.full_name, c.full_name, c.email, c.phone, c.whatsapp_opt_in, c.email_opt_in,
       p.id::text, p.stage_name, p.full_name, p.email, p.phone, p.whatsapp_opt_in, p.email_opt_in,
       o.id::text, o.email, o.code, o.purpose, o.expires_at, o.used_at, o.created_at,
       v.id::text, v.full_name, v.stage_name, v.email, v.phone, v.status, v.review_notes,
       ARRAY(SELECT d.channel || ' ' || d.recipient
             FROM worker.deliveries d WHERE d.event_id = i.event_id) AS ledger
FROM unnest(%(event_ids)b::bigint[], %(booking_ids)b::uuid[], %(otp_ids)b::uuid[],
            %(application_ids)b::uuid[]) AS i(event_id, booking_id, otp_id, application_id)
LEFT JOIN public.bookings b ON b.id = i.booking_id
LEFT JOIN public.clients c ON c.id = b.client_id
LEFT JOIN public.performers p ON p.id = b.performer_id
LEFT JOIN public.otp_codes o ON o.id = i.otp_id
LEFT JOIN public.vetting_applications v ON v.id = i.application_id;

-- name: insert_notification
-- One in-app notification row; its id is derived from (event, recipient), so a redelivery adds nothing.
INSERT INTO public.notifications (id, recipient_type, recipient_id, booking_id, type, title, message)
VALUES (%(id)s, %(recipient_type)s, %(recipient_id)s, %(booking_id)s, %(type)s, %(title)s, %(message)s)
ON CONFLICT (id) DO NOTHING;

-- name: take_rate_slot
-- Book the next %(count)s free request slots on a provider's shared clock (slots `interval`
-- seconds apart), unless the clock is already booked more than `horizon` seconds ahead. Returns
-- (wait, backlog): seconds until the first booked slot (NULL when none was booked; the others
-- follow it `interval` apart) and how far ahead the clock was booked.
WITH booked AS (
    INSERT INTO worker.rate_limits AS r (provider, tat)
    VALUES (%(provider)s, now() + make_interval(secs => %(interval)s * %(count)s))
    ON CONFLICT (provider) DO UPDATE
    SET tat = greatest(r.tat, now()) + make_interval(secs => %(interval)s * %(count)s)
    WHERE r.tat <= now() + make_interval(secs => %(horizon)s)
    RETURNING r.tat
)
SELECT (SELECT extract(epoch FROM tat - now())::float8 - %(interval)s * %(count)s FROM booked),
       coalesce((SELECT extract(epoch FROM tat - now())::float8
                 FROM worker.rate_limits WHERE provider = %(provider)s), 0)
