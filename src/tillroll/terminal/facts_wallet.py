"""The wallet rail's facts (``wallet_receipts.order_fact`` / ``refund_fact``), checked. Pure.

The wallet client announces its own shape (``rail: "wallet"``, no ``v``): order number, brand,
masked payment code, the wallet's transaction id, ``at`` / ``time_local``. The back office accepts
it as strictly as the card rail's (``facts.py``), and rebuilds the slip the terminal printed
(扫码支付 QR PAY, or the refund's REFUND slip, as ``WalletReceipts`` lays them out) so the
e-receipt page and PDF show the same receipt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tillroll.notify.outbox import MessageKind
from tillroll.terminal.facts import AMOUNT_MAX_MINOR, CheckedFact, FactError, has_card_number
from tillroll.terminal.receipt import Slip, TransType

_COMMON = {
    "tid",
    "reference",
    "rail",
    "state",
    "amount_minor",
    "amount_yuan",
    "currency",
    "merchant_name",
    "mid",
    "wallet_merchant",
    "brand",
    "brand_label",
    "code_masked",
    "out_trade_no",
    "transaction_id",
    "batch",
    "trace",
    "at",
    "time_utc",
    "time_local",
    "merchant_tz",
}
_REFUND = {"order_amount_minor", "out_refund_no", "refund_id"}
# Which states each kind may state (only final ones).
_STATES: dict[MessageKind, frozenset[str]] = {
    MessageKind.E_RECEIPT: frozenset({"paid"}),
    MessageKind.PAYMENT_CANCELLED: frozenset({"closed", "revoked", "CLOSED", "REVOKED"}),
    MessageKind.REFUND_APPROVED: frozenset({"refund_approved"}),
}
_IDS = frozenset({"out_trade_no", "transaction_id", "out_refund_no", "refund_id"})  # own formats
_ID = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
_MASKED = re.compile(r"^[0-9]{0,6}\*+[0-9]{0,4}$")
_LOCAL = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$")


def is_wallet_fact(payload: Any) -> bool:
    return isinstance(payload, Mapping) and payload.get("rail") == "wallet" and "v" not in payload


def _str(payload: Mapping[str, Any], key: str, max_len: int = 80) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or len(value) > max_len:
        raise FactError(key, f"must be a string of at most {max_len} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise FactError(key, "holds control characters")
    return value


def _amount(payload: Mapping[str, Any], key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= AMOUNT_MAX_MINOR:
        raise FactError(key, f"must be an integer of fen, 1..{AMOUNT_MAX_MINOR}")
    return value


def check_wallet_fact(kind: MessageKind, tid: str, payload: Mapping[str, Any]) -> CheckedFact:
    if kind not in _STATES:
        raise FactError("rail", f"the wallet rail announces no {kind.value} facts")
    allowed = _COMMON | (_REFUND if kind is MessageKind.REFUND_APPROVED else set())
    wrong = sorted(set(payload) ^ allowed)
    if wrong:
        field = wrong[0]
        raise FactError(
            field, "is missing" if field in allowed else f"is not a field of a wallet {kind.value}"
        )
    mid = str(payload.get("mid"))
    for key, value in payload.items():
        if isinstance(value, str) and key not in _IDS and has_card_number(value.replace(mid, " ")):
            raise FactError(key, "holds what looks like a full card number or payment code")
    if _str(payload, "tid") != tid:
        raise FactError("tid", "is not the terminal that sent it")
    reference = _str(payload, "reference", 64)
    if payload["state"] not in _STATES[kind]:
        raise FactError("state", f"must be one of {sorted(_STATES[kind])} for {kind.value} (a final state)")
    amount = _amount(payload, "amount_minor")
    if payload["currency"] != "156":
        raise FactError("currency", "must be 156 (CNY)")
    if not re.fullmatch(r"[0-9A-Za-z]{15}", _str(payload, "mid")):
        raise FactError("mid", "must be 15 letters or digits")
    if not _MASKED.match(_str(payload, "code_masked", 24)):
        raise FactError("code_masked", "must be masked (first 6 and last 4 at most, the rest *)")
    for key in ("out_trade_no", "transaction_id", "batch", "trace", "brand", "wallet_merchant"):
        if not _ID.match(_str(payload, key, 64)):
            raise FactError(key, "must be up to 64 of A-Z a-z 0-9 _ -")
    for key in ("merchant_name", "brand_label", "amount_yuan", "merchant_tz", "time_utc"):
        _str(payload, key)
    try:
        at = datetime.fromisoformat(_str(payload, "at"))
    except ValueError:
        raise FactError("at", "must be an ISO 8601 instant") from None
    at_utc = at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at
    local = _str(payload, "time_local")
    if not _LOCAL.match(local):
        raise FactError("time_local", "must be a local time like 2026-11-29T14:05:09")
    slip = None
    if kind is MessageKind.E_RECEIPT:
        slip = _slip(payload, TransType.QR_PAY, amount, payload["transaction_id"], local)
        slip = _with_note(
            slip, f"订单号 ORDER {payload['out_trade_no']} 付款码 CODE {payload['code_masked']}"
        )
    elif kind is MessageKind.REFUND_APPROVED:
        _amount(payload, "order_amount_minor")
        for key in ("out_refund_no", "refund_id"):
            if not _ID.match(_str(payload, key, 64)):
                raise FactError(key, "must be up to 64 of A-Z a-z 0-9 _ -")
        slip = _slip(payload, TransType.REFUND, amount, payload["refund_id"], local)
        slip = _with_note(
            slip, f"原订单号 ORIG ORDER {payload['out_trade_no']} 退款单号 REFUND {payload['out_refund_no']}"
        )
    return CheckedFact(kind, tid, reference, at_utc, dict(payload), slip)


def _slip(payload: Mapping[str, Any], trans_type: TransType, amount: int, rrn: str, local: str) -> Slip:
    return Slip(
        merchant_name=payload["merchant_name"],
        mid=payload["wallet_merchant"] or payload["mid"],
        tid=payload["tid"],
        operator="",
        pan_masked="",
        entry_mode="",
        issuer=payload["brand_label"],
        acquirer="",
        expiry_yymm=None,
        trans_type=trans_type,
        batch=payload["batch"],
        trace=payload["trace"],
        auth_code="",
        rrn=rrn,
        when=datetime.fromisoformat(local),
        amount_minor=amount,
    )


def _with_note(slip: Slip, note: str) -> Slip:
    from dataclasses import replace

    return replace(slip, reference=note)
