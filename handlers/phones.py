"""Phone numbers in the one form Twilio accepts and the ledger stores: E.164.

The booking app stores numbers as people type them ("0400 000 002"); everything that sends to or
matches a number goes through `to_e164` so the same person always has the same key.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from handlers.contract import PermanentDeliveryError


@lru_cache(maxsize=4096)
def to_e164(raw: str, region: str) -> str:
    """Return `raw` as "+<country><number>", reading national numbers in `region` (e.g. "AU").

    A leading "whatsapp:" prefix is accepted. Unparseable or invalid input raises
    `PermanentDeliveryError(code="invalid_number")`: retrying cannot fix a bad number.
    """
    text = (raw or "").strip()
    if text.lower().startswith("whatsapp:"):
        text = text[len("whatsapp:") :].strip()
    if not text:
        raise PermanentDeliveryError("no phone number", code="invalid_number")
    try:
        parsed = phonenumbers.parse(text, region.upper() if region else None)
    except phonenumbers.NumberParseException as exc:
        raise PermanentDeliveryError(f"unparseable phone number: {exc}", code="invalid_number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise PermanentDeliveryError("invalid phone number", code="invalid_number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
