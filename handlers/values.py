"""Free text from the app's rows, made fit to go into a message: on one line, and bounded.

The booking app stores what people typed, so a name, a venue or a reason can hold anything.
A message must keep its own shape whatever they hold:

* A line break in a value would add lines of the sender's choosing: a client named
  "Ann\\r\\nBcc: evil@example.net" would put a line of its own into the admin's WhatsApp alert,
  and a break in a value used in an email subject would move the rest of the subject into the body.
  Control characters (NUL, ESC, bidi overrides that reorder what the reader sees) have no place
  in a message either. `one_line` collapses every run of them, with any whitespace, to one space;
  the models apply it to every free-text field when they are built (`handlers.models`), so every
  channel gets clean values.
* Twilio refuses a WhatsApp body over 1,600 characters for good (error 21617): a venue pasted as
  100 KB would lose the admin's and the performer's messages. `shorten` cuts each value to the
  length of its field in `WHATSAPP_LIMITS`, with an ellipsis, BEFORE the message is rendered, so
  what gets cut is the long value and never the message's own wording (its links, its commands).
* Twilio Content-template variables have limits of their own (`template_variable`).

HTML escaping is not done here: Jinja autoescapes every value of the HTML email templates.
"""

from __future__ import annotations

import re
from typing import overload

#: Any run of whitespace (which, in a `str` pattern, includes \r, \n, \x85, \u2028 and \u2029),
#: C0 and C1 control characters, and the bidirectional embedding/override/isolate controls.
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+")

ELLIPSIS = "…"

#: The longest each free-text field of a row may be in a WhatsApp message (in characters; an
#: ellipsis ends a cut value). With every field at its limit, even in characters Twilio counts
#: twice (outside the Basic Multilingual Plane), the longest template stays well under 1,600
#: characters (tests/test_values.py checks every template).
WHATSAPP_LIMITS: dict[str, int] = {
    "name": 60,  # a person's display name (a performer's stage name)
    "full_name": 60,
    "stage_name": 60,
    "reference": 40,  # "FE-1001"; cut only when a row is absurd
    "event_type": 60,
    "venue": 150,
    "cancellation_reason": 300,
    "reason": 300,
    "review_notes": 300,
    "notes": 300,
}

#: Twilio refuses Content variable values over 256 characters (error 50541), and WhatsApp refuses
#: template parameters holding a line break; stay a little under.
TEMPLATE_VARIABLE_LIMIT = 250


@overload
def one_line(value: str) -> str: ...
@overload
def one_line(value: None) -> None: ...
def one_line(value: str | None) -> str | None:
    """`value` on one line: every run of whitespace and control characters becomes one space,
    and none is left at either end. None stays None (an absent value is not an empty one)."""
    if value is None:
        return None
    # The usual value has nothing to change; say so without building a new string. Every
    # character `_BREAKS` matches but the plain space is one `isprintable()` refuses.
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        return value
    return _BREAKS.sub(" ", value).strip()


@overload
def shorten(value: str, limit: int) -> str: ...
@overload
def shorten(value: None, limit: int) -> None: ...
def shorten(value: str | None, limit: int) -> str | None:
    """`value` if it has at most `limit` characters, else its start and an ellipsis, `limit`
    characters in all (so a reader sees that something was cut)."""
    if value is None or len(value) <= limit:
        return value
    return value[: limit - len(ELLIPSIS)].rstrip() + ELLIPSIS


def template_variable(value: str) -> str:
    """A Twilio Content-template variable: on one line and within Twilio's length."""
    return shorten(one_line(value), TEMPLATE_VARIABLE_LIMIT)
