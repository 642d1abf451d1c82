"""Values from the app's rows in messages: on one line, bounded, and never the message's undoing."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.contract import PermanentDeliveryError
from handlers.delivery import DeliveryScope
from handlers.models import MessageContext, Person
from handlers.routing import ROUTES
from handlers.values import (
    ELLIPSIS,
    TEMPLATE_VARIABLE_LIMIT,
    WHATSAPP_LIMITS,
    one_line,
    shorten,
    template_variable,
)
from tests.samples import application, booking, client, null_dispatcher, performer

TWILIO_MAX_BODY = 1600
#: Characters that reorder what a reader sees (bidi embeddings, overrides and isolates).
BIDI_CONTROLS = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}


def is_break(char: str) -> bool:
    """What may not stay in a one-line value, judged by Unicode's own data."""
    return char.isspace() or unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS


def utf16_length(text: str) -> int:
    """Length as the strictest reading of Twilio's limit counts it (an emoji counts twice)."""
    return len(text.encode("utf-16-le")) // 2


#: Text with what people (and attackers) put into rows: line breaks of every kind, controls, tabs.
ROW_TEXT = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(
            ["\r\n", "\n", "\r", "\t", "\x00", "\x1b", "\x85", "\u2028", "\u2029", "\u202e", " "]
        ),
    )
).map("".join)


@settings(max_examples=500)
@given(ROW_TEXT)
def test_one_line_leaves_one_line_of_the_same_words(value: str) -> None:
    result = one_line(value)
    assert not any(is_break(c) for c in result if c != " ")
    assert "  " not in result and result == result.strip()
    # Nothing but the breaks is lost, and nothing is reordered.
    assert [c for c in value if not is_break(c)] == [c for c in result if c != " "]
    assert one_line(result) == result


@settings(max_examples=500)
@given(ROW_TEXT, st.integers(min_value=2, max_value=400))
def test_shorten_cuts_only_what_is_too_long_and_says_so(value: str, limit: int) -> None:
    result = shorten(value, limit)
    assert len(result) <= limit
    if len(value) <= limit:
        assert result == value
    else:
        assert result.endswith(ELLIPSIS) and value.startswith(result.removesuffix(ELLIPSIS))


#: Row text with what the records' all-at-once check joins on and looks for: "|" and spaces.
FIELD_TEXT = st.one_of(
    st.none(), ROW_TEXT, st.lists(st.sampled_from(["a", " ", "|", "b", "\n"]), max_size=8).map("".join)
)


@settings(max_examples=500)
@given(FIELD_TEXT, FIELD_TEXT, FIELD_TEXT, FIELD_TEXT)
def test_a_record_holds_each_free_text_value_as_one_line_makes_it(
    name: str | None, full_name: str | None, reason: str | None, notes: str | None
) -> None:
    """Records check all their free-text values at once (the hot path), then field by field:
    the same values as `one_line` gives each, and long ones cut for WhatsApp as `shorten` would."""
    person = Person(id="p1", name=name or "", full_name=full_name, email=None, phone=None)
    assert (person.name, person.full_name) == (one_line(name or ""), one_line(full_name))
    ctx = MessageContext(client=person, reason=(reason or "") * 40, notes=notes)
    assert (ctx.reason, ctx.notes) == (one_line((reason or "") * 40), one_line(notes))
    view = ctx.for_whatsapp()
    assert view.reason == shorten(ctx.reason, WHATSAPP_LIMITS["reason"])
    assert view.client is not None and view.client.name == shorten(person.name, WHATSAPP_LIMITS["name"])
    # Fields of different limits in one record (a reference is cut sooner than a venue).
    row = booking(reference=(name or "") * 3, venue=(notes or "") * 20)
    assert (row.reference, row.venue) == (one_line((name or "") * 3), one_line((notes or "") * 20))
    cut = MessageContext(booking=row).for_whatsapp().booking
    assert cut is not None
    assert cut.reference == shorten(row.reference, WHATSAPP_LIMITS["reference"])
    assert cut.venue == shorten(row.venue, WHATSAPP_LIMITS["venue"])


@given(ROW_TEXT)
def test_a_template_variable_is_one_line_within_twilios_limit(value: str) -> None:
    result = template_variable(value)
    assert "\n" not in result and "\t" not in result and len(result) <= TEMPLATE_VARIABLE_LIMIT


def test_absent_values_stay_absent() -> None:
    assert one_line(None) is None and shorten(None, 10) is None


#: A value far over any limit, in characters that count twice against Twilio's 1,600.
HUGE = "\U0001d11e" * 100_000  # MUSICAL SYMBOL G CLEF
WHATSAPP_KINDS = [kind for kind, routes in ROUTES.items() if any(r.channel == "whatsapp" for r in routes)]


@pytest.mark.parametrize("kind", WHATSAPP_KINDS)
def test_every_whatsapp_body_fits_twilio_with_every_value_at_its_longest(kind: str) -> None:
    """Every free-text field of every row is huge, and the app URL is long: the body still fits,
    the long values are cut, and the message's own link survives whole."""
    app_url = "https://bookings.flavor-entertainers.example.com.au/" + "a" * 60
    huge_booking = booking(
        reference=HUGE, event_type=HUGE, venue=HUGE, cancellation_reason=HUGE, status="deposit_verified"
    )
    ctx = MessageContext(
        booking=huge_booking,
        client=client(name=HUGE, full_name=HUGE),
        performer=performer(name=HUGE, full_name=HUGE),
        reason=HUGE,
        hours_until_event=24,
        outstanding=huge_booking.outstanding,
        application=application(full_name=HUGE, stage_name=HUGE, review_notes=HUGE),
        notes=HUGE,
    )
    scope = DeliveryScope(null_dispatcher(next_public_app_url=app_url), 1)
    messages = scope.compose(kind, ctx, "whatsapp").messages
    assert messages
    for message in messages:
        assert utf16_length(message.text) <= TWILIO_MAX_BODY, (message.template, utf16_length(message.text))
        assert ELLIPSIS in message.text
        if "http" in message.text:
            assert f"{app_url}/" in message.text


@pytest.mark.parametrize(
    "address",
    [
        "ann@example.com\r\nBcc: evil@example.net",
        "ann@example.com\nbcc:evil@example.net",
        "ann@exa\x00mple.com",
    ],
)
def test_an_email_address_with_a_line_break_or_control_is_refused(address: str) -> None:
    """An address is also a header: one that could carry another header is not an address."""
    with pytest.raises(PermanentDeliveryError) as refused:
        DeliveryScope(null_dispatcher()).normalise("email", address)
    assert refused.value.code == "invalid_email"
