"""ISO 9564 format 0 PIN blocks."""

from __future__ import annotations

from tillroll.crypto import des


class PinBlockError(ValueError):
    pass


def _pan_part(pan: str) -> bytes:
    digits = pan[:-1][-12:].rjust(12, "0")
    return bytes.fromhex("0000" + digits)


def clear_pin_block(pin: str, pan: str) -> bytes:
    if not (pin.isdigit() and 4 <= len(pin) <= 12):
        raise PinBlockError("PIN must be 4 to 12 digits")
    pin_part = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    return bytes(a ^ b for a, b in zip(pin_part, _pan_part(pan), strict=True))


def encrypt_pin_block(pik: bytes, pin: str, pan: str) -> bytes:
    return des.encrypt(pik, clear_pin_block(pin, pan))


def decrypt_pin(pik: bytes, pin_block: bytes, pan: str) -> str:
    """Recover the PIN from an encrypted format-0 block; raises PinBlockError if malformed."""
    if len(pin_block) != 8:
        raise PinBlockError(f"PIN block must be 8 bytes, got {len(pin_block)}")
    clear = des.decrypt(pik, pin_block)
    pin_part = bytes(a ^ b for a, b in zip(clear, _pan_part(pan), strict=True)).hex().upper()
    if pin_part[0] != "0":
        raise PinBlockError("PIN block is not ISO 9564 format 0")
    n = int(pin_part[1], 16)
    pin = pin_part[2 : 2 + n]
    if not (4 <= n <= 12 and pin.isdigit() and set(pin_part[2 + n :]) <= {"F"}):
        raise PinBlockError("PIN block does not decode to a PIN")
    return pin
