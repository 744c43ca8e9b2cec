"""PIN verification the way issuers do it: the IBM 3624 PIN offset method.

The issuer keeps, per card, only an *offset*: the digit-wise difference (mod 10) between the
cardholder's PIN and the card's "natural PIN", which is the card's validation data encrypted
under the PIN verification key (PVK, double-length 3DES) and decimalised. Without the PVK every
PIN of the right length is equally consistent with a stored offset: the card table alone
reveals nothing, unlike a hash of a 4-6 digit PIN, which falls to brute force in minutes.
"""

from __future__ import annotations

import hmac

from tillroll.crypto import des

# IBM's usual decimalisation table: hex digit i of the encrypted block becomes DECIMALISATION[i].
DECIMALISATION = "0123456789012345"
PIN_LEN_MIN, PIN_LEN_MAX = 4, 12


class PinOffsetError(ValueError):
    pass


def validation_data(pan: str) -> str:
    """16 hex digits identifying the card: the account number (the PAN without its check
    digit), its last 16 digits, left-padded with zeros."""
    if not (pan.isdigit() and 13 <= len(pan) <= 19):
        raise PinOffsetError("card number must be 13 to 19 digits")
    return pan[:-1][-16:].rjust(16, "0")


def natural_pin(pvk: bytes, data: str, length: int, table: str = DECIMALISATION) -> str:
    """The first `length` digits of `data` (16 hex digits) encrypted under the PVK, decimalised."""
    if len(pvk) != 16:
        raise PinOffsetError("the PVK must be a double-length (16-byte) 3DES key")
    if not PIN_LEN_MIN <= length <= PIN_LEN_MAX:
        raise PinOffsetError(f"PIN must be {PIN_LEN_MIN} to {PIN_LEN_MAX} digits")
    if len(table) != 16 or not table.isdigit():
        raise PinOffsetError("the decimalisation table must be 16 digits")
    block = des.encrypt(pvk, bytes.fromhex(data)).hex().upper()
    return "".join(table[int(c, 16)] for c in block[:length])


def _check_pin(pin: str) -> None:
    if not (pin.isdigit() and PIN_LEN_MIN <= len(pin) <= PIN_LEN_MAX):
        raise PinOffsetError(f"PIN must be {PIN_LEN_MIN} to {PIN_LEN_MAX} digits")


def pin_offset(pvk: bytes, data: str, pin: str, table: str = DECIMALISATION) -> str:
    """The offset to store for `pin`: (PIN - natural PIN) mod 10, digit by digit."""
    _check_pin(pin)
    natural = natural_pin(pvk, data, len(pin), table)
    return "".join(str((int(p) - int(n)) % 10) for p, n in zip(pin, natural, strict=True))


def pin_matches(pvk: bytes, data: str, offset: str, pin: str, table: str = DECIMALISATION) -> bool:
    """Whether `pin` is the PIN whose offset was stored (its length is part of the offset)."""
    if not (pin.isdigit() and len(pin) == len(offset) and PIN_LEN_MIN <= len(pin) <= PIN_LEN_MAX):
        return False
    natural = natural_pin(pvk, data, len(pin), table)
    expected = "".join(str((int(n) + int(o)) % 10) for n, o in zip(natural, offset, strict=True))
    return hmac.compare_digest(expected, pin)  # constant time: no timing hint digit by digit
