"""What an event becomes: routing, WhatsApp, email, in-app rows, inbound commands."""
