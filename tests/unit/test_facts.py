"""The fact format (terminal/facts.py): what a terminal builds, the back office accepts."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import pytest

from tillroll.crypto.backoffice import backoffice_key, make_token
from tillroll.notify.outbox import MessageKind
from tillroll.terminal.facts import (
    ContactError,
    FactError,
    cancelled_fact,
    check_fact,
    has_card_number,
    parse_contact,
    receipt_fact,
)
from tillroll.terminal.receipt import Slip, TransType

TID = "10000001"
PAN = "6222021234567890123"
KEY = backoffice_key(bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923"))


def slip(**kw: Any) -> Slip:
    values: dict[str, Any] = {
        "merchant_name": "测试便利店",
        "mid": "898100012345678",
        "tid": TID,
        "operator": "001",
        "pan_masked": "622202*********0123",
        "entry_mode": "M",
        "issuer": "TILLROLL BANK",
        "acquirer": "00010000",
        "expiry_yymm": "3012",
        "trans_type": TransType.SALE,
        "batch": "000001",
        "trace": "000003",
        "auth_code": "123456",
        "rrn": "000000000003",
        "when": datetime(2026, 11, 29, 14, 5, 9),
        "amount_minor": 1250,
    }
    values.update(kw)
    return Slip(**values)


def fact(**kw: Any) -> dict[str, Any]:
    doc = receipt_fact(
        slip(**kw),
        rail="card",
        at_utc=datetime(2026, 11, 29, 6, 5, 9),
        merchant_tz="Asia/Shanghai",
        token=make_token(KEY, TID, "000001.000003", 20_421),
    )
    return {"tid": TID, "reference": "000001.000003", **doc}


def test_a_receipt_fact_names_amount_merchant_and_both_times() -> None:
    checked = check_fact(MessageKind.E_RECEIPT, TID, fact())
    p = checked.payload
    assert (p["amount_minor"], p["currency"], p["merchant_name"]) == (1250, "156", "测试便利店")
    assert (p["at_utc"], p["at_local"]) == ("2026-11-29T06:05:09Z", "2026-11-29T14:05:09")
    assert checked.slip == slip()
    assert checked.at_utc == datetime(2026, 11, 29, 6, 5, 9)


def test_a_cancelled_fact_checks() -> None:
    doc = cancelled_fact(
        slip(rrn="", auth_code=""),
        rail="card",
        at_utc=datetime(2026, 11, 29, 6, 5, 9),
        merchant_tz="Asia/Shanghai",
        reason="reversed",
    )
    check_fact(MessageKind.PAYMENT_CANCELLED, TID, {"tid": TID, "reference": "000001.000003", **doc})
    with pytest.raises(ValueError):
        cancelled_fact(slip(), rail="card", at_utc=datetime(2026, 1, 1), merchant_tz="UTC", reason="maybe")


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(fact())
    node = doc
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("merchant_name", f"shop {PAN}", "merchant_name"),  # a full card number in free text
        (
            "slip.reference",
            f"card {PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:16]} {PAN[16:]}",
            "slip.reference",
        ),
        ("card_masked", PAN, "card_masked"),
        ("slip.pan_masked", PAN, "slip.pan_masked"),
        ("amount_minor", 12.5, "amount_minor"),
        ("amount_minor", True, "amount_minor"),
        ("amount_minor", 0, "amount_minor"),
        ("amount_minor", -1, "amount_minor"),
        ("tid", "10000002", "tid"),
        ("reference", "a b", "reference"),
        ("at_utc", "2026-11-29 06:05:09", "at_utc"),
        ("at_utc", "2026-13-29T06:05:09Z", "at_utc"),
        ("rail", "cash", "rail"),
        ("trans_type", "GIFT", "trans_type"),
        ("currency", "RMB", "currency"),
        ("merchant_name", "x\x1b[2J", "merchant_name"),
        ("v", 2, "v"),
        ("extra", "x", "extra"),
        ("slip", KeyError, "slip"),
        ("slip.amount_minor", 1251, "slip.amount_minor"),
        ("slip.when", "2026-11-29T14:05:10", "slip.when"),
        ("slip.colour", "red", "slip.colour"),
        ("mid", "123", "mid"),
    ],
)
def test_a_bad_field_is_refused_by_name(path: str, value: Any, field: str) -> None:
    with pytest.raises(FactError) as err:
        check_fact(MessageKind.E_RECEIPT, TID, _with(path, value))
    assert err.value.field == field


def test_a_merchant_named_by_its_mid_is_no_card_number() -> None:
    mid = "898310048990001"
    check_fact(
        MessageKind.E_RECEIPT, TID, _with("merchant_name", mid) | {"mid": mid} | {"slip": _slip_mid(mid)}
    )


def _slip_mid(mid: str) -> dict[str, Any]:
    doc = dict(fact()["slip"])
    doc.update(mid=mid, merchant_name=mid)
    return doc


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    for bad in ([], "x", None, 1):
        with pytest.raises(FactError):
            check_fact(MessageKind.E_RECEIPT, TID, bad)


def test_card_numbers_are_found_in_text_and_masked_ones_are_not() -> None:
    assert has_card_number(PAN)
    assert has_card_number(f"ref {PAN} end")
    assert has_card_number("4111-1111-1111-1111")
    assert not has_card_number("622202*********0123")
    assert not has_card_number("RRN 000000000003")  # 12 digits: a reference, not a card
    assert has_card_number("134567890123456789")  # a wallet payment code
    assert not has_card_number("trace 000123 RRN 000000000003")


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("13800138000", "+8613800138000"),
        ("+86 138 0013 8000", "+8613800138000"),
        ("8613800138000", "+8613800138000"),
        ("+4915112345678", "+4915112345678"),
        ("Li.Lei@Example.COM", "Li.Lei@example.com"),
    ],
)
def test_contacts_are_normalised(given: str, normal: str) -> None:
    assert parse_contact(given) == normal


@pytest.mark.parametrize(
    "bad", ["", "12345", "10800138000", "a@b", "a@@b.com", "x" * 250 + "@a.com", "+0123456789"]
)
def test_bad_contacts_are_refused(bad: str) -> None:
    with pytest.raises(ContactError):
        parse_contact(bad)
