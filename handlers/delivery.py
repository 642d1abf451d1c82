"""The one delivery mechanism every notify/send function goes through.

A `DeliveryScope` is the sending side of one event: it knows the event id (for idempotency
keys), what the ledger already shows for that event (so a redelivery sends nothing twice), and
collects one `DeliveryRecord` per (channel, recipient). The router makes one per event and hands
it the event's context (handlers.router.compose_event). The platform-named functions
(`send_whatsapp`, `send_email`, `notify_*`, `send_*_email`), for code that calls them directly,
each take an event-less scope from `direct_scope()`, so their signatures stay the platform's.

`DeliveryScope.compose` is the one place routing-table entries become messages (resolve the
recipient, render, address); it returns an `Outgoing`: its messages, sent concurrently when
awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from core.metrics import METRICS
from core.redaction import mask_email, mask_phone
from handlers.contract import (
    DeliveryRecord,
    PermanentDeliveryError,
    RecordDelivery,
    TransientDeliveryError,
)
from handlers.models import MessageContext, Person
from handlers.phones import to_e164
from handlers.rendering import Rendered, Templates
from handlers.routing import ROUTES, URGENT_KINDS, Channel, Route, routes_for

if TYPE_CHECKING:
    from core.settings import Settings

log = structlog.get_logger(__name__)

#: True when a string holds no whitespace and no control character.
_HEADER_SAFE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+").fullmatch


@dataclass(slots=True)
class Message:
    """One outgoing message, addressed and rendered; `recipient` is already normalised."""

    channel: Channel
    recipient: str
    text: str
    role: str | None = None
    template: str | None = None
    subject: str | None = None
    html: str | None = None
    reply_to: str | None = None
    content_sid: str | None = None
    content_variables: dict[str, str] | None = None
    #: A value (an OTP code) that must never reach a log line.
    secret: str | None = field(default=None, repr=False)
    #: Extra columns for in-app rows (recipient_type, recipient_id, booking_id, type).
    meta: dict[str, Any] | None = None
    idempotency_key: str = ""
    #: Someone is waiting for it (routing.URGENT_KINDS): first in the providers' rate limits.
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class Sent:
    """A transport's answer: `sent` by a provider (with its id) or `simulated` locally."""

    status: Literal["sent", "simulated"]
    provider_message_id: str | None = None


class Transport(Protocol):
    """Hands a message to a provider; raises Permanent/TransientDeliveryError at its edge."""

    name: str

    async def send(self, message: Message) -> Sent: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved recipient: normalised address, and the person when there is one."""

    role: str
    address: str
    name: str
    person: Person | None = None


class Outgoing:
    """Messages composed (addressed and rendered) in one scope, not yet sent.

    The router's composition of an event, and the platform's notify/send functions, return one:
    awaiting it sends its messages concurrently and gives their ledger records.
    """

    __slots__ = ("messages", "scope")

    def __init__(self, scope: DeliveryScope, messages: list[Message]) -> None:
        self.scope = scope
        self.messages = messages

    def __await__(self) -> Generator[Any, None, list[DeliveryRecord]]:
        return self.scope.send_all(self.messages).__await__()


@lru_cache(maxsize=64)
def _delivery_counter(channel: str, status: str) -> Any:
    """The metric child of one (channel, status): `.labels()` costs a lock and a tuple per call."""
    return METRICS.deliveries.labels(channel, status)


class Dispatcher:
    """Process-wide sending state: settings, compiled templates and one transport per channel."""

    def __init__(self, settings: Settings, transports: dict[str, Transport]) -> None:
        self.settings = settings
        self.transports = transports
        self.templates = Templates(settings.next_public_app_url)

    async def close(self) -> None:
        for transport in self.transports.values():
            await transport.close()


_default: list[Dispatcher] = []


def install_dispatcher(dispatcher: Dispatcher) -> None:
    """Make `dispatcher` the one the platform's functions use when called directly."""
    _default[:] = [dispatcher]


def direct_scope() -> DeliveryScope:
    """A fresh event-less scope on the installed dispatcher, for a direct call of a platform function."""
    if not _default:
        raise RuntimeError("no dispatcher installed: build the router (handlers.router) first")
    return DeliveryScope(_default[0])


