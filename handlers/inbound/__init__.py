"""Inbound WhatsApp commands: HTTP-triggered work, not outbox events.

The Twilio inbound webhook (`listener/http/webhooks.py`) calls `apply.apply_inbound_message`
while Twilio waits for its TwiML answer; `commands` parses the text (pure functions),
`apply` runs the command against the database, and `queries.sql` holds its SQL. A command
that must tell someone else (a DECLINE alerts the admin) writes an outbox event, so the message
itself goes through the same claim → handle → flush path as every other.
"""
