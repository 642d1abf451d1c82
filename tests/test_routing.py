"""The routing table is the single truth: the router's senders send exactly its routes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from handlers.contract import Event
from handlers.delivery import DeliveryScope, delivering
from handlers.rendering import TEMPLATE_DIR
from handlers.router import SENDERS
from handlers.routing import ROUTES, routes_for, routing_table_markdown
from tests.samples import event_data, null_dispatcher

PAYLOADS = {
    "booking.cancelled": {"reason": "Venue closed"},
    "booking.reminder_due": {"hours_until_event": 24},
    "booking.payment_due": {"outstanding": "600.00"},
    "vetting.decided": {"decision": "approved"},
    "whatsapp.inbound": {"command": "decline"},
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
