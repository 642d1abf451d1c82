-- The queries of handlers/inbound/apply.py (applying WhatsApp commands), each under a `-- name:` header.

-- name: people_by_phone_digits
-- Performers and clients whose stored phone ends with the sender's national digits (confirmed in Python).
SELECT 'performer' AS role, id::text AS id, phone, stage_name AS name
FROM public.performers
WHERE phone IS NOT NULL
  AND right(regexp_replace(phone, '[^0-9]', '', 'g'), length(%(digits)s::text)) = %(digits)s::text
UNION ALL
SELECT 'client' AS role, id::text AS id, phone, full_name AS name
FROM public.clients
WHERE phone IS NOT NULL
  AND right(regexp_replace(phone, '[^0-9]', '', 'g'), length(%(digits)s::text)) = %(digits)s::text;

-- name: lock_booking_by_reference
-- The booking a command names, locked until the command's transaction ends.
SELECT b.id::text AS id, b.reference, b.status, b.performer_id::text AS performer_id,
       b.client_id::text AS client_id, b.event_type, b.event_start, b.venue, b.timezone
FROM public.bookings b
WHERE upper(b.reference) = %(reference)s
FOR UPDATE;

-- name: open_bookings_of_person
-- A person's bookings that are still ahead and not cancelled, soonest first (for STATUS).
SELECT b.id::text AS id, b.reference, b.status, b.event_type, b.event_start, b.venue, b.timezone
FROM public.bookings b
WHERE (b.performer_id::text = ANY(%(ids)s) OR b.client_id::text = ANY(%(ids)s))
  AND b.status NOT IN ('cancelled', 'completed')
  AND b.event_start > now()
ORDER BY b.event_start
LIMIT %(limit)s;

-- name: accept_booking
-- The performer's acceptance: an ordinary status write, so the trigger emits booking.accepted.
UPDATE public.bookings SET status = 'accepted', updated_at = now() WHERE id = %(booking_id)s::uuid;

-- name: insert_audit_log
-- One audit row per applied command.
INSERT INTO public.audit_logs (action, category, entity_type, entity_id, actor, details)
VALUES (%(action)s, 'booking', 'booking', %(booking_id)s, %(actor)s, %(details)s);

-- name: insert_admin_notification
-- An in-app alert for the admins about a booking.
INSERT INTO public.notifications (recipient_type, booking_id, type, title, message)
VALUES ('admin', %(booking_id)s::uuid, %(type)s, %(title)s, %(message)s);

-- name: emit_declined_event
-- A booking.declined_by_performer outbox event, so the router alerts the admin on WhatsApp.
SELECT worker.emit_event('booking.declined_by_performer', %(booking_id)s, %(payload)s);

-- name: claim_inbound_message
-- Claim a Twilio message for this transaction; no row back when it was claimed before. A concurrent
-- duplicate waits here on the primary key until the claimer commits, then gets no row either.
INSERT INTO worker.inbound_messages (message_sid, action) VALUES (%(message_sid)s, %(action)s)
ON CONFLICT (message_sid) DO NOTHING
RETURNING message_sid;

-- name: answered_inbound_message
-- What the first request for this message did and answered.
SELECT action, reply FROM worker.inbound_messages WHERE message_sid = %(message_sid)s;

-- name: store_inbound_reply
-- The reply a replay of this message gets, written in the transaction that claimed it.
UPDATE worker.inbound_messages SET reply = %(reply)s WHERE message_sid = %(message_sid)s;
