"""The routing table is the single truth: the router's senders send exactly its routes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from handlers.contract import DeliveryRecord, Event, TransientDeliveryError
from handlers.delivery import DeliveryScope, Dispatcher, Message, Outgoing, Sent, install_dispatcher
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
from handlers.models import MessageContext
from handlers.rendering import TEMPLATE_DIR
from handlers.router import CONTEXTS, EventData, compose_event, handle_event
from handlers.routing import ROUTES, routes_for, routing_table_markdown
from handlers.transports import NullTransport
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
from tests.samples import event_data, null_dispatcher

PAYLOADS = {
    "booking.cancelled": {"reason": "Venue closed"},
    "booking.reminder_due": {"hours_until_event": 24},
    "booking.payment_due": {"outstanding": "600.00"},
    "vetting.decided": {"decision": "approved"},
    "whatsapp.inbound": {"command": "decline"},
    "booking.declined_by_performer": {"command": "decline"},
}
#: The booking's status when its event is handled (a reminder is only for a confirmed booking).
STATUSES = {"booking.reminder_due": "deposit_verified", "booking.cancelled": "cancelled"}


def test_every_routed_kind_has_a_context_and_every_context_a_route() -> None:
    assert set(CONTEXTS) == set(ROUTES)


@pytest.mark.parametrize("route", [r for routes in ROUTES.values() for r in routes], ids=str)
def test_every_route_has_its_templates(route) -> None:
    assert (TEMPLATE_DIR / route.channel / f"{route.template}.txt").is_file()
    if route.channel == "email":
        assert (TEMPLATE_DIR / "email" / f"{route.template}.html").is_file()


@pytest.mark.parametrize("kind", list(ROUTES))
async def test_each_kind_sends_exactly_its_routes(kind: str) -> None:
    event = Event(1, kind, "s", PAYLOADS.get(kind, {}), 1, None, datetime.now(UTC))
    scope = DeliveryScope(null_dispatcher(), event.id)
    outgoing = compose_event(scope, event, event_data(status=STATUSES.get(kind, "pending")))
    assert outgoing is not None
    await outgoing
    sent = sorted((r.recipient_role, r.channel, r.template) for r in scope.records)
    assert sent == sorted((r.role, r.channel, r.template) for r in ROUTES[kind])
    assert {r.status for r in scope.records} == {"simulated"}


async def test_ledger_already_holding_a_delivery_is_not_sent_again() -> None:
    scope = DeliveryScope(null_dispatcher(), 9, frozenset({"whatsapp +61400000001"}))
    event = Event(9, "booking.deposit_uploaded", "s", {}, 2, None, datetime.now(UTC))
    outgoing = compose_event(scope, event, event_data())
    assert outgoing is not None
    await outgoing
    assert scope.records == []


def platform_calls(kind: str, data: EventData, payload: dict[str, Any]) -> list[Outgoing]:
    """What code calling the platform's functions directly for `kind` would call."""
    b, c, p = data.parties()
    parties = (b, c, p)
    otp, app = data.otp, data.application
    base = MessageContext(booking=b, client=c, performer=p)
    assert otp is not None and app is not None
    return {
        "booking.created": lambda: [notify_booking_created(*parties), send_booking_received_email(*parties)],
        "booking.approved": lambda: [
            notify_booking_approved(*parties), send_deposit_instructions_email(*parties)],
        "booking.deposit_uploaded": lambda: [notify_deposit_uploaded(*parties)],
        "booking.deposit_verified": lambda: [
            notify_deposit_verified(*parties), send_booking_confirmation_email(*parties)],
        "booking.accepted": lambda: [notify_booking_accepted(*parties)],
        "booking.cancelled": lambda: [
            notify_booking_cancelled(*parties, payload["reason"]),
            send_booking_cancelled_email(*parties, payload["reason"]),
        ],
        "booking.reminder_due": lambda: [
            send_booking_reminder(*parties, 24),
            send_booking_reminder_email(*parties, 24),
            add_in_app_notifications(kind, replace(base, hours_until_event=24)),
        ],
        "booking.payment_due": lambda: [
            send_payment_reminder(*parties, b.outstanding),
            send_payment_reminder_email(*parties, b.outstanding),
            add_in_app_notifications(kind, replace(base, outstanding=b.outstanding)),
        ],
        "otp.created": lambda: [send_otp_email(otp.email, otp.code, otp.lifetime_minutes)],
        "vetting.decided": lambda: [send_vetting_approval_email(app, True, app.review_notes)],
        "booking.declined_by_performer": lambda: [notify_booking_declined(*parties)],
        "whatsapp.inbound": lambda: [notify_booking_declined(*parties)],
    }[kind]()


