"""Email notifications: the booking platform's `src/integrations/email` functions, in Python.

Every email has an HTML and a plain-text part and an Idempotency-Key per (event, channel,
recipient). `send_email` sends one email now; the `get_*_email` builders return
subject/html/text from the Jinja2 templates; the `send_*_email` functions name an event kind,
let the routing table pick recipients and return the composed emails (await them to send); the
claim loop's router composes the same routes itself (handlers.router.compose_event).
"""

from __future__ import annotations

import html as html_lib
import re
from decimal import Decimal

from handlers.contract import DeliveryRecord, PermanentDeliveryError
from handlers.delivery import Message, Outgoing, current_templates, direct_scope
from handlers.models import Application, Booking, MessageContext, Person
from handlers.rendering import Rendered
from handlers.routing import Route
from handlers.values import one_line

_TAG = re.compile(r"<[^>]+>")
_BLANKS = re.compile(r"\n\s*\n+")


async def send_email(
    to: str,
    subject: str,
    html: str,
    reply_to: str | None = None,
    *,
    text: str | None = None,
    role: str = "direct",
    template: str | None = None,
    secret: str | None = None,
) -> DeliveryRecord | None:
    """Send one email with both an HTML and a plain-text part (`text` derived from `html` if absent).

    `secret` names a value (an OTP code) the console transport must never print. The subject is
    put on one line (handlers.values): it is a header, so it may not carry a second one.
    Returns the ledger record, or None when the ledger already shows this email sent.
    """
    scope = direct_scope()
    try:
        address = scope.normalise("email", to)
    except PermanentDeliveryError as exc:
        route = Route(role, "email", template or "direct")  # type: ignore[arg-type]
        return scope.refuse(route, f"{role}:invalid", exc.code or "invalid_email", str(exc))
    return await scope.send(
        Message(
            channel="email",
            recipient=address,
            subject=one_line(subject),  # a header: whatever the caller passes, one line
            html=html,
            text=text if text is not None else html_to_text(html),
            reply_to=reply_to,
            role=role,
            template=template,
            secret=secret,
        )
    )


def html_to_text(html: str) -> str:
    """A readable plain-text part for callers that only have HTML."""
    return _BLANKS.sub("\n\n", html_lib.unescape(_TAG.sub("", html))).strip()


# ---------------------------------------------------------------------- builders (the platform's names)
def get_booking_confirmation_email(booking: Booking, client: Person, performer: Person) -> Rendered:
    """The client's booking confirmation (sent when the deposit is verified)."""
    ctx = MessageContext(booking=booking, client=client, performer=performer)
    return render_email("booking_confirmation", ctx, role="client", name=client.first_name)


def get_otp_email(otp: str, expiry_minutes: int) -> Rendered:
    """The verification-code email; the code appears nowhere else."""
    return render_email("otp", MessageContext(otp_code=otp, expiry_minutes=expiry_minutes), role="requester")


def get_vetting_approval_email(application: Application, approved: bool, notes: str | None) -> Rendered:
    """The applicant's vetting decision, approved or not, with the reviewer's notes."""
    ctx = MessageContext(application=application, approved=approved, notes=notes)
    return render_email(
        "vetting_decision", ctx, role="applicant", name=application.full_name.split(" ", 1)[0]
    )


def render_email(template: str, ctx: MessageContext, *, role: str, name: str = "") -> Rendered:
    return current_templates().render(
        "email", template, ctx.template_vars(), role=role, name=name or "there", recipient=None
    )


# ---------------------------------------------------------------------- senders (the platform's names)
# Each returns the composed emails (`Outgoing`): awaiting it sends them (see handlers.whatsapp).
def send_booking_confirmation_email(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """Booking confirmed (deposit verified)."""
    return send_routes(
        "booking.deposit_verified", MessageContext(booking=booking, client=client, performer=performer)
    )


def send_booking_received_email(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """A new booking request was received."""
    return send_routes("booking.created", MessageContext(booking=booking, client=client, performer=performer))


def send_deposit_instructions_email(booking: Booking, client: Person, performer: Person) -> Outgoing:
    """The booking is approved: how to pay the deposit."""
    return send_routes(
        "booking.approved", MessageContext(booking=booking, client=client, performer=performer)
    )


def send_booking_cancelled_email(
    booking: Booking, client: Person, performer: Person, reason: str | None
) -> Outgoing:
    """The booking was cancelled, with the reason."""
    ctx = MessageContext(booking=booking, client=client, performer=performer, reason=reason)
    return send_routes("booking.cancelled", ctx)


def send_booking_reminder_email(
    booking: Booking, client: Person, performer: Person, hours_until_event: int
) -> Outgoing:
    """Reminder email `hours_until_event` hours before the event."""
    ctx = MessageContext(
        booking=booking, client=client, performer=performer, hours_until_event=hours_until_event
    )
    return send_routes("booking.reminder_due", ctx)


def send_payment_reminder_email(
    booking: Booking, client: Person, performer: Person, outstanding: Decimal
) -> Outgoing:
    """The balance still owed before the event."""
    ctx = MessageContext(booking=booking, client=client, performer=performer, outstanding=outstanding)
    return send_routes("booking.payment_due", ctx)


def send_otp_email(email: str, otp: str, expiry_minutes: int) -> Outgoing:
    """Send a one-time code to `email`."""
    return send_routes(
        "otp.created", MessageContext(otp_email=email, otp_code=otp, expiry_minutes=expiry_minutes)
    )


def send_vetting_approval_email(application: Application, approved: bool, notes: str | None) -> Outgoing:
    """Tell an applicant the vetting decision."""
    return send_routes(
        "vetting.decided", MessageContext(application=application, approved=approved, notes=notes)
    )


def send_routes(kind: str, ctx: MessageContext) -> Outgoing:
    """The emails of `kind`, composed; await the result to send them."""
    return direct_scope().compose(kind, ctx, "email")
