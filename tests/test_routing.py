"""The routing table is the single truth: the router's senders send exactly its routes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handlers.contract import DeliveryRecord, Event, TransientDeliveryError
from handlers.delivery import DeliveryScope, Dispatcher, Message, Sent, delivering
from handlers.rendering import TEMPLATE_DIR
from handlers.router import SENDERS, handle_event
from handlers.routing import ROUTES, routes_for, routing_table_markdown
from handlers.transports import NullTransport
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


def test_every_routed_kind_has_a_sender_and_every_sender_a_route() -> None:
    assert set(SENDERS) == set(ROUTES)


@pytest.mark.parametrize("route", [r for routes in ROUTES.values() for r in routes], ids=str)
def test_every_route_has_its_templates(route) -> None:
    assert (TEMPLATE_DIR / route.channel / f"{route.template}.txt").is_file()
    if route.channel == "email":
        assert (TEMPLATE_DIR / "email" / f"{route.template}.html").is_file()


@pytest.mark.parametrize("kind", list(ROUTES))
async def test_each_kind_sends_exactly_its_routes(kind: str) -> None:
    event = Event(1, kind, "s", PAYLOADS.get(kind, {}), 1, None, datetime.now(UTC))
    scope = DeliveryScope(null_dispatcher(), event.id)
    with delivering(scope):
        await SENDERS[kind](event, event_data(status=STATUSES.get(kind, "pending")))
    sent = sorted((r.recipient_role, r.channel, r.template) for r in scope.records)
    assert sent == sorted((r.role, r.channel, r.template) for r in ROUTES[kind])
    assert {r.status for r in scope.records} == {"simulated"}


async def test_ledger_already_holding_a_delivery_is_not_sent_again() -> None:
    scope = DeliveryScope(null_dispatcher(), 9, frozenset({"whatsapp +61400000001"}))
    event = Event(9, "booking.deposit_uploaded", "s", {}, 2, None, datetime.now(UTC))
    with delivering(scope):
        await SENDERS[event.kind](event, event_data())
    assert scope.records == []


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
