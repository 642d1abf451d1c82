"""WhatsApp notifications: the seed's `src/integrations/twilio` functions, in Python.

Every function here is thin: it names an event kind, and the routing table says who hears it
and with which template; `send_whatsapp` hands the rendered text to the scope's transport.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from handlers.contract import DeliveryRecord, PermanentDeliveryError
from handlers.delivery import Message, Target, current_scope
from handlers.models import Booking, MessageContext, Person
from handlers.routing import Route, routes_for


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
    scope = current_scope()
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
    admin = current_scope().settings.admin_whatsapp
    if not admin:
        route = Route("admin", "whatsapp", template or "direct")
        return current_scope().refuse(route, "admin", "missing_address", "ADMIN_WHATSAPP is not set")
    return await send_whatsapp(admin, message, role="admin", template=template, variables=variables)


async def notify_booking_created(booking: Booking, client: Person, performer: Person) -> list[DeliveryRecord]:
    """New booking request: admin, client and performer hear about it."""
    return await notify(
        "booking.created", MessageContext(booking=booking, client=client, performer=performer)
    )


async def notify_booking_approved(
    booking: Booking, client: Person, performer: Person
) -> list[DeliveryRecord]:
    """Approved: the client gets deposit instructions, the performer a heads-up."""
    return await notify(
        "booking.approved", MessageContext(booking=booking, client=client, performer=performer)
    )


async def notify_deposit_uploaded(
    booking: Booking, client: Person, performer: Person
) -> list[DeliveryRecord]:
    """The client uploaded a deposit receipt: the admin must verify it."""
    return await notify(
        "booking.deposit_uploaded", MessageContext(booking=booking, client=client, performer=performer)
    )


async def notify_deposit_verified(
    booking: Booking, client: Person, performer: Person
) -> list[DeliveryRecord]:
    """Deposit verified: the booking is confirmed for the client; the performer is asked to accept."""
    return await notify(
        "booking.deposit_verified", MessageContext(booking=booking, client=client, performer=performer)
    )


async def notify_booking_accepted(
    booking: Booking, client: Person, performer: Person
) -> list[DeliveryRecord]:
    """The performer accepted: client and admin hear about it."""
    return await notify(
        "booking.accepted", MessageContext(booking=booking, client=client, performer=performer)
    )


async def send_booking_reminder(
    booking: Booking, client: Person, performer: Person, hours_until_event: int
) -> list[DeliveryRecord]:
    """Reminder to both parties `hours_until_event` hours before the event."""
    ctx = MessageContext(
        booking=booking, client=client, performer=performer, hours_until_event=hours_until_event
    )
    return await notify("booking.reminder_due", ctx)


async def send_payment_reminder(
    booking: Booking, client: Person, performer: Person, outstanding: Decimal
) -> list[DeliveryRecord]:
    """The client still owes `outstanding` before the event."""
    ctx = MessageContext(booking=booking, client=client, performer=performer, outstanding=outstanding)
    return await notify("booking.payment_due", ctx)


async def notify_booking_cancelled(
    booking: Booking, client: Person, performer: Person, reason: str | None
) -> list[DeliveryRecord]:
    """Cancelled: every party hears it, with the reason."""
    ctx = MessageContext(booking=booking, client=client, performer=performer, reason=reason)
    return await notify("booking.cancelled", ctx)


async def notify(kind: str, ctx: MessageContext) -> list[DeliveryRecord]:
    """Send every WhatsApp route of `kind`, concurrently; returns the records made."""
    scope = current_scope()
    sends = []
    for route in routes_for(kind, "whatsapp"):
        target = scope.resolve(route, ctx)
        if target is None:
            continue
        text = scope.render(route, ctx, target).text
        variables = content_variables(ctx, target, text)
        if route.role == "admin":
            sends.append(send_admin_whatsapp(text, template=route.template, variables=variables))
        else:
            sends.append(
                send_whatsapp(
                    target.address, text, role=route.role, template=route.template, variables=variables
                )
            )
    results = await asyncio.gather(*sends)
    return [record for record in results if record is not None]


def content_variables(ctx: MessageContext, target: Target, text: str) -> dict[str, str]:
    """Variables for an approved Content template: {1: name, 2: reference, 3: when, 4: full text}."""
    booking = ctx.booking
    return {
        "1": target.name or "there",
        "2": booking.reference if booking else "",
        "3": booking.starts if booking else "",
        "4": text,
    }
