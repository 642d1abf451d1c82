"""Masking of personal data and secrets, applied to every log line.

The redaction processor sits in the one structlog pipeline that both our own loggers and
third-party stdlib loggers go through, so no line can bypass it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***"

#: Keys whose values are never shown at all.
_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|api_key|apikey|authorization|auth|signature|code|otp)$",
    re.IGNORECASE,
)
#: Keys that hold a phone number or an email address; their values are masked.
_CONTACT_KEYS = re.compile(r"(phone|email|to|from|recipient|whatsapp|sender)$", re.IGNORECASE)

_EMAIL = re.compile(r"(?<![\w.+-])([\w.+-])[\w.+-]*@([\w-]+(?:\.[\w-]+)+)")
# An E.164 number, a national one starting with 0, or a bare run of 9-15 digits (an E.164
# number without its +), not glued to letters or hyphens, so uuids and timestamps stay readable.
_PHONE = re.compile(
    r"(?<![\w-])(?:whatsapp:)?((?:\+|0)\d(?:[ -]?\d){6,14}|[1-9]\d{8,14})(?![\w-])"
)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
_BEARER = re.compile(r"((?:Bearer|Basic)\s+)\S+", re.IGNORECASE)
_ASSIGNED_SECRET = re.compile(
    r"((?:token|secret|password|passwd|api_key|apikey|auth_token)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;]+",
    re.IGNORECASE,
)
#: The configured secrets themselves (auth token, API key, cron secret, database password):
#: masked wherever they appear, whatever logged them.
_known_secrets: tuple[str, ...] = ()


def error_first_line(exc: BaseException) -> str:
    """An error's message without the lines after its first: a database error's DETAIL quotes
    the refused row's values (names, addresses, message text). Its type's name if it has none."""
    return str(exc).partition("\n")[0] or type(exc).__name__


def register_secrets(values: Iterable[str]) -> None:
    """Remember the literal secret values to mask (short ones would mask ordinary words)."""
    global _known_secrets
    _known_secrets = tuple(sorted({v for v in values if v and len(v) >= 6}, key=len, reverse=True))


def mask_email(address: str) -> str:
    """`jane.doe@example.com` -> `j***@example.com`: enough to tell recipients apart."""
    return _EMAIL.sub(_masked_email, address)


def _masked_email(match: re.Match[str]) -> str:
    return f"{match.group(1)}***@{match.group(2)}"


def mask_phone(number: str) -> str:
    """Keep the country prefix and the last three digits: `+61400000002` -> `+61******002`."""
    digits = re.sub(r"\D", "", number)
    if len(digits) < 6:
        return REDACTED
    international = number.strip().removeprefix("whatsapp:").startswith("+")
    kept = 2 if international else 1
    sign = "+" if international else ""
    return f"{sign}{digits[:kept]}{'*' * (len(digits) - kept - 3)}{digits[-3:]}"


def mask_text(text: str) -> str:
    """Mask every email address, phone number, URL password and bearer token in free text."""
    for secret in _known_secrets:
        text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    text = _ASSIGNED_SECRET.sub(r"\1" + REDACTED, text)
    text = mask_email(text)
    return _PHONE.sub(lambda m: mask_phone(m.group(1)), text)


def redact_value(key: str, value: Any) -> Any:
    """Redact one value by what its key says it is, then by what it looks like."""
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(key, v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    # The key decides first: `code=123456` is an OTP whatever its type.
    if _SECRET_KEYS.search(key) and key not in {"error_code", "status_code", "exit_code"}:
        return REDACTED
    if isinstance(value, (int, float)) and not _CONTACT_KEYS.search(key):
        return value
    text = value if isinstance(value, str) else str(value)
    if _CONTACT_KEYS.search(key):
        return mask_email(text) if "@" in text else mask_phone(text)
    return mask_text(text)


def redact_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: redact every key of the event, including the message itself."""
    return {key: redact_value(key, value) for key, value in event_dict.items()}
