"""In-memory sample records for the pure tests of routing and templates (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from core.settings import Settings
from handlers.delivery import Dispatcher
from handlers.models import Application, Booking, OtpCode, Person
from handlers.router import EventData
from handlers.transports import NullTransport

# 2026-03-14 08:30 UTC is 19:30 in Sydney (daylight saving time, AEDT).
EVENT_START = datetime(2026, 3, 14, 8, 30, tzinfo=UTC)


def booking(**values: object) -> Booking:
    fields: dict[str, object] = {
        "id": "7d0c1a52-0000-4000-8000-000000000001",
        "reference": "FE-1001",
        "status": "pending",
        "event_type": "Birthday party",
        "event_start": EVENT_START,
        "event_end": None,
        "venue": "12 Harbour St, Sydney",
        "timezone": "Australia/Sydney",
        "total_amount": Decimal("1234.5"),
        "deposit_amount": Decimal("200"),
        "amount_paid": Decimal("200"),
        "cancellation_reason": None,
    }
    fields.update(values)
    return Booking(**fields)  # type: ignore[arg-type]


def client(**values: object) -> Person:
    fields: dict[str, object] = {
        "id": "c1",
        "name": "Ann Client",
        "full_name": "Ann Client",
        "email": "Ann@Example.com",
        "phone": "0400 000 002",
    }
    fields.update(values)
    return Person(**fields)  # type: ignore[arg-type]


def performer(**values: object) -> Person:
    fields: dict[str, object] = {
        "id": "p1",
        "name": "DJ Nova",
        "full_name": "Nova Performer",
        "email": "nova@example.com",
        "phone": "+61400000003",
    }
    fields.update(values)
    return Person(**fields)  # type: ignore[arg-type]


def application(**values: object) -> Application:
    fields: dict[str, object] = {
        "id": "a1",
        "full_name": "Lee Dancer",
        "stage_name": "Lee Star",
        "email": "lee@example.com",
        "phone": None,
        "status": "approved",
        "review_notes": "Great audition",
    }
    fields.update(values)
    return Application(**fields)  # type: ignore[arg-type]


def otp(minutes: int = 10) -> OtpCode:
    now = datetime.now(UTC)
    return OtpCode("o1", "sam@example.com", "123456", "login", now + timedelta(minutes=minutes), None, now)


def event_data(**booking_values: object) -> EventData:
    return EventData(booking(**booking_values), client(), performer(), otp(), application(), frozenset())


def null_dispatcher(**settings_values: object) -> Dispatcher:
    settings = Settings(
        admin_whatsapp="+61400000001",
        admin_email="admin@example.com",
        **settings_values,  # type: ignore[arg-type]
    )
    null = NullTransport()
    return Dispatcher(settings, {"whatsapp": null, "email": null, "in_app": null})