def shape(message: Message) -> tuple[object, ...]:
    return (message.channel, message.recipient, message.template, message.subject, message.text, message.html)


@pytest.mark.parametrize("kind", list(ROUTES))
def test_the_platform_functions_compose_what_the_router_composes(kind: str) -> None:
    """The platform's `notify_*` / `send_*_email` functions (for direct callers) and the router's
    one composition step read the same table: the same messages, word for word."""
    dispatcher = null_dispatcher()
    install_dispatcher(dispatcher)
    data = event_data(status=STATUSES.get(kind, "pending"))
    event = Event(1, kind, "s", PAYLOADS.get(kind, {}), 1, None, datetime.now(UTC))
    routed = compose_event(DeliveryScope(dispatcher, event.id), event, data)
    assert routed is not None
    direct = [message for part in platform_calls(kind, data, event.payload) for message in part.messages]
    assert sorted(map(shape, direct)) == sorted(map(shape, routed.messages))


def test_routes_for_keeps_table_order() -> None:
    assert [r.role for r in routes_for("booking.cancelled", "whatsapp")] == ["admin", "client", "performer"]


def test_readme_documents_the_routing_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert routing_table_markdown() in readme


class SlowProvider:
    """Answers after a moment, like any network provider."""

    name = "slow"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: Message) -> Sent:
        await asyncio.sleep(0.05)
        self.sent.append(message.recipient)
        return Sent("sent", f"id-{len(self.sent)}")

    async def close(self) -> None:
        return None


class BrokenInbox:
    """An in-app store failing in a way no transport maps to a delivery error (a bug)."""

    name = "broken"

    async def send(self, message: Message) -> Sent:
        raise RuntimeError("unexpected failure")

    async def close(self) -> None:
        return None


async def test_an_unexpected_error_keeps_what_went_out_and_the_retry_sends_only_the_rest() -> None:
    provider = SlowProvider()
    settings = null_dispatcher().settings
    broken = Dispatcher(settings, {"whatsapp": provider, "email": provider, "in_app": BrokenInbox()})
    event = Event(5, "booking.reminder_due", "s", {"hours_until_event": 24}, 1, None, datetime.now(UTC))
    data = event_data(status="accepted")

    recorded: list[DeliveryRecord] = []
    outcome = await handle_event(broken, event, data, recorded.append)

    assert isinstance(outcome.error, TransientDeliveryError) and outcome.error.code == "unexpected"
    # The sibling sends were not abandoned mid-flight: all finished and are recorded.
    assert sorted((r.channel, r.recipient_role) for r in recorded) == [
        ("email", "client"),
        ("email", "performer"),
        ("whatsapp", "client"),
        ("whatsapp", "performer"),
    ]
    assert len(provider.sent) == 4 and {r.status for r in recorded} == {"sent"}

    ledger = frozenset(f"{r.channel} {r.recipient}" for r in recorded)
    fixed = Dispatcher(settings, {"whatsapp": provider, "email": provider, "in_app": NullTransport()})
    retried: list[DeliveryRecord] = []
    again = replace(event, attempts=2)
    retry = await handle_event(fixed, again, replace(data, ledger=ledger), retried.append)
    assert retry.error is None
    assert sorted((r.channel, r.recipient_role) for r in retried) == [
        ("in_app", "client"),
        ("in_app", "performer"),
    ]
    assert len(provider.sent) == 4  # nothing sent twice


class Refusing:
    """A provider answering every request with the same transient error."""

    name = "refusing"

    def __init__(self, error: TransientDeliveryError) -> None:
        self.error = error

    async def send(self, message: Message) -> Sent:
        raise self.error

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("whatsapp_throttled", "email_throttled"), [(True, True), (True, False), (False, True)]
)
async def test_an_event_is_throttled_only_if_every_error_was_a_throttle(
    whatsapp_throttled: bool, email_throttled: bool
) -> None:
    """A throttle (429, an open circuit) counts no attempt; one real failure beside it does, and
    the event still waits for the longest Retry-After it was given."""
    throttle = TransientDeliveryError("429", retry_after=3.0, code="throttled", throttled=True)
    failure = TransientDeliveryError("HTTP 500", code="http_500")
    transports = {
        "whatsapp": Refusing(throttle if whatsapp_throttled else failure),
        "email": Refusing(throttle if email_throttled else failure),
        "in_app": NullTransport(),
    }
    dispatcher = Dispatcher(null_dispatcher().settings, transports)
    event = Event(7, "booking.created", "s", {}, 1, None, datetime.now(UTC))
    outcome = await handle_event(dispatcher, event, event_data(), [].append)
    assert isinstance(outcome.error, TransientDeliveryError)
    assert outcome.error.throttled is (whatsapp_throttled and email_throttled)
    assert outcome.error.retry_after == 3.0
