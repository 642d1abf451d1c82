"""Every message of the routing table, in every branch of its template, as people read it.

Each routed kind is composed through the real path (`DeliveryScope.compose`: recipients, opt-outs,
templates) for each branch its templates take (approved/rejected, with and without notes and a
stage name, a reason or none, sparse rows, large and zero amounts, opted-out parties), and every
message is checked the way its reader sees it: a subject is one line of its own, the body opens
with its greeting, nothing is left unrendered, and an email's HTML and text parts state the same
facts and links.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator
from decimal import Decimal

import pytest

from handlers.delivery import DeliveryScope, Message, install_dispatcher
from handlers.email import get_booking_confirmation_email, get_otp_email, get_vetting_approval_email
from handlers.models import MessageContext
from handlers.rendering import Rendered, aud
from handlers.routing import ROUTES
from tests.samples import application, booking, client, null_dispatcher, performer

#: Booking rows as the app may hold them: complete, sparse (no venue, no event type, a performer
#: known by stage name only, nothing paid), large amounts, fully paid, and a client opted out.
BOOKING_BRANCHES = {
    "complete": (booking(), client(), performer()),
    "sparse": (
        booking(venue=None, event_type=None, amount_paid=Decimal(0)),
        client(),
        performer(full_name=None),
    ),
    "large_amounts": (
        booking(total_amount=Decimal("1234567.89"), deposit_amount=Decimal("250000"), amount_paid=Decimal(0)),
        client(),
        performer(),
    ),
    "paid_up": (booking(amount_paid=Decimal("1234.5")), client(), performer()),
    "client_opted_out": (booking(), client(whatsapp_opt_in=False, email_opt_in=False), performer()),
}


def cases() -> Iterator[tuple[str, str, MessageContext]]:
    """(id, kind, context) for every routed kind and every branch of its templates."""
    for kind in ROUTES:
        if kind == "otp.created":
            yield (
                kind,
                kind,
                MessageContext(otp_email="sam@example.com", otp_code="482913", expiry_minutes=10),
            )
        elif kind == "vetting.decided":
            for approved in (True, False):
                for notes in ("Bring <ID> & music next time", None):
                    for stage in ("Lee Star", None):
                        ctx = MessageContext(
                            application=application(stage_name=stage, review_notes=notes),
                            approved=approved,
                            notes=notes,
                        )
                        yield f"{kind}-approved={approved}-notes={bool(notes)}-stage={bool(stage)}", kind, ctx
        else:
            for branch, (b, c, p) in BOOKING_BRANCHES.items():
                for reason in ("Venue closed by council", None) if kind == "booking.cancelled" else (None,):
                    ctx = MessageContext(
                        booking=b,
                        client=c,
                        performer=p,
                        reason=reason,
                        hours_until_event=24,
                        outstanding=b.outstanding,
                    )
                    yield f"{kind}-{branch}-reason={bool(reason)}", kind, ctx


CASES = list(cases())


def composed(kind: str, ctx: MessageContext) -> list[Message]:
    """The messages the router would send for `kind`, composed but not sent."""
    scope = DeliveryScope(null_dispatcher(), 1)
    return scope.compose(kind, ctx).messages


def facts(ctx: MessageContext) -> list[str]:
    """The values from the rows that a reader must find wherever the message states them."""
    values: list[str | None] = [ctx.reason, ctx.notes, ctx.otp_code]
    if ctx.booking is not None:
        b = ctx.booking
        values += [b.reference, b.starts, b.venue, b.event_type, aud(b.total_amount)]
        values += [aud(b.deposit_amount), aud(b.amount_paid), aud(b.outstanding)]
    if ctx.client is not None and ctx.performer is not None:
        values += [ctx.client.full_name, ctx.performer.name]
    if ctx.application is not None:
        values.append(ctx.application.stage_name)
    return [value for value in values if value]


def links(text: str) -> set[str]:
    return set(re.findall(r"https?://[^\s\"<>]+", text))


def assert_reads_well(rendered: Rendered | Message, channel: str, greeting: str | None) -> None:
    """One message, as its reader sees it (`greeting`: how it must open, None if it has none)."""
    parts = [rendered.text, rendered.subject or "", rendered.html or ""]
    for part in parts:
        for leftover in ("{{", "}}", "{%", "%}", "{#", "None"):
            assert leftover not in part, (leftover, part)
    if channel in ("email", "in_app"):
        subject = rendered.subject or ""
        assert subject and subject == subject.strip() and "\n" not in subject and "\r" not in subject
        assert not subject.startswith("Hi ") and "Hi " not in subject, subject
        first_line = rendered.text.splitlines()[0]
        assert first_line not in subject, (subject, first_line)
    if greeting is not None:
        assert rendered.text.startswith(greeting), rendered.text[:80]
    if channel == "email":
        assert rendered.html is not None
        html_text = html_lib.unescape(rendered.html)
        if greeting is not None:
            first_paragraph = re.search(r"<p>(.*?)</p>", html_text)
            assert first_paragraph is not None and first_paragraph.group(1) == greeting


def assert_parts_agree(rendered: Rendered | Message, ctx: MessageContext, app_url: str) -> None:
    """An email's HTML and text parts state the same facts and offer the same links."""
    assert rendered.html is not None
    html_text = html_lib.unescape(rendered.html)
    for fact in facts(ctx):
        assert (fact in rendered.text) == (fact in html_text), fact
    assert links(rendered.text) == links(html_text) - {app_url}


