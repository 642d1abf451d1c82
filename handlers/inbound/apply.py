"""Applying an inbound WhatsApp command: ordinary row writes plus a reply for the sender.

A performer's `ACCEPT FE-1001` updates their booking's status in one transaction with an
`audit_logs` row; the booking trigger turns it into `booking.accepted`, so the client hears of
it through the same event → delivery path as any other change. `DECLINE` changes no booking:
it records the refusal (audit row), leaves an in-app alert for the admins and emits a
`booking.declined_by_performer` event for the router to send the admin a WhatsApp. `STATUS`
and `HELP` only answer. Whatever is not the sender's to do (someone else's booking, an unknown number, an
unknown command) writes nothing and gets a polite answer.

Each Twilio message is applied once: Twilio retries a webhook it got no timely answer to, and a
signed request can be posted again. Its MessageSid is claimed in `worker.inbound_messages` in the
same transaction as the command's writes and its reply (sql/010_inbound_messages.sql), so a
replay, even one arriving while the first is still being applied, writes nothing and gets the
first reply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.queries import load_queries
from core.settings import Settings
from handlers.contract import PermanentDeliveryError
from handlers.inbound.commands import CommandAction, WhatsAppCommand, parse_whatsapp_command
from handlers.models import format_local
from handlers.phones import to_e164

log = structlog.get_logger(__name__)

QUERIES = load_queries(Path(__file__).with_name("queries.sql"))

#: A performer may accept once the deposit is verified (the lifecycle's last step before `accepted`).
ACCEPTABLE_FROM = frozenset({"deposit_verified"})
#: A refusal is still worth recording for any booking that is not over.
DECLINABLE_FROM = frozenset({"pending", "approved", "deposit_uploaded", "deposit_verified", "accepted"})
#: How many bookings a bare STATUS lists.
STATUS_LIST_LIMIT = 5

Role = Literal["performer", "client", "admin"]

HELP_TEXT = (
    "Flavor Entertainers commands:\n"
    "ACCEPT FE-1234 - accept your booking\n"
    "DECLINE FE-1234 - decline your booking\n"
    "STATUS FE-1234 - where a booking stands (STATUS alone lists your upcoming bookings)\n"
    "HELP - this list"
)
UNKNOWN_SENDER_TEXT = (
    "Sorry, we don't recognise this number. Please message us from the number on your "
    "Flavor Entertainers profile, or contact support@flavorentertainers.com.au."
)
UNKNOWN_COMMAND_TEXT = "Sorry, we didn't understand that. Reply HELP to see the commands."


@dataclass(frozen=True, slots=True)
class SenderIdentity:
    """Who a number belongs to: the admin, or a client or performer (a number may be several)."""

    role: Role
    id: str | None
    name: str


@dataclass(frozen=True, slots=True)
class InboundResult:
    """The reply to send back, whether the command wrote anything, and whether this message was
    answered before (a replay: nothing applied again)."""

    action: CommandAction
    reply: str
    applied: bool = False
    booking_id: str | None = None
    replayed: bool = False


async def apply_inbound_message(
    pool: AsyncConnectionPool, settings: Settings, message_sid: str, sender: str, body: str
) -> InboundResult:
    """Apply Twilio message `message_sid`: `body` from `sender` (e.g. "whatsapp:+61400000003"),
    once; return the reply, the stored one when the message was answered before."""
    command = parse_whatsapp_command(body)
    key = {"message_sid": message_sid}
    async with pool.connection() as conn, conn.transaction():
        claim = await conn.execute(QUERIES["claim_inbound_message"], {**key, "action": command.action})
        if await claim.fetchone() is None:
            answered = await (await conn.execute(QUERIES["answered_inbound_message"], key)).fetchone()
            assert answered is not None  # claimed and committed by the first request
            action, reply = answered
            return InboundResult(cast(CommandAction, action), reply, replayed=True)
        result = await _apply_command(conn, settings, command, sender)
        await conn.execute(QUERIES["store_inbound_reply"], {**key, "reply": result.reply})
        return result


async def _apply_command(
    conn: psycopg.AsyncConnection, settings: Settings, command: WhatsAppCommand, sender: str
) -> InboundResult:
    """The command's writes and reply, inside the caller's transaction."""
    people = await identify_sender(conn, settings, sender)
    if not people:
        log.info("inbound.unknown_sender", action=command.action)
        return InboundResult(command.action, UNKNOWN_SENDER_TEXT)
    if command.action == "help":
        return InboundResult("help", HELP_TEXT)
    if command.action == "unknown":
        return InboundResult("unknown", UNKNOWN_COMMAND_TEXT)
    if command.reference is None:
        if command.action == "status":
            return InboundResult("status", await _list_open_bookings(conn, people))
        return InboundResult(
            command.action,
            f"Please include the booking reference, e.g. {command.action.upper()} FE-1234.",
        )
    return await _apply_to_booking(conn, command, people)


async def identify_sender(
    conn: psycopg.AsyncConnection, settings: Settings, sender: str
) -> list[SenderIdentity]:
    """Everyone whose normalised number is the sender's: performers, clients, the admin."""
    region = settings.default_phone_region
    try:
        number = to_e164(sender, region)
    except PermanentDeliveryError:
        return []
    people: list[SenderIdentity] = []
    if settings.admin_whatsapp and _same_number(settings.admin_whatsapp, number, region):
        people.append(SenderIdentity("admin", None, "admin"))
    # Stored numbers are as typed ("0400 000 002"): narrow by trailing digits in SQL, confirm here.
    digits = str(phonenumbers.parse(number).national_number)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(QUERIES["people_by_phone_digits"], {"digits": digits})
    for row in await cur.fetchall():
        if _same_number(row["phone"], number, region):
            people.append(SenderIdentity(row["role"], row["id"], row["name"]))
    return people


