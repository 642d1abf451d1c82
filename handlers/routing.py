"""THE routing table: which event kind becomes which message, to whom, on which channel.

Data, not code: the router and the platform's notify/send functions all read this one table, and
the README's "Notifications" table is generated from it (`routing_table_markdown`). A template
name is the file stem under `handlers/templates/<channel>/`.

Roles: `admin` (ADMIN_WHATSAPP / ADMIN_EMAIL, never opt-out-able), `client` and `performer`
(the booking's parties, opt-outs respected), `applicant` (a vetting application's email) and
`requester` (the address an OTP was issued for).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Channel = Literal["whatsapp", "email", "in_app"]
Role = Literal["admin", "client", "performer", "applicant", "requester"]


@dataclass(frozen=True, slots=True)
class Route:
    """One message an event produces."""

    role: Role
    channel: Channel
    template: str


def _r(role: Role, channel: Channel, template: str) -> Route:
    return Route(role, channel, template)


ROUTES: dict[str, tuple[Route, ...]] = {
    "booking.created": (
        _r("admin", "whatsapp", "booking_created_admin"),
        _r("client", "whatsapp", "booking_created_client"),
        _r("client", "email", "booking_received"),
        _r("performer", "whatsapp", "booking_created_performer"),
    ),
    "booking.approved": (
        _r("client", "whatsapp", "booking_approved_client"),
        _r("client", "email", "deposit_instructions"),
        _r("performer", "whatsapp", "booking_approved_performer"),
    ),
    "booking.deposit_uploaded": (_r("admin", "whatsapp", "deposit_uploaded_admin"),),
    "booking.deposit_verified": (
        _r("client", "whatsapp", "deposit_verified_client"),
        _r("client", "email", "booking_confirmation"),
        _r("performer", "whatsapp", "deposit_verified_performer"),
    ),
    "booking.accepted": (
        _r("client", "whatsapp", "booking_accepted_client"),
        _r("admin", "whatsapp", "booking_accepted_admin"),
    ),
    "booking.cancelled": (
        _r("admin", "whatsapp", "booking_cancelled"),
        _r("client", "whatsapp", "booking_cancelled"),
        _r("client", "email", "booking_cancelled"),
        _r("performer", "whatsapp", "booking_cancelled"),
    ),
    "booking.reminder_due": (
        _r("client", "whatsapp", "booking_reminder"),
        _r("client", "email", "booking_reminder"),
        _r("client", "in_app", "booking_reminder"),
        _r("performer", "whatsapp", "booking_reminder"),
        _r("performer", "email", "booking_reminder"),
        _r("performer", "in_app", "booking_reminder"),
    ),
    "booking.payment_due": (
        _r("client", "whatsapp", "payment_reminder"),
        _r("client", "email", "payment_reminder"),
        _r("client", "in_app", "payment_reminder"),
    ),
    "otp.created": (_r("requester", "email", "otp"),),
    "vetting.decided": (_r("applicant", "email", "vetting_decision"),),
    # A performer answered DECLINE <reference> on WhatsApp (handlers/inbound/).
    "booking.declined_by_performer": (_r("admin", "whatsapp", "booking_declined_admin"),),
    # The same, as versions up to 5202ff3 wrote it (payload command "decline"): kept while such
    # rows may still be pending or be retried.
    "whatsapp.inbound": (_r("admin", "whatsapp", "booking_declined_admin"),),
}


#: Kinds someone is waiting for right now (at a login screen): their messages go before bulk
#: ones in the providers' shared rate limits (handlers/rate_limit.py).
URGENT_KINDS = frozenset({"otp.created"})


@lru_cache(maxsize=128)
def routes_for(kind: str, channel: Channel) -> tuple[Route, ...]:
    """The routes of one event kind on one channel, in table order (the table is constant)."""
    return tuple(route for route in ROUTES.get(kind, ()) if route.channel == channel)


def routing_table_markdown() -> str:
    """The table as README markdown: one line per event kind."""
    lines = ["| event | recipient → channel (template) |", "|---|---|"]
    for kind, routes in ROUTES.items():
        cells = "; ".join(f"{r.role} → {r.channel} (`{r.template}`)" for r in routes)
        lines.append(f"| `{kind}` | {cells} |")
    return "\n".join(lines)
