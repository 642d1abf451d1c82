"""The `EventHandler` the claim loop drives: events in, deliveries (and ledger records) out.

`prepare()` loads, in ONE query per batch, every row the batch's messages need plus what the
ledger already holds for each event; `handle()` opens a delivery scope for the event and calls
the platform-named functions for its kind, which consult the routing table; the event's messages
are then sent concurrently, in one gather.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from core.queries import load_queries
from handlers.contract import Event, Outcome, PermanentDeliveryError, RecordDelivery, TransientDeliveryError
from handlers.delivery import (
    DeliveryScope,
    Dispatcher,
    current_scope,
    delivering,
    install_dispatcher,
    together,
)
from handlers.email import (
    send_booking_cancelled_email,
    send_booking_confirmation_email,
    send_booking_received_email,
    send_booking_reminder_email,
    send_deposit_instructions_email,
    send_otp_email,
    send_payment_reminder_email,
    send_vetting_approval_email,
)
from handlers.in_app import add_in_app_notifications
from handlers.models import Application, Booking, MessageContext, OtpCode, Person
from handlers.transports import build_transports, provider_guards
from handlers.whatsapp import (
    notify_booking_accepted,
    notify_booking_approved,
    notify_booking_cancelled,
    notify_booking_created,
    notify_booking_declined,
    notify_deposit_uploaded,
    notify_deposit_verified,
    send_booking_reminder,
    send_payment_reminder,
)

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from core.settings import Settings
    from handlers.circuit import CircuitBreaker

log = structlog.get_logger(__name__)

QUERIES = load_queries(Path(__file__).with_name("queries.sql"))


@dataclass(frozen=True, slots=True)
class EventData:
    """What one event's messages need, loaded by `prepare()`."""

    booking: Booking | None
    client: Person | None
    performer: Person | None
    otp: OtpCode | None
    application: Application | None
    #: "<channel> <recipient>" of every ledger row this event already has.
    ledger: frozenset[str]
    #: Why this event's rows cannot be used (see `_load`); the event then fails on its own.
    unreadable: str | None = None

    def parties(self) -> tuple[Booking, Person, Person]:
        """The booking and its two parties. A party whose row is gone is a stand-in
        (`Person.missing_party`): only the deliveries addressed to it fail (`missing_recipient`),
        so the admin and the other party are still told."""
        if self.booking is None:
            raise PermanentDeliveryError("booking not found", code="not_found")
        client = self.client or Person.missing_party("client")
        return self.booking, client, self.performer or Person.missing_party("performer")


Sender = Callable[[Event, EventData], Awaitable[Any]]

#: Used when `prepare()` found nothing for an event (its rows are gone).
NO_DATA = EventData(None, None, None, None, None, frozenset())
#: Kinds the triggers emit that tell nobody anything: done, with nothing to send.
SILENT_KINDS = frozenset({"booking.completed"})
#: An event's `last_error` when no worker route exists for its kind.
UNKNOWN_KIND_ERROR = "unknown_kind: no route for this event kind"
#: A booking still gets its reminder in these statuses (the scheduler's "confirmed").
REMINDED_STATUSES = frozenset({"deposit_verified", "accepted"})
#: A balance is no longer asked for in these statuses.
UNPAYABLE_STATUSES = frozenset({"cancelled", "completed"})


class NotificationRouter:
    """Routes every catalog event to its WhatsApp, email and in-app deliveries."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        transports = build_transports(settings, pool, QUERIES["insert_notification"])
        self.dispatcher = Dispatcher(settings, transports)
        install_dispatcher(self.dispatcher)
        log.info(
            "router.ready",
            whatsapp_transport=transports["whatsapp"].name,
            email_transport=transports["email"].name,
        )

    async def prepare(self, events: Sequence[Event]) -> dict[int, EventData]:
        """One query for the whole batch (never one per event) while its rows can be read."""
        routed = [event for event in events if event.kind in SENDERS]
        if not routed:
            return {}
        async with self.pool.connection() as conn:
            return await _load(conn, routed)

    async def handle(self, event: Event, context: dict[int, EventData], record: RecordDelivery) -> Outcome:
        return await handle_event(self.dispatcher, event, context.get(event.id) or NO_DATA, record)

    def circuits(self) -> list[CircuitBreaker]:
        """The provider circuit breakers, for /healthz."""
        return [guard.breaker for guard in provider_guards(self.dispatcher.transports)]

    def stop_sending(self) -> None:
        """Shutdown: no new provider request starts; those under way finish."""
        for guard in provider_guards(self.dispatcher.transports):
            guard.stop_sending()

    async def close(self) -> None:
        """Close the providers' HTTP clients (on daemon shutdown)."""
        await self.dispatcher.close()


