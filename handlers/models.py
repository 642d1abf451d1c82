"""What notifications are about: a booking and its two parties, an OTP, a vetting application.

Plain immutable records loaded in bulk by the router's `prepare()`; the platform's functions
(`notify_booking_created(booking, client, performer)`, ...) take these.

Every free-text field (names, reference, event type, venue, reason, notes: the fields named in
`handlers.values.WHATSAPP_LIMITS`) is put on one line when a record is built, however it is
built, so no value from a row can add lines to any message (see handlers.values for why).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from decimal import Decimal
from functools import cache, cached_property
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from handlers.values import WHATSAPP_LIMITS, one_line, shorten

_DEFAULT_TZ = "Australia/Sydney"

_Record = TypeVar("_Record")


@cache
def _free_text(record_type: type) -> tuple[str, ...]:
    """The fields of `record_type` that hold free text from the app's rows."""
    return tuple(f.name for f in fields(record_type) if f.name in WHATSAPP_LIMITS)


def _one_line_fields(record: object) -> None:
    """Put every free-text field of `record` (a dataclass being built, frozen or not) on one line."""
    for name in _free_text(type(record)):
        value = getattr(record, name)
        if value is not None and (cleaned := one_line(value)) is not value:
            object.__setattr__(record, name, cleaned)


def _shortened(record: _Record) -> _Record:
    """`record` itself when every free-text field fits its WhatsApp length (the usual case: its
    cached properties are kept), else a copy with the long ones cut."""
    cut = {
        name: shorten(value, WHATSAPP_LIMITS[name])
        for name in _free_text(type(record))
        if (value := getattr(record, name)) is not None and len(value) > WHATSAPP_LIMITS[name]
    }
    return replace(record, **cut) if cut else record  # type: ignore[type-var]


@dataclass(frozen=True, slots=True)
class Person:
    """A client or a performer, as far as messaging cares."""

    id: str
    name: str
    full_name: str | None
    email: str | None
    phone: str | None
    whatsapp_opt_in: bool = True
    email_opt_in: bool = True
    #: A stand-in for a party whose row is gone (`Person.missing_party`): named in the other
    #: parties' messages, never sent to (its deliveries fail with `missing_recipient`).
    missing: bool = False

    def __post_init__(self) -> None:
        _one_line_fields(self)

    @property
    def first_name(self) -> str:
        return (self.full_name or self.name).split(" ", 1)[0]

    @classmethod
    def missing_party(cls, role: str) -> Person:
        """Who a booking's `role` party is when its row cannot be found (deleted, or a schema
        without the foreign key): the templates still render, e.g. "Client: (client record missing)"."""
        return cls(id="", name=f"({role} record missing)", full_name=None, email=None, phone=None,
                   whatsapp_opt_in=False, email_opt_in=False, missing=True)


@dataclass(frozen=True)
class Booking:
    """A booking row; times are shown in the booking's own time zone."""

    id: str
    reference: str
    status: str
    event_type: str | None
    event_start: datetime
    event_end: datetime | None
    venue: str | None
    timezone: str
    total_amount: Decimal
    deposit_amount: Decimal
    amount_paid: Decimal
    cancellation_reason: str | None

    def __post_init__(self) -> None:
        _one_line_fields(self)

    @cached_property
    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone or _DEFAULT_TZ)
        except (KeyError, ValueError):  # an unknown zone must not stop the message
            return ZoneInfo(_DEFAULT_TZ)

    @cached_property
    def starts(self) -> str:
        """ "Saturday 14 March 2026, 7:30 pm AEDT" in the booking's zone."""
        return format_local(self.event_start, self.zone)

    @property
    def outstanding(self) -> Decimal:
        return self.total_amount - self.amount_paid


@dataclass(frozen=True, slots=True)
class OtpCode:
    """A one-time code row; `code` must only ever reach the email body."""

    id: str
    email: str
    code: str = field(repr=False)
    purpose: str
    expires_at: datetime
    used_at: datetime | None
    created_at: datetime

    @property
    def lifetime_minutes(self) -> int:
        """How long the code is valid, from the row alone: every attempt to send it (retries share
        one Idempotency-Key) renders the same email, which a "minutes left at send time" would not."""
        return max(1, round((self.expires_at - self.created_at).total_seconds() / 60))


@dataclass(frozen=True, slots=True)
class Application:
    """A performer's vetting application."""

    id: str
    full_name: str
    stage_name: str | None
    email: str
    phone: str | None
    status: str
    review_notes: str | None

    def __post_init__(self) -> None:
        _one_line_fields(self)


@dataclass(slots=True)
class MessageContext:
    """Everything a template or a recipient lookup may need for one event's messages."""

    booking: Booking | None = None
    client: Person | None = None
    performer: Person | None = None
    reason: str | None = None
    hours_until_event: int | None = None
    outstanding: Decimal | None = None
    otp_email: str | None = None
    otp_code: str | None = field(default=None, repr=False)
    otp_purpose: str | None = None
    expiry_minutes: int | None = None
    application: Application | None = None
    approved: bool | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        _one_line_fields(self)

    def template_vars(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]

    def for_whatsapp(self) -> MessageContext:
        """This context with every free-text value cut to its WhatsApp length, so that a long
        value from a row, never the message's own wording, is what gives way to Twilio's 1,600."""
        parts = {
            name: cut
            for name in ("booking", "client", "performer", "application")
            if (part := getattr(self, name)) is not None and (cut := _shortened(part)) is not part
        }
        own = _shortened(self)
        return replace(own, **parts) if parts else own  # usually `self`: nothing is that long


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("", "January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")  # fmt: skip


def format_local(moment: datetime, zone: ZoneInfo) -> str:
    """A human date and time in `zone`: English names whatever the process locale, and no
    strftime (platform-specific flags, and the slowest part of a message)."""
    local = moment.astimezone(zone)
    hour = local.hour % 12 or 12
    half = "am" if local.hour < 12 else "pm"
    return (
        f"{_DAYS[local.weekday()]} {local.day} {_MONTHS[local.month]} {local.year}, "
        f"{hour}:{local.minute:02d} {half} {local.tzname()}"
    )
