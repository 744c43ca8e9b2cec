"""A fact as the notifier accepts it: validated, final, and free of card numbers.

A fact is a plain mapping (it arrives as JSON from a terminal's outbox, or is built by the host);
:func:`parse_fact` turns it into a :class:`Fact` or raises :class:`FactError` saying what is wrong.
Only final states are announced (never USERPAYING or an unknown outcome), and a payload holding
anything that looks like a full card number (13-19 consecutive digits passing Luhn) is refused
outright: masking is the sender's job, and a refusal is louder than a silent re-mask.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tillroll.clock import utc_naive
from tillroll.money import AMOUNT_MAX_MINOR, CNY
from tillroll.notify.outbox import MessageKind
from tillroll.pan import luhn_ok

FACT_ID_MAX = 96
TEXT_FIELD_MAX = 500  # any one string in a fact
_DIGIT_RUN = re.compile(r"\d{13,}")
PAN_DIGITS_MIN, PAN_DIGITS_MAX = 13, 19
# Field names that would carry a clear card number or payment code: refused whatever their value.
_CLEAR_FIELDS = frozenset({"pan", "card_number", "payment_code", "auth_code_clear", "track2"})
# States a fact may state; anything else is not final and is never announced.
_NOT_FINAL = frozenset({"userpaying", "unknown", "pending", "processing", "submitted", "requested"})


class AlertKind(enum.StrEnum):
    REVERSAL_OVERDUE = "reversal_overdue"  # a reversal is still pending past its deadline
    PRINTER_FAULT = "printer_fault"  # the printer failed; receipts are owed
    SIGN_IN_FAILURES = "sign_in_failures"  # repeated sign-in failures
    JOURNAL_LOSS = "journal_loss"  # the host detected a terminal's lost journal
    CUTOVER = "cutover"  # the host closed a batch at cut-over
    DEAD_LETTER = "dead_letter"  # a message could not be delivered
    RECON_ESCALATED = "recon_escalated"  # reconciliation's automatic retries are used up
    RECON_FOUND = "recon_found"  # reconciliation found a problem at a terminal (detail says which)


# Customer-facing kinds need an amount; these alerts do too (they are about money).
_ALERTS_WITH_AMOUNT = frozenset({AlertKind.REVERSAL_OVERDUE, AlertKind.JOURNAL_LOSS, AlertKind.CUTOVER})


class FactError(ValueError):
    """A fact the notifier refuses (missing field, not final, a full card number ...)."""


@dataclass(frozen=True)
class Fact:
    kind: MessageKind
    fact_id: str
    at: datetime  # naive UTC, when the fact happened (the journal's / host's time)
    mid: str | None
    merchant_name: str | None
    amount_minor: int | None
    currency: str
    contact: str | None  # the customer's phone or e-mail, if they gave one
    alert: AlertKind | None
    details: Mapping[str, Any] = field(default_factory=dict)  # every other field, as given

    def with_merchant(self, mid: str, name: str) -> Fact:
        return Fact(
            self.kind, self.fact_id, self.at, mid, name, self.amount_minor, self.currency,
            self.contact, self.alert, self.details,
        )  # fmt: skip


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def full_card_numbers(value: Any, ids: Collection[str] = ()) -> list[str]:
    """Every run of 13-19 consecutive digits in ``value`` (strings, numbers, nested) that passes
    Luhn: what a full card number looks like. Returned masked, for the error message. A run equal
    to one of ``ids`` (the fact's own merchant and terminal ids) is not a card number: a 15-digit
    merchant id passes Luhn one time in ten."""
    found = []
    for text in _strings(value):
        for run in _DIGIT_RUN.findall(text):
            if PAN_DIGITS_MIN <= len(run) <= PAN_DIGITS_MAX and run not in ids and luhn_ok(run):
                found.append(run[:6] + "*" * (len(run) - 10) + run[-4:])
    return found


def refuse_card_numbers(payload: Any, what: str, ids: Collection[str] = ()) -> None:
    """Raise :class:`FactError` if ``payload`` holds a clear-number field or a full card number
    (other than one of ``ids``, the merchant and terminal ids it is about)."""
    if isinstance(payload, Mapping):
        clear = sorted(set(map(str, payload)) & _CLEAR_FIELDS)
        if clear:
            raise FactError(f"{what} has field(s) {clear} that carry a clear number: send it masked")
    found = full_card_numbers(payload, ids)
    if found:
        raise FactError(f"{what} holds a full card number ({found[0]}): mask it (first 6, last 4)")


def _ids(*values: object) -> frozenset[str]:
    """The merchant and terminal ids a fact names, as the digit runs the card-number scan skips."""
    return frozenset(v.strip() for v in values if isinstance(v, str) and v.strip())


def fact_ids(fact: Fact) -> frozenset[str]:
    """The ids of ``fact`` that a rendered message or event may show in full."""
    return _ids(fact.mid, fact.details.get("tid"))


def _text(fact: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = fact.get(name)
    if value is None:
        if required:
            raise FactError(f"fact has no {name!r}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise FactError(f"fact field {name!r} must be a non-empty string, not {value!r}")
    if len(value) > TEXT_FIELD_MAX:
        raise FactError(f"fact field {name!r} is longer than {TEXT_FIELD_MAX} characters")
    return value.strip()


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        return utc_naive(value)
    if isinstance(value, str):
        try:
            return utc_naive(datetime.fromisoformat(value))
        except ValueError:
            pass
    raise FactError(f"fact field 'at' must be an ISO 8601 instant (UTC), not {value!r}")


def _amount(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FactError(f"fact field 'amount_minor' must be an integer of fen, not {value!r}")
    if not 0 <= value <= AMOUNT_MAX_MINOR:
        raise FactError(f"fact field 'amount_minor' {value} is outside 0..{AMOUNT_MAX_MINOR}")
    return value


def parse_fact(kind: MessageKind, fact: Mapping[str, Any]) -> Fact:
    """Validate ``fact`` for ``kind``. Fields: ``id`` (the fact's id, required), ``at`` (ISO
    instant, required), ``mid`` / ``merchant_name`` (or ``tid``, to look the merchant up),
    ``amount_minor`` (required for customer messages and money alerts), ``currency`` (default
    156), ``contact`` (the customer's phone or e-mail), ``alert`` (an :class:`AlertKind`, required
    for merchant alerts), ``link`` (required for e-receipts); the rest is kept as details."""
    refuse_card_numbers(fact, "fact", _ids(fact.get("mid"), fact.get("tid")))
    fact_id = _text(fact, "id", required=True)
    assert fact_id is not None
    if len(fact_id) > FACT_ID_MAX:
        raise FactError(f"fact id is longer than {FACT_ID_MAX} characters")
    for name in ("state", "status"):
        state = fact.get(name)
        if isinstance(state, str) and state.lower() in _NOT_FINAL:
            raise FactError(f"fact {fact_id} is in state {state!r}, not final: nothing is announced")
    alert = None
    if kind is MessageKind.MERCHANT_ALERT:
        raw = _text(fact, "alert", required=True)
        try:
            alert = AlertKind(str(raw))
        except ValueError:
            raise FactError(f"alert {raw!r} is not one of {[a.value for a in AlertKind]}") from None
    needs_amount = kind is not MessageKind.MERCHANT_ALERT or alert in _ALERTS_WITH_AMOUNT
    amount = fact.get("amount_minor")
    if amount is None and needs_amount:
        raise FactError(f"fact {fact_id} has no 'amount_minor'")
    if kind is MessageKind.E_RECEIPT:
        link = _text(fact, "link", required=True)
        assert link is not None
        if not link.startswith(("https://", "http://")):
            raise FactError(f"e-receipt link {link!r} is not an http(s) URL")
    currency = _text(fact, "currency", required=False) or CNY
    known = {"id", "at", "mid", "merchant_name", "amount_minor", "currency", "contact", "alert"}
    return Fact(
        kind=kind,
        fact_id=fact_id,
        at=_instant(fact.get("at")),
        mid=_text(fact, "mid", required=False),
        merchant_name=_text(fact, "merchant_name", required=False),
        amount_minor=None if amount is None else _amount(amount),
        currency=currency,
        contact=_text(fact, "contact", required=False),
        alert=alert,
        details={k: v for k, v in fact.items() if k not in known},
    )