async def handle_event(
    dispatcher: Dispatcher, event: Event, data: EventData, record: RecordDelivery | None = None
) -> Outcome:
    """Send what `event` calls for; every problem is reported in the Outcome, never raised.

    Each message's record goes to `record` as soon as it is made, so what was sent before a
    failure (or before the process stops) is in the ledger, and a retry does not send it twice.
    """
    if data.unreadable is not None:  # isolated by prepare(); the same row reads the same way again
        reason = f"unreadable_row: {data.unreadable}"
        return Outcome(error=PermanentDeliveryError(reason, code="unreadable_row"))
    sender = SENDERS.get(event.kind)
    if sender is None:
        if event.kind in SILENT_KINDS:
            return Outcome()
        # Failed, not done: it shows in `events list --status failed` and the metrics, and
        # `events retry` sends it once a worker that knows the kind runs (a newer trigger's kind).
        log.warning("event.unknown_kind", event_id=event.id, kind=event.kind)
        return Outcome(error=PermanentDeliveryError(UNKNOWN_KIND_ERROR, code="unknown_kind"))
    scope = DeliveryScope(dispatcher, event.id, data.ledger, record, event.kind)
    with delivering(scope):
        try:
            await sender(event, data)
        except PermanentDeliveryError as exc:
            return Outcome(error=exc, deliveries=len(scope.records))
        except Exception as exc:  # a bug or an unmapped failure: keep what went out, retry the rest
            log.exception("event.delivery_crashed", event_id=event.id, kind=event.kind)
            first_line = next(iter(str(exc).splitlines()), "")  # a DETAIL line may quote personal data
            error = TransientDeliveryError(f"{type(exc).__name__}: {first_line}", code="unexpected")
            return Outcome(error=error, deliveries=len(scope.records))
    return Outcome(error=scope.transient, deliveries=len(scope.records))


# ---------------------------------------------------------------------------- per event kind
# Each awaits ONE `together(...)`: all of an event's messages are sent in a single flat gather.
async def _booking_created(event: Event, data: EventData) -> None:
    b, c, p = data.parties()
    await together(notify_booking_created(b, c, p), send_booking_received_email(b, c, p))


async def _booking_approved(event: Event, data: EventData) -> None:
    b, c, p = data.parties()
    await together(notify_booking_approved(b, c, p), send_deposit_instructions_email(b, c, p))


async def _deposit_uploaded(event: Event, data: EventData) -> None:
    await notify_deposit_uploaded(*data.parties())


async def _deposit_verified(event: Event, data: EventData) -> None:
    b, c, p = data.parties()
    await together(notify_deposit_verified(b, c, p), send_booking_confirmation_email(b, c, p))


async def _booking_accepted(event: Event, data: EventData) -> None:
    await notify_booking_accepted(*data.parties())


async def _booking_cancelled(event: Event, data: EventData) -> None:
    b, c, p = data.parties()
    # The reason captured by the trigger is what the parties must hear, even if edited since.
    reason = event.payload.get("reason") or b.cancellation_reason
    await together(notify_booking_cancelled(b, c, p, reason), send_booking_cancelled_email(b, c, p, reason))


async def _reminder_due(event: Event, data: EventData) -> None:
    b, c, p = data.parties()
    hours = event.payload.get("hours_until_event")
    if not isinstance(hours, int):
        hours = max(0, round((b.event_start - datetime.now(UTC)).total_seconds() / 3600))
    ctx = MessageContext(booking=b, client=c, performer=p, hours_until_event=hours)
    if b.status not in REMINDED_STATUSES:  # cancelled (or moved back) since it was queued
        current_scope().skip(event.kind, ctx, "no_longer_due", f"booking is {b.status}")
        return
    await together(
        send_booking_reminder(b, c, p, hours),
        send_booking_reminder_email(b, c, p, hours),
        add_in_app_notifications(event.kind, ctx),
    )


