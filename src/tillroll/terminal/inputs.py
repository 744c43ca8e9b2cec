"""What the cashier types in, checked before anything is journalled or sent. Pure.

Card entry (profile choice of this terminal): the card number is keyed in, so requests carry the
PAN in field 2 and the expiry in field 14 with entry mode ``01`` — field 22 is ``011`` with a PIN,
``012`` without — and the slip shows entry mode ``M``. No track data (35/36) is ever sent.
"""

from __future__ import annotations

import re

from tillroll.money import AMOUNT_MAX_MINOR

SLIP_ENTRY_MODE = "M"  # keyed in: what the journal and the slip record as the entry mode

_PAN = re.compile(r"^\d{13,19}$")
_EXPIRY = re.compile(r"^\d{2}(0[1-9]|1[0-2])$")
_PIN = re.compile(r"^\d{4,12}$")
_TRACE = re.compile(r"^\d{1,6}$")
_RRN = re.compile(r"^[0-9A-Za-z]{12}$")
_MMDD = re.compile(r"^(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$")


class InputError(ValueError):
    """Something typed in (amount, card, expiry, PIN, trace) is not valid; the message says what
    to do. Raised before anything is journalled or sent."""


def parse_pan(text: str) -> str:
    pan = text.strip().replace(" ", "")
    if not _PAN.match(pan):
        raise InputError("card number must be 13 to 19 digits: check the card and type it again")
    return pan


def parse_expiry(text: str) -> str:
    exp = text.strip()
    if not _EXPIRY.match(exp):
        raise InputError(f"expiry {text!r} is not YYMM (e.g. 3012 for December 2030): check the card")
    return exp


def parse_pin(text: str) -> str:
    if not _PIN.match(text):
        raise InputError("PIN must be 4 to 12 digits: ask the cardholder to enter it again")
    return text


def parse_trace(text: str) -> str:
    t = text.strip()
    if not _TRACE.match(t) or int(t) == 0:
        raise InputError(f"trace {text!r} is not a voucher number 000001..999999: read it off the slip")
    return t.zfill(6)


def parse_rrn(text: str) -> str:
    r = text.strip()
    if not _RRN.match(r):
        raise InputError(
            f"reference number {text!r} is not the 12-character RRN (参考号) of the slip: read it off"
        )
    return r


def parse_mmdd(text: str) -> str:
    d = text.strip()
    if not _MMDD.match(d):
        raise InputError(f"date {text!r} is not MMDD (e.g. 1129): the original slip's date")
    return d


def parse_batch(text: str) -> str:
    b = text.strip()
    if not _TRACE.match(b) or int(b) == 0:
        raise InputError(f"batch {text!r} is not a batch number 000001..999999: read it off the slip")
    return b.zfill(6)


def check_amount(amount_minor: int) -> int:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise InputError("amount must be an integer number of fen")
    if not 0 < amount_minor <= AMOUNT_MAX_MINOR:
        raise InputError("amount must be more than 0.00 and at most 9999999999.99 yuan")
    return amount_minor
