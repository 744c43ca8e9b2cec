"""Reading a request's fields (WALLET.md §1, §3) into typed requests, or saying what is wrong. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date

from tillroll.wallet.core import PayRequest, RefundRequest
from tillroll.wallet.sign import NONCE_RE

ORDER_NO_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MCH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_FEE_TEXT_RE = re.compile(r"^[1-9][0-9]{0,11}$")
FEE_MAX = 100_000_000_00  # 100 million yuan: far above any counter payment
AUTH_CODE_MAX_CHARS = 128
BODY_MAX_CHARS = 128


class FieldError(ValueError):
    """A field is missing or not valid: answered PARAM_ERROR, nothing changes."""


def bad_value_types(fields: Mapping[str, object]) -> str | None:
    """Field values are strings or integers (not booleans); the first field that is not, if any.
    A null is an empty value (left out of the signature, read as missing), not a bad type."""
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            return name
    return None


def _text(fields: Mapping[str, object], name: str, pattern: re.Pattern[str] | None = None) -> str:
    value = fields.get(name)
    if value is None or value == "":
        raise FieldError(f"{name} is missing")
    if not isinstance(value, str):
        raise FieldError(f"{name} must be a string")
    if pattern is not None and not pattern.match(value):
        raise FieldError(f"{name} {value[:40]!r} is not valid")
    return value


def _fee(fields: Mapping[str, object], name: str) -> int:
    value = fields.get(name)
    if value is None or value == "":
        raise FieldError(f"{name} is missing")
    if isinstance(value, str):
        if not _FEE_TEXT_RE.match(value):
            raise FieldError(f"{name} {value[:20]!r} is not a whole number of fen")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"{name} must be an integer number of fen")
    if not 1 <= value <= FEE_MAX:
        raise FieldError(f"{name} {value} is out of range 1..{FEE_MAX} fen")
    return value


def nonce(fields: Mapping[str, object]) -> str:
    return _text(fields, "nonce_str", NONCE_RE)


def pay_request(fields: Mapping[str, object]) -> PayRequest:
    auth_code = _text(fields, "auth_code")
    if len(auth_code) > AUTH_CODE_MAX_CHARS:
        raise FieldError(f"auth_code is longer than {AUTH_CODE_MAX_CHARS} characters")
    body = fields.get("body")
    if body is not None and body != "":
        if not isinstance(body, str):
            raise FieldError("body must be a string")
        if len(body) > BODY_MAX_CHARS:
            raise FieldError(f"body is longer than {BODY_MAX_CHARS} characters")
    return PayRequest(
        auth_code=auth_code,
        out_trade_no=out_trade_no(fields),
        total_fee=_fee(fields, "total_fee"),
        body=body or None,
    )


def out_trade_no(fields: Mapping[str, object]) -> str:
    return _text(fields, "out_trade_no", ORDER_NO_RE)


def out_refund_no(fields: Mapping[str, object]) -> str:
    return _text(fields, "out_refund_no", ORDER_NO_RE)


def refund_request(fields: Mapping[str, object]) -> RefundRequest:
    return RefundRequest(
        out_trade_no=out_trade_no(fields),
        out_refund_no=out_refund_no(fields),
        total_fee=_fee(fields, "total_fee"),
        refund_fee=_fee(fields, "refund_fee"),
    )


def bill_date(fields: Mapping[str, object]) -> date:
    text = _text(fields, "bill_date", re.compile(r"^\d{8}$"))
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise FieldError(f"bill_date {text!r} is not a date YYYYMMDD") from None
