-- The demo's sample data, written with plain SQL the way the booking app writes it.

-- name: demo_client
-- A sample client.
INSERT INTO public.clients (full_name, email, phone)
VALUES ('Ann Example', 'ann@example.com', '0400 000 002') RETURNING id;

-- name: demo_performer
-- A sample performer.
INSERT INTO public.performers (stage_name, full_name, email, phone)
VALUES ('DJ Nova', 'Nova Performer', 'nova@example.com', '+61 400 000 003') RETURNING id;

-- name: demo_booking
-- A booking between them, ten days out (its INSERT is the booking.created event).
INSERT INTO public.bookings (client_id, performer_id, event_type, event_start, event_end, venue,
                             total_amount, deposit_amount)
VALUES (%(client_id)s, %(performer_id)s, 'Birthday party', now() + interval '10 days',
        now() + interval '10 days 3 hours', '12 Harbour St, Sydney', 800, 200)
RETURNING id;

-- name: demo_set_status
-- Move the booking on, as the app would (each change is one event).
UPDATE public.bookings
SET status = %(status)s,
    deposit_paid_at = CASE WHEN %(status)s = 'deposit_verified' THEN now() ELSE deposit_paid_at END,
    amount_paid = CASE WHEN %(status)s = 'deposit_verified' THEN deposit_amount ELSE amount_paid END,
    cancellation_reason = CASE WHEN %(status)s = 'cancelled' THEN 'Client moved the party interstate'
                               ELSE cancellation_reason END,
    updated_at = now()
WHERE id = %(booking_id)s;

-- name: demo_otp
-- A login code for the client (the otp.created event carries only its id).
INSERT INTO public.otp_codes (email, code, purpose, expires_at)
VALUES ('ann@example.com', lpad((floor(random() * 1000000))::int::text, 6, '0'), 'login',
        now() + interval '10 minutes')
RETURNING id;

-- name: demo_open_events
-- How many of the demo's events are not finished yet.
SELECT count(*) FROM worker.events
WHERE subject_id = ANY(%(subjects)s) AND status IN ('pending', 'processing');

-- name: demo_deliveries
-- What went out for the demo's events, in order.
SELECT e.kind, d.channel, d.recipient_role, d.recipient, d.template, d.status, d.error_code
FROM worker.deliveries d JOIN worker.events e ON e.id = d.event_id
WHERE e.subject_id = ANY(%(subjects)s)
ORDER BY e.id, d.id;

-- name: demo_try_it
-- The statement the demo offers to paste into psql: a new booking, written as the app writes it.
INSERT INTO bookings (client_id, performer_id, event_type, event_start, venue, total_amount)
SELECT c.id, p.id, 'Wedding', now() + interval '30 days', 'Town Hall, Sydney', 1500
FROM clients c, performers p LIMIT 1;
