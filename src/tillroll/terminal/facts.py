"""The facts a terminal announces to its back office, as data: built here, checked here. Pure.

One format for both rails (cards here, wallet payments in the wallet client) and both ends (the
terminal builds a fact with :func:`receipt_fact` / :func:`cancelled_fact`; the back office's intake
refuses anything :func:`check_fact` does not accept). ``docs/web.md`` documents it field by field.
A fact never holds a full card number or payment code: :func:`check_fact` refuses a payload in
which any free-text value carries 13–19 digits (in one run, or in groups of four), and accepts
only masked numbers where a card number or payment code goes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from tillroll.clock import to_merchant_local
from tillroll.crypto.backoffice import REFERENCE_RE, TID_RE
from tillroll.notify.outbox import MessageKind
from tillroll.terminal.receipt import Slip, TransType

FACT_VERSION = 1
AMOUNT_MAX_MINOR = 10**10  # 100 million yuan: far above any counter payment
TEXT_MAX = 128


class FactError(ValueError):
    """A fact the back office refuses; ``field`` names what was wrong."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class ContactError(ValueError):
    pass


# --- the customer's contact -------------------------------------------------------------------

_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}$")
_CN_MOBILE = re.compile(r"^(?:\+?86)?(1[3-9][0-9]{9})$")
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")


def parse_contact(text: str) -> str:
    """A phone number (a Chinese mobile number, or E.164 ``+…``) or an e-mail address, normalised:
    ``+8613800138000`` / ``name@example.com`` (the domain lower-cased)."""
    value = text.strip()
    if "@" in value:
        if len(value) > 254 or not _EMAIL.match(value):
            raise ContactError(f"{text!r} is not an e-mail address: write it like name@example.com")
        local, _, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}"
    digits = re.sub(r"[\s()-]", "", value)
    m = _CN_MOBILE.match(digits)
    if m:
        return "+86" + m.group(1)
    if _E164.match(digits):
        return digits
    raise ContactError(
        f"{text!r} is neither a mobile number (13800138000, +8613800138000) nor an e-mail address"
    )


# --- building facts (the terminal) -------------------------------------------------------------


def utc_iso(instant: datetime) -> str:
    """``2026-11-29T06:05:09Z`` from a naive-UTC (or aware) instant."""
    aware = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def card_reference(batch: str, trace: str) -> str:
    """The fact's key on the card rail: ``000001.000123``."""
    return f"{batch}.{trace}"


def slip_document(slip: Slip) -> dict[str, Any]:
    """The slip's fields as JSON (its cardholder copy, with the card number masked)."""
    doc = asdict(slip)
    doc.pop("e_receipt_url")
    doc["trans_type"] = slip.trans_type.value
    doc["when"] = slip.when.replace(microsecond=0).isoformat()
    return doc


def _header(slip: Slip, *, rail: str, at_utc: datetime, merchant_tz: str, card_masked: str) -> dict[str, Any]:
    from zoneinfo import ZoneInfo

    return {
        "v": FACT_VERSION,
        "mid": slip.mid,
        "merchant_name": slip.merchant_name,
        "rail": rail,
        "trans_type": slip.trans_type.value,
        "amount_minor": slip.amount_minor,
        "currency": slip.currency,
        "card_masked": card_masked,
        "issuer": slip.issuer,
        "rrn": slip.rrn,
        "auth_code": slip.auth_code,
        "batch": slip.batch,
        "trace": slip.trace,
        "at_utc": utc_iso(at_utc),
        "at_local": to_merchant_local(at_utc, ZoneInfo(merchant_tz)).replace(microsecond=0).isoformat(),
        "merchant_tz": merchant_tz,
    }


