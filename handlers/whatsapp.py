"""WhatsApp notifications: the booking platform's `src/integrations/twilio` functions, in Python.

Every `notify_*` function is thin: it names an event kind, and the routing table says who hears
it and with which template. It returns the composed messages (`handlers.delivery.Outgoing`):
`await notify_booking_created(b, c, p)` sends them and gives the records. They are for code that
calls them directly: the claim loop's router composes an event's routes on every channel in one
step (handlers.router.compose_event), from the same table. `send_whatsapp` sends one message to
one number now.
"""

from __future__ import annotations

from decimal import Decimal

from handlers.contract import DeliveryRecord, PermanentDeliveryError
from handlers.delivery import Message, Outgoing, direct_scope
from handlers.models import Booking, MessageContext, Person
from handlers.routing import Route


async def send_whatsapp(
    to: str,
    message: str,
    *,
    role: str = "direct",
    template: str | None = None,
    variables: dict[str, str] | None = None,
) -> DeliveryRecord | None:
    """Send `message` to the WhatsApp number `to` (any format; normalised to E.164).

    With a Twilio Content template configured for `template` (WHATSAPP_CONTENT_TEMPLATES), the
    template and `variables` are sent instead of free text (needed outside the 24 h window).
    Returns the ledger record, or None when the ledger already shows this message sent.
    """
    scope = direct_scope()
    try:
        number = scope.normalise("whatsapp", to)
    except PermanentDeliveryError as exc:
        route = Route(role, "whatsapp", template or "direct")  # type: ignore[arg-type]
        return scope.refuse(route, f"{role}:invalid", exc.code or "invalid_number", str(exc))
    content_sid = scope.settings.whatsapp_content_templates.get(template or "")
    return await scope.send(
        Message(
            channel="whatsapp",
            recipient=number,
            text=message,
            role=role,
            template=template,
            content_sid=content_sid,
            content_variables=variables if content_sid else None,
        )
    )


async def send_admin_whatsapp(
    message: str, *, template: str | None = None, variables: dict[str, str] | None = None
) -> DeliveryRecord | None:
    """Send `message` to ADMIN_WHATSAPP (admin alerts ignore opt-outs)."""
    scope = direct_scope()
    admin = scope.settings.admin_whatsapp
    if not admin:
        route = Route("admin", "whatsapp", template or "direct")
        return scope.refuse(route, "admin", "missing_address", "ADMIN_WHATSAPP is not set")
    return await send_whatsapp(admin, message, role="admin", template=template, variables=variables)


def notify_booking_created(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """New booking request: admin, client and performer hear about it."""
    return notify("booking.created", MessageContext(booking=booking, client=client, performer=performer))


def notify_booking_approved(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """Approved: the client gets deposit instructions, the performer a heads-up."""
    return notify("booking.approved", MessageContext(booking=booking, client=client, performer=performer))


def notify_deposit_uploaded(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """The client uploaded a deposit receipt: the admin must verify it."""
    return notify(
        "booking.deposit_uploaded", MessageContext(booking=booking, client=client, performer=performer)
    )


def notify_deposit_verified(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """Deposit verified: the booking is confirmed for the client; the performer is asked to accept."""
    return notify(
        "booking.deposit_verified", MessageContext(booking=booking, client=client, performer=performer)
    )


def notify_booking_accepted(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """The performer accepted: client and admin hear about it."""
    return notify("booking.accepted", MessageContext(booking=booking, client=client, performer=performer))


def notify_booking_declined(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """The performer declined by WhatsApp (DECLINE <reference>): the admin must find someone else."""
    context = MessageContext(booking=booking, client=client, performer=performer)
    return notify("booking.declined_by_performer", context)


def send_booking_reminder(
    booking: Booking, client: Person, performer: Person, hours_until_event: int
) -> Outgoing:
    """Reminder to both parties `hours_until_event` hours before the event."""
    ctx = MessageContext(
        booking=booking, client=client, performer=performer, hours_until_event=hours_until_event
    )
    return notify("booking.reminder_due", ctx)


def send_payment_reminder(
    booking: Booking, client: Person, performer: Person, outstanding: Decimal
) -> Outgoing:
    """The client still owes `outstanding` before the event."""
    ctx = MessageContext(booking=booking, client=client, performer=performer, outstanding=outstanding)
    return notify("booking.payment_due", ctx)


def notify_booking_cancelled(
    booking: Booking, client: Person, performer: Person, reason: str | None
) -> Outgoing:
    """Cancelled: every party hears it, with the reason."""
    ctx = MessageContext(booking=booking, client=client, performer=performer, reason=reason)
    return notify("booking.cancelled", ctx)


def notify(kind: str, ctx: MessageContext) -> Outgoing:
    """The WhatsApp messages of `kind`, composed; await the result to send them."""
    return direct_scope().compose(kind, ctx, "whatsapp")
