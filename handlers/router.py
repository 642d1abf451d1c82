"""The `EventHandler` the claim loop drives: events in, deliveries (and ledger records) out.

`prepare()` loads, in ONE query per batch, every row the batch's messages need plus what the
ledger already holds for each event; `handle()` composes the event in one step
(`compose_event`: the kind's context from `CONTEXTS`, then every route the routing table gives
that kind, on every channel) and sends all its messages concurrently, in one gather.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from core.queries import load_queries
from core.redaction import error_first_line
from handlers.contract import Event, Outcome, PermanentDeliveryError, RecordDelivery, TransientDeliveryError
from handlers.delivery import DeliveryScope, Dispatcher, Outgoing, install_dispatcher
from handlers.models import Application, Booking, MessageContext, OtpCode, Person
from handlers.routing import URGENT_KINDS
from handlers.transports import build_transports, provider_guards

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

    urgent_kinds = URGENT_KINDS

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
        routed = [event for event in events if event.kind in CONTEXTS]
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
    if event.kind not in CONTEXTS:
        if event.kind in SILENT_KINDS:
            return Outcome()
        # Failed, not done: it shows in `events list --status failed` and the metrics, and
        # `events retry` sends it once a worker that knows the kind runs (a newer trigger's kind).
        log.warning("event.unknown_kind", event_id=event.id, kind=event.kind)
        return Outcome(error=PermanentDeliveryError(UNKNOWN_KIND_ERROR, code="unknown_kind"))
    scope = DeliveryScope(dispatcher, event.id, data.ledger, record, event.kind)
    try:
        outgoing = compose_event(scope, event, data)
        if outgoing is not None:
            await outgoing
    except PermanentDeliveryError as exc:
        return Outcome(error=exc, deliveries=len(scope.records))
    except Exception as exc:  # a bug or an unmapped failure: keep what went out, retry the rest
        log.exception("event.delivery_crashed", event_id=event.id, kind=event.kind)
        first_line = next(iter(str(exc).splitlines()), "")  # a DETAIL line may quote personal data
        error = TransientDeliveryError(f"{type(exc).__name__}: {first_line}", code="unexpected")
        return Outcome(error=error, deliveries=len(scope.records))
    return Outcome(error=scope.transient, deliveries=len(scope.records))


# ---------------------------------------------------------------------------- per event kind
@dataclass(frozen=True, slots=True)
class NoLongerDue:
    """The event no longer calls for its messages (a reminder for a cancelled booking, a used
    login code): every route of its kind is recorded `skipped` with this code and reason."""

    ctx: MessageContext
    code: str
    reason: str


#: What one event kind's messages are about: the context its routes are composed with, a
#: `NoLongerDue`, or None when the event sends nothing. Raises PermanentDeliveryError when the
#: event's rows are gone.
ContextOf = Callable[[Event, EventData], "MessageContext | NoLongerDue | None"]


def compose_event(scope: DeliveryScope, event: Event, data: EventData) -> Outgoing | None:
    """THE composition step of a routed event: its context (`CONTEXTS`), then every route of
    its kind in the routing table, on every channel, composed at once (recipients resolved,
    messages rendered); awaiting the result sends them all in one gather. None when there is
    nothing to send (what was refused or skipped is already recorded in `scope`)."""
    ctx = CONTEXTS[event.kind](event, data)
    if ctx is None:
        return None
    if isinstance(ctx, NoLongerDue):
        scope.skip(event.kind, ctx.ctx, ctx.code, ctx.reason)
        return None
    return scope.compose(event.kind, ctx)


def _parties(event: Event, data: EventData) -> MessageContext:
    booking, client, performer = data.parties()
    return MessageContext(booking=booking, client=client, performer=performer)


def _cancelled(event: Event, data: EventData) -> MessageContext:
    booking, client, performer = data.parties()
    # The reason captured by the trigger is what the parties must hear, even if edited since.
    reason = event.payload.get("reason") or booking.cancellation_reason
    return MessageContext(booking=booking, client=client, performer=performer, reason=reason)


def _reminder(event: Event, data: EventData) -> MessageContext | NoLongerDue:
    booking, client, performer = data.parties()
    hours = event.payload.get("hours_until_event")
    if not isinstance(hours, int):
        hours = max(0, round((booking.event_start - datetime.now(UTC)).total_seconds() / 3600))
    ctx = MessageContext(booking=booking, client=client, performer=performer, hours_until_event=hours)
    if booking.status not in REMINDED_STATUSES:  # cancelled (or moved back) since it was queued
        return NoLongerDue(ctx, "no_longer_due", f"booking is {booking.status}")
    return ctx


def _payment_due(event: Event, data: EventData) -> MessageContext | NoLongerDue:
    booking, client, performer = data.parties()
    outstanding = booking.outstanding  # the balance now: a payment may have arrived since it was queued
    ctx = MessageContext(booking=booking, client=client, performer=performer, outstanding=outstanding)
    if booking.status in UNPAYABLE_STATUSES:
        return NoLongerDue(ctx, "no_longer_due", f"booking is {booking.status}")
    if outstanding <= 0:
        return NoLongerDue(ctx, "no_longer_due", "balance already paid")
    return ctx


def _login_code(event: Event, data: EventData) -> MessageContext | NoLongerDue:
    otp = data.otp
    if otp is None:
        raise PermanentDeliveryError("otp code not found", code="not_found")
    if otp.used_at is not None or otp.expires_at <= datetime.now(UTC):
        reason = "used" if otp.used_at is not None else "expired"
        return NoLongerDue(MessageContext(otp_email=otp.email), reason, f"otp already {reason}")
    return MessageContext(otp_email=otp.email, otp_code=otp.code, expiry_minutes=otp.lifetime_minutes)


def _vetting(event: Event, data: EventData) -> MessageContext:
    application = data.application
    if application is None:
        raise PermanentDeliveryError("vetting application not found", code="not_found")
    decision = event.payload.get("decision") or application.status
    return MessageContext(application=application, approved=decision == "approved",
                          notes=application.review_notes)


def _legacy_decline(event: Event, data: EventData) -> MessageContext | None:
    # The older name of booking.declined_by_performer; only DECLINE was ever written under it.
    return _parties(event, data) if event.payload.get("command") == "decline" else None


#: Every routed event kind and its context (who hears what: handlers.routing.ROUTES). The
#: platform's functions (handlers.whatsapp `notify_*`, handlers.email `send_*_email`) compose
#: the same routes from the same contexts, one channel each, for code that calls them directly.
CONTEXTS: dict[str, ContextOf] = {
    "booking.created": _parties,
    "booking.approved": _parties,
    "booking.deposit_uploaded": _parties,
    "booking.deposit_verified": _parties,
    "booking.accepted": _parties,
    "booking.cancelled": _cancelled,
    "booking.reminder_due": _reminder,
    "booking.payment_due": _payment_due,
    "otp.created": _login_code,
    "vetting.decided": _vetting,
    "booking.declined_by_performer": _parties,
    "whatsapp.inbound": _legacy_decline,
}


#: A uuid as PostgreSQL prints it (and the triggers write it): taken as it is.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def _uuid(value: Any) -> str | None:
    """A payload id, or None when it is not a uuid (so one bad event cannot break the batch query)."""
    if not value:
        return None
    if isinstance(value, str) and _CANONICAL_UUID(value):
        return value
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
            return {events[0].id: replace(NO_DATA, unreadable=error_first_line(exc))}
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