def greeting_of(message: Message, ctx: MessageContext) -> str | None:
    """Messages to a named person open with "Hi <first name>,"; admin alerts, OTP codes and
    in-app rows (titled in the app's own inbox) do not greet."""
    if message.channel == "in_app" or message.role in ("admin", "requester"):
        return None
    if message.role == "applicant":
        assert ctx.application is not None
        return f"Hi {ctx.application.full_name.split(' ', 1)[0]},"
    person = getattr(ctx, str(message.role))
    return f"Hi {person.first_name},"


@pytest.mark.parametrize(("kind", "ctx"), [(kind, ctx) for _, kind, ctx in CASES], ids=[c[0] for c in CASES])
def test_every_routed_message_reads_well_in_every_branch(kind: str, ctx: MessageContext) -> None:
    messages = composed(kind, ctx)
    opted_out = {
        (role, channel)
        for role in ("client", "performer")
        if (person := getattr(ctx, role)) is not None
        for channel, opted_in in (("whatsapp", person.whatsapp_opt_in), ("email", person.email_opt_in))
        if not opted_in
    }
    expected = [(r.role, r.channel, r.template) for r in ROUTES[kind] if (r.role, r.channel) not in opted_out]
    assert [(m.role, m.channel, m.template) for m in messages] == expected
    app_url = null_dispatcher().templates.app_url
    for message in messages:
        assert_reads_well(message, message.channel, greeting_of(message, ctx))
        if message.channel == "email":
            assert_parts_agree(message, ctx, app_url)


@pytest.mark.parametrize("approved", [True, False])
@pytest.mark.parametrize("notes", ["Bring <ID> next time", None])
@pytest.mark.parametrize("stage", ["Lee Star", None])
def test_the_email_builders_read_well(approved: bool, notes: str | None, stage: str | None) -> None:
    """The platform's get_*_email builders give what the routed emails give."""
    install_dispatcher(null_dispatcher())
    app_url = null_dispatcher().templates.app_url
    vetting = get_vetting_approval_email(application(stage_name=stage), approved, notes)
    ctx = MessageContext(application=application(stage_name=stage), approved=approved, notes=notes)
    assert_reads_well(vetting, "email", "Hi Lee,")
    assert_parts_agree(vetting, ctx, app_url)
    assert vetting.subject is not None and ("approved" in vetting.subject) is approved

    confirmation = get_booking_confirmation_email(booking(), client(), performer())
    assert_reads_well(confirmation, "email", "Hi Ann,")
    assert_parts_agree(
        confirmation, MessageContext(booking=booking(), client=client(), performer=performer()), app_url
    )

    otp = get_otp_email("482913", 10)
    assert_reads_well(otp, "email", None)
    assert_parts_agree(otp, MessageContext(otp_code="482913"), app_url)
