"""Parsing of the commands people send to the platform's WhatsApp number.

Pure text in, structured command out: what a command *does* lives in `handlers.inbound`.
Whatever arrives (emoji, empty bodies, other scripts, megabytes of junk) the parser answers
with a command, `unknown` at worst, so a webhook never fails on a message's content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

CommandAction = Literal["accept", "decline", "status", "help", "unknown"]

#: The words each command answers to (the first word of the message, any case).
_VERBS: dict[str, CommandAction] = {
    "accept": "accept",
    "confirm": "accept",
    "decline": "decline",
    "reject": "decline",
    "status": "status",
    "help": "help",
    "commands": "help",
}

#: Longer messages are not commands; checking the length first keeps the regex cheap.
_MAX_COMMAND_LENGTH = 80

# A verb, then optionally a booking reference ("FE-1001", "fe 1001", "FE1001", "#FE-1001"),
# then optional closing punctuation. ASCII-only matching: a look-alike letter is not a command.
_COMMAND = re.compile(
    r"(?P<verb>[a-z]+)"
    r"(?:[ :]+#?(?P<prefix>fe) ?-? ?(?P<number>[0-9]{1,12}))?"
    r" ?[.!]*",
    re.IGNORECASE | re.ASCII,
)


@dataclass(frozen=True, slots=True)
class WhatsAppCommand:
    """What a message asks for; `reference` is a booking reference in upper case, e.g. `FE-1001`."""

    action: CommandAction
    reference: str | None = None


UNKNOWN = WhatsAppCommand("unknown")


def parse_whatsapp_command(message: str) -> WhatsAppCommand:
    """Read `ACCEPT FE-1001`, `decline fe-1001`, `STATUS`, `help` and the like; never raises.

    ACCEPT and DECLINE without a reference come back with `reference=None` (the caller asks
    for one); STATUS takes an optional reference; anything else is `unknown`.
    """
    if not isinstance(message, str):
        return UNKNOWN
    # Collapse every kind of Unicode whitespace to single ASCII spaces before matching.
    text = " ".join(message.split())
    if not text or len(text) > _MAX_COMMAND_LENGTH:
        return UNKNOWN
    match = _COMMAND.fullmatch(text)
    if match is None:
        return UNKNOWN
    action = _VERBS.get(match["verb"].lower(), "unknown")
    if action == "unknown":
        return UNKNOWN
    reference = f"FE-{match['number']}" if match["number"] else None
    if action == "help":
        return WhatsAppCommand("help")
    return WhatsAppCommand(action, reference)