def receipt_fact(
    slip: Slip,
    *,
    rail: str,
    at_utc: datetime,
    merchant_tz: str,
    token: str,
    card_masked: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An ``e_receipt`` or ``refund_approved`` fact: the summary, the token of the receipt's link
    and the slip itself (``announce`` adds ``tid`` and ``reference``)."""
    fact = _header(
        slip,
        rail=rail,
        at_utc=at_utc,
        merchant_tz=merchant_tz,
        card_masked=slip.pan_masked if card_masked is None else card_masked,
    )
    fact["receipt_token"] = token
    fact["slip"] = slip_document(slip)
    fact.update(extra or {})
    return fact


def cancelled_fact(
    slip: Slip, *, rail: str, at_utc: datetime, merchant_tz: str, reason: str, card_masked: str | None = None
) -> dict[str, Any]:
    """A ``payment_cancelled`` fact: the payment (as its slip would have shown it) did not stand."""
    if reason not in CANCEL_REASONS:
        raise ValueError(f"reason {reason!r} is not one of {sorted(CANCEL_REASONS)}")
    fact = _header(
        slip,
        rail=rail,
        at_utc=at_utc,
        merchant_tz=merchant_tz,
        card_masked=slip.pan_masked if card_masked is None else card_masked,
    )
    fact["reason"] = reason
    return fact


def alert_fact(
    *,
    alert: str,
    mid: str,
    merchant_name: str,
    text: str,
    at_utc: datetime,
    count: int | None = None,
    amount_minor: int | None = None,
    batch: str = "",
    trace: str = "",
) -> dict[str, Any]:
    """A ``merchant_alert`` fact (``alert``: one of the notifications' alert kinds, such as
    ``printer_fault`` or ``reversal_overdue``)."""
    fact: dict[str, Any] = {
        "v": FACT_VERSION,
        "mid": mid,
        "merchant_name": merchant_name,
        "alert": alert,
        "text": text[:500],
        "at_utc": utc_iso(at_utc),
        "batch": batch,
        "trace": trace,
    }
    if count is not None:
        fact["count"] = count
    if amount_minor is not None:
        fact["amount_minor"] = amount_minor
        fact["currency"] = "156"
    return fact


CANCEL_REASONS = frozenset({"reversed", "voided", "closed"})
RAILS = frozenset({"card", "wallet"})

# --- checking facts (the back office) ----------------------------------------------------------

_COMMON = {
    "v",
    "tid",
    "reference",
    "mid",
    "merchant_name",
    "rail",
    "trans_type",
    "amount_minor",
    "currency",
    "card_masked",
    "issuer",
    "rrn",
    "auth_code",
    "batch",
    "trace",
    "at_utc",
    "at_local",
    "merchant_tz",
}
# Optional everywhere: the wallet rail's own references.
_OPTIONAL = {"order_no", "refund_no", "orig_reference", "orig_rrn", "brand"}
_KEYS: dict[MessageKind, set[str]] = {
    MessageKind.E_RECEIPT: _COMMON | {"receipt_token", "slip"},
    MessageKind.REFUND_APPROVED: _COMMON | {"receipt_token", "slip"},
    MessageKind.PAYMENT_CANCELLED: _COMMON | {"reason"},
    MessageKind.MERCHANT_ALERT: {"tid", "reference", "alert"},
}
# A merchant alert's other fields (the notifications' alert format; ``at`` or ``at_utc`` required).
_ALERT_OPTIONAL = {"v", "mid", "text", "detail", "at", "at_utc", "attempts", "dead_message_id"}
_ALERT_OPTIONAL |= {"merchant_name", "amount_minor", "currency", "batch", "trace", "count"}
_REQUIRED_OPTIONAL_OK = {"order_no", "refund_no", "orig_reference", "orig_rrn", "brand"}
_ID_FIELDS = {"tid", "reference", "mid", "rrn", "auth_code", "batch", "trace", "order_no", "refund_no"}
_ID_FIELDS |= {"orig_reference", "orig_rrn", "receipt_token"}
# Values with their own strict format (checked below), not free text: not scanned for card numbers.
_ID_PATHS = _ID_FIELDS | {f"slip.{k}" for k in ("tid", "mid", "rrn", "auth_code", "batch", "trace")}
# A masked card number (first 6 and last 4 at most, the rest *), or none: the journal intake
# holds its uploads to the same rule.
MASKED_CARD = re.compile(r"^(?:[0-9A-Za-z]{0,8}\*+[0-9A-Za-z]{0,4}|)$")
_GROUPED = re.compile(r"(?<![0-9])[0-9]{4}(?:[ -][0-9]{4}){2,3}[ -][0-9]{1,4}(?![0-9])")
_MID = re.compile(r"^[0-9A-Za-z]{15}$")
_SHORT_ID = re.compile(r"^[A-Za-z0-9_.:-]{0,64}$")
_ALERT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_UTC_ISO = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
_LOCAL_ISO = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$")
_SLIP_KEYS = {
    "merchant_name",
    "mid",
    "tid",
    "operator",
    "pan_masked",
    "entry_mode",
    "issuer",
    "acquirer",
    "expiry_yymm",
    "trans_type",
    "batch",
    "trace",
    "auth_code",
    "rrn",
    "when",
    "amount_minor",
    "currency",
    "reference",
}


def has_card_number(text: str) -> bool:
    """True when ``text`` holds what may be a card number or payment code: 13–19 digits in one
    run, or in groups of four separated by spaces or dashes (``6222 0212 3456 7890 123``). No
    Luhn test: a test card need not pass it, and nothing in free text has that many digits."""
    if re.search(r"(?<![0-9])[0-9]{13,19}(?![0-9])", text):
        return True
    return any(13 <= len(re.sub(r"[ -]", "", m.group(0))) <= 19 for m in _GROUPED.finditer(text))


def _text(payload: Mapping[str, Any], key: str, *, max_len: int = TEXT_MAX, required: bool = True) -> str:
    value = payload.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise FactError(key, "must be a string")
    if len(value) > max_len:
        raise FactError(key, f"longer than {max_len} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise FactError(key, "holds control characters")
    return value


def _amount(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= AMOUNT_MAX_MINOR:
        raise FactError(key, f"must be an integer of fen, 1..{AMOUNT_MAX_MINOR}")
    return value


def _utc(value: str, key: str) -> datetime:
    if not _UTC_ISO.match(value):
        raise FactError(key, "must be a UTC time like 2026-11-29T06:05:09Z")
    try:
        return datetime.fromisoformat(value[:-1])
    except ValueError:
        raise FactError(key, "is not a real date and time") from None


@dataclass(frozen=True)
class CheckedFact:
    kind: MessageKind
    tid: str
    reference: str
    at_utc: datetime
    payload: Mapping[str, Any]
    slip: Slip | None  # e_receipt and refund_approved


def _scan(value: Any, path: str, mid: str) -> None:
    if isinstance(value, str):
        # The MID (15 digits) stands in for a merchant without a name: it is no card number.
        text = value.replace(mid, " ") if mid else value
        if path not in _ID_PATHS and has_card_number(text):
            raise FactError(path, "holds what looks like a full card number: send it masked")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _scan(v, f"{path}.{k}" if path else str(k), mid)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _scan(v, f"{path}.{i}", mid)


def check_fact(kind: MessageKind, tid: str, payload: Any) -> CheckedFact:
    """The fact if the back office accepts it, else :class:`FactError` (nothing is stored)."""
    if not isinstance(payload, Mapping):
        raise FactError("payload", "must be a JSON object")
    if kind not in _KEYS:  # the back office's own kinds (a reconciliation follow-up) are not a terminal's
        raise FactError("kind", f"{kind.value} is not a fact a terminal delivers")
    allowed = _KEYS[kind] | _REQUIRED_OPTIONAL_OK
    if kind is MessageKind.MERCHANT_ALERT:
        allowed = allowed | _ALERT_OPTIONAL
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise FactError(unknown[0], f"is not a field of a {kind.value} fact")
    missing = sorted(_KEYS[kind] - set(payload))
    if missing:
        raise FactError(missing[0], "is missing")
    if payload.get("v", FACT_VERSION) != FACT_VERSION or isinstance(payload.get("v"), bool):
        raise FactError("v", f"must be {FACT_VERSION}")
    mid = payload.get("mid")
    _scan(payload, "", mid if isinstance(mid, str) and _MID.match(mid) else "")
    if payload["tid"] != tid or not TID_RE.match(_text(payload, "tid")):
        raise FactError("tid", "is not the terminal that sent it")
    reference = _text(payload, "reference")
    if not REFERENCE_RE.match(reference):
        raise FactError("reference", "must be 1..64 of A-Z a-z 0-9 _ . : -")
    if (kind is not MessageKind.MERCHANT_ALERT or "mid" in payload) and not _MID.match(_text(payload, "mid")):
        raise FactError("mid", "must be 15 letters or digits")
    for key in _OPTIONAL & set(payload):
        if not _SHORT_ID.match(_text(payload, key, max_len=64)):
            raise FactError(key, "must be up to 64 of A-Z a-z 0-9 _ . : -")
    if kind is MessageKind.MERCHANT_ALERT:
        return _check_alert(tid, reference, payload)
    at_utc = _utc(_text(payload, "at_utc"), "at_utc")
    _text(payload, "merchant_name", max_len=80)
    if payload["rail"] not in RAILS:
        raise FactError("rail", f"must be one of {sorted(RAILS)}")
    try:
        trans_type = TransType(_text(payload, "trans_type"))
    except ValueError:
        raise FactError("trans_type", f"must be one of {[t.value for t in TransType]}") from None
    _amount(payload["amount_minor"], "amount_minor")
    if not re.fullmatch(r"[0-9]{3}", _text(payload, "currency")):
        raise FactError("currency", "must be an ISO 4217 numeric code like 156")
    if not MASKED_CARD.match(_text(payload, "card_masked", max_len=24)):
        raise FactError("card_masked", "must be masked (first 6 and last 4 at most, the rest *)")
    for key in ("issuer",):
        _text(payload, key, max_len=40)
    for key in ("rrn", "auth_code", "batch", "trace"):
        if not _SHORT_ID.match(_text(payload, key, max_len=64)):
            raise FactError(key, "must be up to 64 of A-Z a-z 0-9 _ . : -")
    if not _LOCAL_ISO.match(_text(payload, "at_local")):
        raise FactError("at_local", "must be a local time like 2026-11-29T14:05:09")
    _text(payload, "merchant_tz", max_len=64)
    if kind is MessageKind.PAYMENT_CANCELLED:
        if payload["reason"] not in CANCEL_REASONS:
            raise FactError("reason", f"must be one of {sorted(CANCEL_REASONS)}")
        return CheckedFact(kind, tid, reference, at_utc, dict(payload), None)
    _text(payload, "receipt_token", max_len=160)
    slip = _check_slip(payload, trans_type)
    return CheckedFact(kind, tid, reference, at_utc, dict(payload), slip)


def _check_alert(tid: str, reference: str, payload: Mapping[str, Any]) -> CheckedFact:
    if not _ALERT.match(_text(payload, "alert", max_len=32)):
        raise FactError("alert", "must be a lower-case word like printer_fault")
    for key in ("text", "detail", "merchant_name", "dead_message_id", "batch", "trace", "currency"):
        _text(payload, key, max_len=500, required=False)
    for key in ("attempts", "count", "amount_minor"):
        value = payload.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise FactError(key, "must be a whole number")
    if "at_utc" in payload:
        at_utc = _utc(_text(payload, "at_utc"), "at_utc")
    elif "at" in payload:
        try:
            at = datetime.fromisoformat(_text(payload, "at"))
        except ValueError:
            raise FactError("at", "must be an ISO 8601 instant") from None
        at_utc = at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at
    else:
        raise FactError("at_utc", "is missing")
    return CheckedFact(MessageKind.MERCHANT_ALERT, tid, reference, at_utc, dict(payload), None)


def _check_slip(payload: Mapping[str, Any], trans_type: TransType) -> Slip:
    doc = payload["slip"]
    if not isinstance(doc, Mapping):
        raise FactError("slip", "must be a JSON object")
    if set(doc) != _SLIP_KEYS:
        wrong = sorted(set(doc) ^ _SLIP_KEYS)[0]
        raise FactError(f"slip.{wrong}", "is missing" if wrong in _SLIP_KEYS else "is not a slip field")
    for key in _SLIP_KEYS - {"amount_minor", "expiry_yymm", "reference"}:
        _text(doc, key, max_len=80)
    for key in ("expiry_yymm", "reference"):
        if doc[key] is not None:
            _text(doc, key, max_len=200)
    if not MASKED_CARD.match(doc["pan_masked"]):
        raise FactError("slip.pan_masked", "must be masked")
    for key in ("mid", "tid", "amount_minor", "currency", "batch", "trace", "rrn", "auth_code"):
        if doc[key] != payload[key]:
            raise FactError(f"slip.{key}", f"differs from the fact's {key}")
    if doc["trans_type"] != trans_type.value or doc["merchant_name"] != payload["merchant_name"]:
        raise FactError("slip.trans_type", "differs from the fact")
    if not _LOCAL_ISO.match(doc["when"]) or doc["when"] != payload["at_local"]:
        raise FactError("slip.when", "must be the fact's at_local")
    try:
        return Slip(
            **{k: v for k, v in doc.items() if k != "when"},
            when=datetime.fromisoformat(doc["when"]),
        )
    except (TypeError, ValueError) as exc:
        raise FactError("slip", str(exc)) from None


def slip_from_document(doc: Mapping[str, Any]) -> Slip:
    """The slip stored with an e-receipt, back as a :class:`Slip` (to render it)."""
    return Slip(**{k: v for k, v in doc.items() if k != "when"}, when=datetime.fromisoformat(doc["when"]))
