"""IBM 3624 PIN offsets, checked against published vectors (the `psec` library's tests:
PVK 0123456789ABCDEFFEDCBA9876543210, decimalisation table 1234567890123456, validation data
1122334455667788)."""

from __future__ import annotations

import pytest

from tillroll.crypto.pin_offset import PinOffsetError, natural_pin, pin_matches, pin_offset, validation_data

PVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TABLE = "1234567890123456"
DATA = "1122334455667788"


@pytest.mark.parametrize(
    ("pin", "offset"),
    [("4524", "0000"), ("5635", "1111"), ("0000", "6586"), ("1111", "7697"), ("1234", "7710")],
)
def test_published_ibm3624_vectors(pin: str, offset: str) -> None:
    assert natural_pin(PVK, DATA, 4, TABLE) == "4524"
    assert pin_offset(PVK, DATA, pin, TABLE) == offset
    assert pin_matches(PVK, DATA, offset, pin, TABLE)


def test_only_the_pin_matches_its_offset() -> None:
    data = validation_data("6222021234567890123")
    offset = pin_offset(PVK, data, "123456")
    assert pin_matches(PVK, data, offset, "123456")
    assert not pin_matches(PVK, data, offset, "123457")
    assert not pin_matches(PVK, data, offset, "1234")  # the length is part of the offset
    assert not pin_matches(bytes(16), data, offset, "123456")  # another PVK


def test_validation_data_is_the_account_number() -> None:
    assert validation_data("6222021234567890123") == "2202123456789012"  # no check digit
    assert validation_data("4000001234562") == "0000400000123456"
    with pytest.raises(PinOffsetError):
        validation_data("12345")
    with pytest.raises(PinOffsetError):
        pin_offset(PVK, DATA, "12a4")
