"""Twilio's webhooks: inbound WhatsApp messages and message status callbacks.

Every request must carry a valid `X-Twilio-Signature` (HMAC of the URL and the form fields
with TWILIO_AUTH_TOKEN); the URL is WEBHOOK_BASE_URL + path when set, because behind a
platform's router the URL the app sees is not the public one Twilio signed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import structlog
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from core.metrics import METRICS
from core.queries import load_queries
from handlers.inbound.apply import apply_inbound_message
from listener.http.surface import Surface

log = structlog.get_logger(__name__)

HTTP_QUERIES = load_queries(Path(__file__).with_name("queries.sql"))

#: Twilio message statuses the ledger records; the intermediate ones (queued, sending, sent) add nothing.
RECORDED_STATUSES = frozenset({"delivered", "read", "failed", "undelivered"})


def signed_url(request: Request, base_url: str | None) -> str:
    """The URL Twilio computed the signature over."""
    if not base_url:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{base_url.rstrip('/')}{request.url.path}{query}"


async def _signed_form(request: Request) -> FormData | Response:
    """The request's form fields when its signature is valid; else the response to send."""
    surface: Surface = request.app.state.surface
    token = surface.settings.twilio_auth_token
    if not token:
        log.warning("http.twilio_webhook_disabled", path=request.url.path)
        return PlainTextResponse("TWILIO_AUTH_TOKEN is not configured", status_code=503)
    form = await request.form()
    signature = request.headers.get("x-twilio-signature")
    url = signed_url(request, surface.settings.webhook_base_url)
    if not signature or not RequestValidator(token).validate(url, form, signature):
        log.warning("http.twilio_signature_invalid", path=request.url.path, signature_present=bool(signature))
        return PlainTextResponse("invalid signature", status_code=403)
    return form


async def inbound_whatsapp(request: Request) -> Response:
    """Apply the sender's command once per MessageSid and answer with a TwiML reply (a replay
    gets the first reply)."""
    form = await _signed_form(request)
    if isinstance(form, Response):
        return form
    message_sid = str(form.get("MessageSid") or "")
    if not message_sid:  # every inbound message has one: without it a retry could not be told apart
        return PlainTextResponse("MessageSid is missing", status_code=400)
    surface: Surface = request.app.state.surface
    result = await apply_inbound_message(
        surface.pool, surface.settings, message_sid, str(form.get("From", "")), str(form.get("Body", ""))
    )
    log.info(
        "http.whatsapp_inbound",
        message_sid=message_sid,
        action=result.action,
        applied=result.applied,
        replayed=result.replayed,
        booking_id=result.booking_id,
    )
    reply = MessagingResponse()
    reply.message(result.reply)
    return Response(str(reply), media_type="application/xml")


async def message_status(request: Request) -> Response:
    """Record delivered / read / failed / undelivered on the ledger row of that message."""
    form = await _signed_form(request)
    if isinstance(form, Response):
        return form
    surface: Surface = request.app.state.surface
    message_id = str(form.get("MessageSid") or form.get("SmsSid") or "")
    status = str(form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if not message_id or status not in RECORDED_STATUSES:
        return Response(status_code=204)
    failed = status in {"failed", "undelivered"}
    params = {
        "message_id": message_id,
        "channel": "whatsapp",
        "status": status,
        "error_code": str(form["ErrorCode"]) if failed and form.get("ErrorCode") else None,
        "error_message": str(form["ErrorMessage"]) if failed and form.get("ErrorMessage") else None,
    }
    stored = False
    async with surface.pool.connection() as conn:
        updated = await _record_status(conn, params)
        if not updated:
            # Twilio can be faster than our ledger, which is written when the whole event finishes:
            # keep the callback for `complete_events`, then look again in case the row just landed.
            cur = await conn.execute(HTTP_QUERIES["store_delivery_callback"], params)
            stored = await cur.fetchone() is not None
            updated = await _record_status(conn, params)
    for delivery_id, event_id in updated:
        METRICS.deliveries.labels(channel="whatsapp", status=status).inc()
        log.info(
            "delivery.status_updated",
            delivery_id=delivery_id,
            event_id=event_id,
            status=status,
            error_code=params["error_code"],
        )
    if not updated:
        # Stored: applied when the ledger row is written. Else: older than what the row says.
        log.info(
            "delivery.status_stored" if stored else "delivery.status_stale",
            message_sid=message_id,
            status=status,
        )
    return Response(status_code=204)


async def _record_status(conn: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Apply a status callback to its ledger row; the (delivery id, event id) rows it updated."""
    cur = await conn.execute(HTTP_QUERIES["record_delivery_status"], params)
    return await cur.fetchall()


def webhook_routes() -> list[Route]:
    return [
        Route("/webhooks/twilio/whatsapp", inbound_whatsapp, methods=["POST"]),
        Route("/webhooks/twilio/status", message_status, methods=["POST"]),
    ]