def current_templates() -> Templates:
    """The templates in use: the installed dispatcher's, or (with no router built, e.g. a script
    calling a `get_*_email` builder) ones made from the settings, so the builders need no daemon."""
    if _default:
        return _default[0].templates
    return _standalone_templates()


@functools.cache
def _standalone_templates() -> Templates:
    from core.settings import load_settings

    return Templates(load_settings().next_public_app_url)


class DeliveryScope:
    """The deliveries of one event (or of a direct call, with `event_id` and `kind` None)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        event_id: int | None = None,
        already: frozenset[str] = frozenset(),
        on_record: RecordDelivery | None = None,
        kind: str | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.settings = dispatcher.settings
        self.event_id = event_id
        self.kind = kind
        self.already = already
        #: Where each record goes the moment it is made (the claim loop's ledger writer).
        self.on_record = on_record
        self.records: list[DeliveryRecord] = []
        self.transient: TransientDeliveryError | None = None
        self._claimed: set[str] = set()

    # ------------------------------------------------------------------ recipients
    def resolve(self, route: Route, ctx: MessageContext) -> Target | None:
        """Who `route` goes to; None (with a skipped/failed record) when it must not be sent."""
        if route.role == "admin":
            address = (
                self.settings.admin_whatsapp if route.channel == "whatsapp" else self.settings.admin_email
            )
            if not address:
                return self._refused(route, "admin", "missing_address", "no admin address configured")
            return self._target(route, address, "Admin", None)
        if route.role in ("client", "performer"):
            person: Person | None = getattr(ctx, route.role)
            if person is None or person.missing:
                return self._refused(route, route.role, "missing_recipient", f"no {route.role}")
            fallback = f"{route.role}:{person.id}"
            if route.channel == "in_app":
                return Target(route.role, fallback, person.first_name, person)
            opted_in = person.whatsapp_opt_in if route.channel == "whatsapp" else person.email_opt_in
            address = person.phone if route.channel == "whatsapp" else person.email
            if not opted_in:
                recipient = self._normalise_quietly(route.channel, address) or fallback
                return self._refused(
                    route, recipient, "opted_out", f"{route.channel}_opt_in is false", "skipped"
                )
            if not address:
                return self._refused(
                    route, fallback, "missing_address", f"{route.role} has no {route.channel}"
                )
            return self._target(route, address, person.first_name, person, fallback)
        if route.role == "applicant" and ctx.application is not None:
            app = ctx.application
            first = app.full_name.split(" ", 1)[0]
            return self._target(route, app.email, first, None, f"applicant:{app.id}")
        if route.role == "requester" and ctx.otp_email:
            return self._target(route, ctx.otp_email, "", None, "requester:unknown")
        return self._refused(route, f"{route.role}:unknown", "missing_recipient", f"no {route.role}")

    def _target(
        self, route: Route, address: str, name: str, person: Person | None, fallback: str | None = None
    ) -> Target | None:
        try:
            normalised = self.normalise(route.channel, address)
        except PermanentDeliveryError as exc:
            return self._refused(route, fallback or f"{route.role}:unknown", exc.code or "invalid", str(exc))
        return Target(route.role, normalised, name, person)

    def normalise(self, channel: str, address: str) -> str:
        """E.164 for WhatsApp, lower-cased for email; raises PermanentDeliveryError when unusable."""
        if channel == "whatsapp":
            return to_e164(address, self.settings.default_phone_region)
        email = address.strip().lower()
        # No whitespace or control character: an address is also a header (`to`), and a line
        # break there could add headers of the sender's choosing.
        if "@" not in email or email.startswith("@") or email.endswith("@") or not _HEADER_SAFE(email):
            raise PermanentDeliveryError("invalid email address", code="invalid_email")
        return email

    def _normalise_quietly(self, channel: str, address: str | None) -> str | None:
        if not address:
            return None
        with contextlib.suppress(PermanentDeliveryError):
            return self.normalise(channel, address)
        return None

    def _refused(self, *args: Any) -> None:
        self.refuse(*args)
        return None

    def refuse(
        self, route: Route, recipient: str, code: str, reason: str, status: str = "failed"
    ) -> DeliveryRecord | None:
        """Record that `route` is not sent to `recipient` (opted out, no or bad address)."""
        key = f"{route.channel} {recipient}"
        if key in self.already or key in self._claimed:
            return None
        self._claimed.add(key)
        return self.record(
            DeliveryRecord(
                channel=route.channel,
                recipient=recipient,
                status=status,  # type: ignore[arg-type]
                recipient_role=route.role,
                template=route.template,
                error_code=code,
                error_message=reason,
            )
        )

    # ------------------------------------------------------------------ composing
    def compose(self, kind: str, ctx: MessageContext, channel: Channel | None = None) -> Outgoing:
        """The messages of every route of `kind` (only `channel`'s when given), not yet sent.

        Recipients who must not get one (opted out, no or bad address) are recorded here.
        WhatsApp messages are rendered from `ctx.for_whatsapp()`: long values cut to fit Twilio.
        """
        views: dict[bool, tuple[MessageContext, dict[str, Any]]] = {}
        urgent = kind in URGENT_KINDS
        messages = []
        for route in ROUTES.get(kind, ()) if channel is None else routes_for(kind, channel):
            whatsapp = route.channel == "whatsapp"
            if whatsapp not in views:  # once per call, not once per recipient
                view = ctx.for_whatsapp() if whatsapp else ctx
                views[whatsapp] = (view, view.template_vars())
            view, shared = views[whatsapp]
            target = self.resolve(route, view)
            if target is not None:
                message = self._message(route, view, target, shared)
                message.urgent = urgent
                messages.append(message)
        return Outgoing(self, messages)

    def skip(self, kind: str, ctx: MessageContext, code: str, reason: str) -> list[DeliveryRecord]:
        """Record every route of `kind` as `skipped` with `reason` (the event no longer applies)."""
        records = []
        for route in ROUTES.get(kind, ()):
            target = self.resolve(route, ctx)
            if target is not None:
                record = self.refuse(route, target.address, code, reason, "skipped")
                if record is not None:
                    records.append(record)
        return records

    def _render(self, route: Route, target: Target, shared: dict[str, Any]) -> Rendered:
        return self.dispatcher.templates.render(
            route.channel,
            route.template,
            shared,
            role=target.role,
            name=target.name or "there",
            recipient=target.person,
        )

    def _message(self, route: Route, ctx: MessageContext, target: Target, shared: dict[str, Any]) -> Message:
        rendered = self._render(route, target, shared)
        message = Message(
            channel=route.channel,
            recipient=target.address,
            text=rendered.text,
            role=route.role,
            template=route.template,
            subject=rendered.subject,
        )
        if route.channel == "whatsapp":
            content_sid = self.settings.whatsapp_content_templates.get(route.template)
            if content_sid:  # an approved template, needed outside the 24 h window
                message.content_sid = content_sid
                message.content_variables = content_variables(ctx, target, rendered.text)
        elif route.channel == "email":
            message.html = rendered.html
            message.reply_to = self.settings.admin_email
            message.secret = ctx.otp_code
        else:
            message.meta = {
                "recipient_type": route.role,
                "recipient_id": target.person.id if target.person else None,
                "booking_id": ctx.booking.id if ctx.booking else None,
                "type": route.template,
            }
        return message

    # ------------------------------------------------------------------ sending
    async def send_all(self, messages: list[Message]) -> list[DeliveryRecord]:
        """Send `messages` concurrently; returns the records made.

        Every send runs to its end before an unexpected error is re-raised, so no send is left
        running unrecorded behind the caller's back (its record is in `self.records`).
        """
        if len(messages) == 1:  # nothing to overlap with: no task needed
            record = await self.send(messages[0])
            return [record] if record is not None else []
        results = await asyncio.gather(*(self.send(m) for m in messages), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [result for result in results if result is not None]  # type: ignore[misc]

    async def send(self, message: Message) -> DeliveryRecord | None:
        """Send one message unless the ledger already has it; record what happened.

        A transient failure records nothing (the event retries and the ledger stays silent
        about this recipient, so the retry sends it); it is kept in `self.transient`.
        """
        key = f"{message.channel} {message.recipient}"
        if key in self.already or key in self._claimed:
            return None
        self._claimed.add(key)
        message.idempotency_key = self._idempotency_key(message)
        transport = self.dispatcher.transports[message.channel]
        try:
            sent = await transport.send(message)
        except TransientDeliveryError as exc:
            self._claimed.discard(key)
            self._note_transient(exc)
            _delivery_counter(message.channel, "retry").inc()
            log.warning(
                "delivery.transient_error",
                event_id=self.event_id,
                channel=message.channel,
                provider=transport.name,
                error_code=exc.code,
                error=str(exc),
                retry_after=exc.retry_after,
            )
            return None
        except PermanentDeliveryError as exc:
            failed = self._record(message, "failed", error_code=exc.code, error_message=str(exc))
            return self.record(failed, provider=transport.name)
        return self.record(self._record(message, sent.status, provider_message_id=sent.provider_message_id))

    def _note_transient(self, exc: TransientDeliveryError) -> None:
        """Keep the error the event's retry waits for: the longest Retry-After, and counted as
        an attempt unless every one of the event's transient errors was a throttle (one real
        5xx beside an open circuit is still a failed attempt, with its backoff)."""
        earlier = self.transient
        chosen = exc if earlier is None or (exc.retry_after or 0) > (earlier.retry_after or 0) else earlier
        throttled = exc.throttled and (earlier is None or earlier.throttled)
        if chosen.throttled != throttled:
            chosen = TransientDeliveryError(
                str(chosen), retry_after=chosen.retry_after, code=chosen.code, throttled=throttled
            )
        self.transient = chosen

    def record(self, record: DeliveryRecord, **log_context: Any) -> DeliveryRecord:
        """Keep `record` for the ledger. A message not sent (`failed`, `skipped`) also gets its one
        log line, `delivery.failed` / `delivery.skipped`, here where every such record passes:
        ops read the logs, not the ledger."""
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        _delivery_counter(record.channel, record.status).inc()
        if record.status in ("failed", "skipped"):
            failed = record.status == "failed"
            log.log(
                logging.WARNING if failed else logging.INFO,
                "delivery.failed" if failed else "delivery.skipped",
                event_id=self.event_id,
                kind=self.kind,
                channel=record.channel,
                template=record.template,
                recipient_role=record.recipient_role,
                recipient_masked=masked_recipient(record.recipient),
                reason=record.error_code,
                error=record.error_message,
                **log_context,
            )
        return record

    @staticmethod
    def _record(message: Message, status: str, **extra: Any) -> DeliveryRecord:
        return DeliveryRecord(
            channel=message.channel,
            recipient=message.recipient,
            status=status,  # type: ignore[arg-type]
            recipient_role=message.role,
            template=message.template,
            **extra,
        )

    def _idempotency_key(self, message: Message) -> str:
        """Stable per (event, channel, recipient), so a provider can drop our own retries."""
        if self.event_id is not None:
            basis = f"{self.event_id}|{message.channel}|{message.recipient}"
        else:  # a direct call: the same content to the same person is the same message
            basis = f"direct|{message.channel}|{message.recipient}|{message.subject}|{message.text}"
        return "flavor-" + hashlib.sha256(basis.encode()).hexdigest()[:40]


def masked_recipient(recipient: str) -> str:
    """A ledger recipient as a log line may show it: a phone number or an email address masked
    (core.redaction), a placeholder such as `client:<id>` or `admin` as it is. Logged under
    a key of its own, which the redaction step does not mask a second time."""
    if "@" in recipient:
        return mask_email(recipient)
    if recipient.startswith("+"):
        return mask_phone(recipient)
    return recipient


def content_variables(ctx: MessageContext, target: Target, text: str) -> dict[str, str]:
    """Variables for an approved Content template: {1: name, 2: reference, 3: when, 4: full text}."""
    booking = ctx.booking
    return {
        "1": target.name or "there",
        "2": booking.reference if booking else "",
        "3": booking.starts if booking else "",
        "4": text,
    }
