"""Money is an integer of minor units (fen) with a currency; never a float."""

from __future__ import annotations

import re

CNY = "156"
_YUAN_RE = re.compile(r"^(?P<int>\d{1,10})(?:\.(?P<frac>\d{1,2}))?$")
AMOUNT_MAX_MINOR = 999_999_999_999  # what field 4 (n12) can carry


class AmountError(ValueError):
    """An amount typed by a person or read from outside is not valid."""


def parse_yuan(text: str) -> int:
    """'12.5' -> 1250 fen. Rejects signs, exponents and more than two decimals."""
    m = _YUAN_RE.match(text.strip())
    if m is None:
        raise AmountError(
            f"amount {text!r} is not a yuan amount: write it like 12.50 (digits, at most two decimals)"
        )
    frac = (m.group("frac") or "").ljust(2, "0")
    minor = int(m.group("int")) * 100 + int(frac)
    if minor > AMOUNT_MAX_MINOR:
        raise AmountError(f"amount {text!r} is larger than the maximum 9999999999.99")
    return minor


def format_yuan(amount_minor: int) -> str:
    """1250 -> '12.50'; -1250 -> '-12.50'."""
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 100)
    return f"{sign}{whole}.{frac:02d}"
