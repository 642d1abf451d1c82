"""The WhatsApp command parser: the commands people type, and anything else they might send."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.inbound.commands import WhatsAppCommand, parse_whatsapp_command


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("ACCEPT FE-1001", WhatsAppCommand("accept", "FE-1001")),
        ("accept fe-1001", WhatsAppCommand("accept", "FE-1001")),
        ("  Accept   FE-1001  ", WhatsAppCommand("accept", "FE-1001")),
        ("ACCEPT FE1001", WhatsAppCommand("accept", "FE-1001")),
        ("accept fe 1001.", WhatsAppCommand("accept", "FE-1001")),
        ("Accept #FE-1001!", WhatsAppCommand("accept", "FE-1001")),
        ("accept:FE-1001", WhatsAppCommand("accept", "FE-1001")),
        ("confirm FE-7", WhatsAppCommand("accept", "FE-7")),
        ("ACCEPT\u00a0FE-1001\n", WhatsAppCommand("accept", "FE-1001")),
        ("ACCEPT", WhatsAppCommand("accept", None)),
        ("DECLINE FE-1002", WhatsAppCommand("decline", "FE-1002")),
        ("reject fe-1002", WhatsAppCommand("decline", "FE-1002")),
        ("status", WhatsAppCommand("status", None)),
        ("STATUS FE-0042", WhatsAppCommand("status", "FE-0042")),
        ("Help", WhatsAppCommand("help", None)),
        ("HELP FE-1001", WhatsAppCommand("help", None)),
        ("commands", WhatsAppCommand("help", None)),
    ],
)
def test_commands_people_type(message: str, expected: WhatsAppCommand) -> None:
    assert parse_whatsapp_command(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        "",
        "   ",
        "hello",
        "ACCEPT FE-1001 please, and thanks for the gig",
        "ACCEPT XY-1001",
        "ACCEPTFE-1001",
        "acc\u0435pt FE-1001",  # Cyrillic 'е': a look-alike is not a command
        "\u212aELP",  # Kelvin sign, which Unicode case folding maps to 'k'
        "ACCEPT FE-١٢٣",  # Arabic-Indic digits are not a reference
        "status " + "9" * 100,
        "help" * 30,
    ],
)
def test_anything_else_is_unknown(message: str) -> None:
    assert parse_whatsapp_command(message) == WhatsAppCommand("unknown", None)


def test_input_that_is_not_text_is_unknown() -> None:
    assert parse_whatsapp_command(None).action == "unknown"  # type: ignore[arg-type]
    assert parse_whatsapp_command(b"ACCEPT FE-1").action == "unknown"  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.text())
def test_never_raises_on_any_text(message: str) -> None:
    command = parse_whatsapp_command(message)
    assert command.action in {"accept", "decline", "status", "help", "unknown"}
    if command.reference is not None:
        assert command.reference.startswith("FE-")
        assert command.reference[3:].isascii() and command.reference[3:].isdigit()


@given(
    verb=st.sampled_from(["accept", "decline", "status"]),
    number=st.integers(min_value=1, max_value=10**9),
    case=st.sampled_from([str.upper, str.lower, str.title]),
    before=st.sampled_from(["", " ", "\t", "\n ", "\u2003"]),
    gap=st.sampled_from([" ", "  ", "\t", " \u00a0"]),
    after=st.sampled_from(["", " ", ".", "!", " \n"]),
)
def test_case_and_whitespace_do_not_matter(
    verb: str, number: int, case: object, before: str, gap: str, after: str
) -> None:
    message = f"{before}{case(verb)}{gap}{case('fe')}-{number}{after}"  # type: ignore[operator]
    command = parse_whatsapp_command(message)
    assert command == WhatsAppCommand(verb, f"FE-{number}")  # type: ignore[arg-type]
