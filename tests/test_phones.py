"""E.164 normalisation: the key for sending to and matching WhatsApp numbers."""

import pytest

from handlers.contract import PermanentDeliveryError
from handlers.phones import to_e164


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("0400 000 002", "AU", "+61400000002"),
        ("+61 400 000 002", "AU", "+61400000002"),
        ("whatsapp:+61400000002", "AU", "+61400000002"),
        ("(02) 9374 4000", "AU", "+61293744000"),
        ("+1 415 523 8886", "AU", "+14155238886"),
        ("415-523-8886", "us", "+14155238886"),
    ],
)
def test_numbers_become_e164(raw: str, region: str, expected: str) -> None:
    assert to_e164(raw, region) == expected


@pytest.mark.parametrize("raw", ["", "   ", "abc", "123", "0400", "+999 1234 5678", "whatsapp:"])
def test_bad_numbers_are_permanent_invalid_number(raw: str) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        to_e164(raw, "AU")
    assert info.value.code == "invalid_number"