def _same_number(raw: str, e164: str, region: str) -> bool:
    try:
        return to_e164(raw, region) == e164
    except PermanentDeliveryError:
        return False


async def _apply_to_booking(
    conn: psycopg.AsyncConnection, command: WhatsAppCommand, people: list[SenderIdentity]
) -> InboundResult:
    """ACCEPT, DECLINE or STATUS of one booking, inside the caller's transaction."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(QUERIES["lock_booking_by_reference"], {"reference": command.reference})
    booking = await cur.fetchone()
    performer = _find(people, "performer", booking["performer_id"] if booking else None)
    client = _find(people, "client", booking["client_id"] if booking else None)
    is_admin = any(p.role == "admin" for p in people)
    if booking is None or not (performer or client or is_admin):
        # The same answer whether the booking does not exist or is someone else's.
        log.info("inbound.not_yours", action=command.action)
        return InboundResult(
            command.action, f"Sorry, we couldn't find a booking {command.reference} for this number."
        )
    if command.action == "status":
        return InboundResult("status", _describe_booking(booking), booking_id=booking["id"])
    if performer is None:
        return InboundResult(
            command.action,
            f"Only the booked performer can {command.action} {booking['reference']}.",
            booking_id=booking["id"],
        )
    if command.action == "accept":
        return await _accept(conn, booking, performer)
    return await _decline(conn, booking, performer)


async def _accept(
    conn: psycopg.AsyncConnection, booking: dict[str, Any], performer: SenderIdentity
) -> InboundResult:
    reference, status = booking["reference"], booking["status"]
    if status == "accepted":
        return InboundResult(
            "accept", f"{reference} is already accepted. Thank you!", booking_id=booking["id"]
        )
    if status not in ACCEPTABLE_FROM:
        return InboundResult(
            "accept",
            f"{reference} can't be accepted while it is {_status_words(status)}.",
            booking_id=booking["id"],
        )
    await conn.execute(QUERIES["accept_booking"], {"booking_id": booking["id"]})
    await _audit(conn, "whatsapp.booking_accepted", booking, performer)
    log.info("inbound.booking_accepted", booking_id=booking["id"], performer_id=performer.id)
    return InboundResult(
        "accept",
        f"Thanks {performer.name}! {reference} is accepted; the client will be told.",
        applied=True,
        booking_id=booking["id"],
    )


async def _decline(
    conn: psycopg.AsyncConnection, booking: dict[str, Any], performer: SenderIdentity
) -> InboundResult:
    reference, status = booking["reference"], booking["status"]
    if status not in DECLINABLE_FROM:
        return InboundResult(
            "decline",
            f"{reference} is {_status_words(status)}: nothing to decline.",
            booking_id=booking["id"],
        )
    await _audit(conn, "whatsapp.booking_declined", booking, performer)
    message = f"{performer.name} declined booking {reference} ({_status_words(status)}) by WhatsApp."
    await conn.execute(
        QUERIES["insert_admin_notification"],
        {
            "booking_id": booking["id"],
            "type": "booking_declined",
            "title": "Performer declined",
            "message": message,
        },
    )
    payload = {
        "command": "decline",
        "booking_id": booking["id"],
        "reference": reference,
        "performer_id": performer.id,
        "status": status,
    }
    await conn.execute(
        QUERIES["emit_declined_event"], {"booking_id": booking["id"], "payload": Jsonb(payload)}
    )
    log.info("inbound.booking_declined", booking_id=booking["id"], performer_id=performer.id)
    return InboundResult(
        "decline",
        f"Thanks for letting us know, {performer.name}. We've recorded that you declined {reference}; "
        "our team will be in touch.",
        applied=True,
        booking_id=booking["id"],
    )


async def _audit(
    conn: psycopg.AsyncConnection, action: str, booking: dict[str, Any], performer: SenderIdentity
) -> None:
    details = {"source": "whatsapp", "reference": booking["reference"], "status_before": booking["status"]}
    await conn.execute(
        QUERIES["insert_audit_log"],
        {
            "action": action,
            "booking_id": booking["id"],
            "actor": f"performer:{performer.id}",
            "details": Jsonb(details),
        },
    )


async def _list_open_bookings(conn: psycopg.AsyncConnection, people: list[SenderIdentity]) -> str:
    ids = [p.id for p in people if p.id is not None]
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(QUERIES["open_bookings_of_person"], {"ids": ids, "limit": STATUS_LIST_LIMIT})
    rows = await cur.fetchall()
    if not rows:
        return "You have no upcoming bookings. Reply HELP to see the commands."
    return "Your upcoming bookings:\n" + "\n".join(_describe_booking(row) for row in rows)


def _describe_booking(booking: dict[str, Any]) -> str:
    when = format_local(booking["event_start"], _zone(booking["timezone"]))
    what = booking["event_type"] or "Booking"
    where = f" at {booking['venue']}" if booking["venue"] else ""
    return f"{booking['reference']}: {_status_words(booking['status'])} - {what} on {when}{where}"


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "Australia/Sydney")
    except (ZoneInfoNotFoundError, ValueError):  # an unknown zone must not stop the reply
        return ZoneInfo("Australia/Sydney")


def _status_words(status: str) -> str:
    return status.replace("_", " ")


def _find(people: Iterable[SenderIdentity], role: Role, person_id: str | None) -> SenderIdentity | None:
    return next((p for p in people if p.role == role and p.id == person_id), None)
