"""Recipients as the console shows them: masked exactly as the logs mask them (core.redaction)."""

from __future__ import annotations

from core.redaction import mask_email, mask_phone, mask_text


def mask_recipient(recipient: str | None) -> str:
    """`ann@example.com` -> `a***@example.com`, `+61400000002` -> `+61*******002`; ledger
    placeholders such as `client:<uuid>` (no address) are shown as they are, minus any address."""
    if not recipient:
        return ""
    if "@" in recipient:
        return mask_email(recipient)
    if recipient.lstrip("+").replace(" ", "").isdigit():
        return mask_phone(recipient)
    return mask_text(recipient)
