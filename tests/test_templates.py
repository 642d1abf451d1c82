"""Message wording: escaping, both email parts, amounts in AUD, times in the booking's zone."""

from __future__ import annotations

from decimal import Decimal

import pytest
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from handlers.delivery import install_dispatcher
from handlers.email import get_booking_confirmation_email, get_otp_email, get_vetting_approval_email
from handlers.models import MessageContext
from handlers.rendering import TEMPLATE_DIR, Templates, aud
from tests.samples import application, booking, client, null_dispatcher, performer


@pytest.fixture(autouse=True)
def dispatcher() -> None:
    install_dispatcher(null_dispatcher())


def test_html_escapes_every_value_and_text_keeps_it_readable() -> None:
    evil = client(full_name="<script>alert(1)</script> Smith", name="<script>alert(1)</script> Smith")
    email = get_booking_confirmation_email(
        booking(venue="<b>Hall</b> & Co"), evil, performer(name="<i>Nova</i>")
    )
    assert "<script>" not in email.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert "&lt;b&gt;Hall&lt;/b&gt; &amp; Co" in email.html and "&lt;i&gt;Nova&lt;/i&gt;" in email.html
    assert "<script>alert(1)</script>" in email.text  # plain text is not HTML: shown as typed
    assert email.subject == "Booking confirmed: FE-1001"


def test_amounts_are_aud_with_two_decimals_and_times_local_to_the_booking() -> None:
    email = get_booking_confirmation_email(booking(), client(), performer())
    assert "$1,234.50 AUD" in email.text and "$1,034.50 AUD" in email.text  # total and balance
    assert "Saturday 14 March 2026, 7:30 pm AEDT" in email.text
    perth = get_booking_confirmation_email(booking(timezone="Australia/Perth"), client(), performer())
    assert "Saturday 14 March 2026, 4:30 pm AWST" in perth.text
    assert aud(Decimal("5")) == "$5.00 AUD" and aud(None) == "$0.00 AUD"


def test_links_use_the_app_url() -> None:
    rendered = Templates("https://book.example.com/").render(
        "whatsapp",
        "booking_created_client",
        {"booking": booking(), "client": client(), "performer": performer(), "name": "Ann", "role": "client"},
    )
    assert "https://book.example.com/bookings/7d0c1a52-0000-4000-8000-000000000001" in rendered.text


def test_otp_email_has_the_code_and_expiry_in_both_parts() -> None:
    email = get_otp_email("482913", 10)
    assert "482913" in email.html and "482913" in email.text and "10 minutes" in email.text


@pytest.mark.parametrize("approved", [True, False])
def test_vetting_email_says_the_decision_with_notes(approved: bool) -> None:
    email = get_vetting_approval_email(application(), approved, "Bring <ID> next time")
    assert ("approved" in email.subject) is approved
    assert "Bring &lt;ID&gt; next time" in email.html and "Bring <ID> next time" in email.text


MESSAGE_TEMPLATES = sorted(
    str(path.relative_to(TEMPLATE_DIR)) for path in TEMPLATE_DIR.rglob("*.*") if not path.name.startswith("_")
)


@pytest.mark.parametrize("path", MESSAGE_TEMPLATES)
@pytest.mark.parametrize(("role", "approved"), [("client", True), ("performer", False), ("admin", True)])
def test_inlined_templates_render_exactly_as_jinja_would(path: str, role: str, approved: bool) -> None:
    """Layouts and includes are inlined at load time (speed); the words must not change."""

    def plain(autoescape: bool) -> Environment:
        env = Environment(
            loader=FileSystemLoader(TEMPLATE_DIR),
            autoescape=autoescape,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["aud"] = aud
        return env

    ctx = MessageContext(
        booking=booking(venue="<b>Hall</b>"),
        client=client(),
        performer=performer(),
        reason="Storm & rain",
        hours_until_event=24,
        outstanding=Decimal("600"),
        otp_code="482913",
        expiry_minutes=10,
        application=application(),
        approved=approved,
        notes="Bring <ID>",
    )
    values = {
        **ctx.template_vars(),
        "role": role,
        "name": "Ann",
        "recipient": None,
        "app_url": "https://x.example",
    }
    expected = plain(path.endswith(".html")).get_template(path).render(values)
    assert Templates("https://x.example")._render(path, values) == expected


def test_builders_work_in_a_plain_script_without_a_router() -> None:
    """The platform's get_*_email builders are usable on their own (no daemon, no router)."""
    import os
    import subprocess
    import sys

    script = (
        "from handlers.email import get_otp_email\n"
        "r = get_otp_email('493817', 10)\n"
        "print(r.subject); print('493817' in r.html and '493817' in r.text)\n"
        "print('https://app.example.test' in r.html)\n"
    )
    env = {**os.environ, "NEXT_PUBLIC_APP_URL": "https://app.example.test"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    subject, has_code, has_link = result.stdout.strip().splitlines()
    assert "verification code" in subject.lower()
    assert (has_code, has_link) == ("True", "True")
