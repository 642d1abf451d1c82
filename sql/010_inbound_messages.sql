-- Inbound WhatsApp commands are applied once per Twilio message.
--
-- Twilio retries a webhook it got no timely answer to, and a correctly signed request can be
-- posted again by anyone who captured it: the same `DECLINE FE-8012` posted three times gave
-- three audit rows, three admin notifications and three admin WhatsApp messages. Each inbound
-- message is now claimed here by its MessageSid in the same transaction as the command's writes:
-- the primary key lets one request apply it, a concurrent duplicate waits on that key and then
-- finds the row, and every later one answers with the reply stored beside it.
--
-- The previous version's code, running during a deploy, does not know this table and keeps
-- applying as before; nothing else changes. The cleanup job prunes rows after
-- WORKER_RETENTION_DAYS (Twilio stops retrying within hours).
CREATE TABLE worker.inbound_messages (
    message_sid text        PRIMARY KEY,
    action      text        NOT NULL,
    -- Written by the transaction that claims the row, before it commits: never seen NULL outside it.
    reply       text,
    received_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE worker.inbound_messages IS
    'Inbound WhatsApp messages already answered, by Twilio MessageSid, with the reply sent; a replay gets the same reply.';

CREATE INDEX inbound_messages_received_idx ON worker.inbound_messages (received_at);