async def _payment_due(event: Event, data: EventData) -> None:
    b, c, p = data.parties()
    outstanding = b.outstanding  # the balance now: a payment may have arrived since it was queued
    ctx = MessageContext(booking=b, client=c, performer=p, outstanding=outstanding)
    if b.status in UNPAYABLE_STATUSES or outstanding <= 0:
        reason = f"booking is {b.status}" if b.status in UNPAYABLE_STATUSES else "balance already paid"
        current_scope().skip(event.kind, ctx, "no_longer_due", reason)
        return
    await together(
        send_payment_reminder(b, c, p, outstanding),
        send_payment_reminder_email(b, c, p, outstanding),
        add_in_app_notifications(event.kind, ctx),
    )


async def _otp_created(event: Event, data: EventData) -> None:
    otp = data.otp
    if otp is None:
        raise PermanentDeliveryError("otp code not found", code="not_found")
    if otp.used_at is not None or otp.expires_at <= datetime.now(UTC):
        reason = "used" if otp.used_at is not None else "expired"
        current_scope().skip(event.kind, MessageContext(otp_email=otp.email), reason, f"otp already {reason}")
        return
    await send_otp_email(otp.email, otp.code, otp.lifetime_minutes)


async def _vetting_decided(event: Event, data: EventData) -> None:
    application = data.application
    if application is None:
        raise PermanentDeliveryError("vetting application not found", code="not_found")
    decision = event.payload.get("decision") or application.status
    await send_vetting_approval_email(application, decision == "approved", application.review_notes)


async def _declined_by_performer(event: Event, data: EventData) -> None:
    await notify_booking_declined(*data.parties())


async def _legacy_whatsapp_inbound(event: Event, data: EventData) -> None:
    # The older name of booking.declined_by_performer; only DECLINE was ever written under it.
    if event.payload.get("command") == "decline":
        await notify_booking_declined(*data.parties())


#: Which of the platform's functions each event kind calls (who hears what: handlers.routing.ROUTES).
SENDERS: dict[str, Sender] = {
    "booking.created": _booking_created,
    "booking.approved": _booking_approved,
    "booking.deposit_uploaded": _deposit_uploaded,
    "booking.deposit_verified": _deposit_verified,
    "booking.accepted": _booking_accepted,
    "booking.cancelled": _booking_cancelled,
    "booking.reminder_due": _reminder_due,
    "booking.payment_due": _payment_due,
    "otp.created": _otp_created,
    "vetting.decided": _vetting_decided,
    "booking.declined_by_performer": _declined_by_performer,
    "whatsapp.inbound": _legacy_whatsapp_inbound,
}


def _uuid(value: Any) -> str | None:
    """A payload id, or None when it is not a uuid (so one bad event cannot break the batch query)."""
    if not value:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


async def _load(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> dict[int, EventData]:
    """The events' rows in one query.

    A value PostgreSQL stores but psycopg cannot load (a timestamp of 'infinity' or past year
    9999) fails the whole fetch without saying whose row it was. The events are then halved until
    the row is alone: one bad row costs about 2·log2(batch) small queries, fails only its own
    event, and its neighbours start at once instead of being retried with it.
    """
    params = {
        "event_ids": [event.id for event in events],
        "booking_ids": [_uuid(event.payload.get("booking_id")) for event in events],
        "otp_ids": [_uuid(event.payload.get("otp_id")) for event in events],
        "application_ids": [_uuid(event.payload.get("application_id")) for event in events],
    }
    try:
        cur = await conn.execute(QUERIES["load_event_context"], params)
        rows = await cur.fetchall()
    except psycopg.DataError as exc:
        if len(events) == 1:
            return {events[0].id: replace(NO_DATA, unreadable=str(exc).splitlines()[0])}
        half = len(events) // 2
        return await _load(conn, events[:half]) | await _load(conn, events[half:])
    return {row[0]: _event_data(row) for row in rows}


#: Booking columns no message can do without (NOT NULL in the reference schema, not in every app's).
_REQUIRED_BOOKING_COLUMNS = ("event_start", "total_amount", "deposit_amount", "amount_paid")


def _event_data(row: tuple[Any, ...]) -> EventData:
    booking = Booking(*row[1:13]) if row[1] is not None else None
    client = Person(*row[13:20]) if row[13] is not None else None
    performer = Person(*row[20:27]) if row[20] is not None else None
    otp = OtpCode(*row[27:34]) if row[27] is not None else None
    application = Application(*row[34:41]) if row[34] is not None else None
    data = EventData(booking, client, performer, otp, application, frozenset(row[41]))
    if booking is not None:
        null = next((name for name in _REQUIRED_BOOKING_COLUMNS if getattr(booking, name) is None), None)
        if null is not None:
            return replace(data, unreadable=f"bookings.{null} is null")
    return data
