"""Each request of PROFILE §3 carries exactly the fields the profile lists, and survives the codec."""

from __future__ import annotations

import pytest

from tillroll.crypto.keys import WorkingKeys
from tillroll.crypto.pin import encrypt_pin_block
from tillroll.iso8583 import builders
from tillroll.iso8583.field48 import SettlementTotals, UploadItem
from tillroll.iso8583.messages import Field61, Kind, Message, mac_matches, sign, unpack

AT = builders.Station("12345678", "123456789012345")
PAN = "6222021234567890123"
KEYS = WorkingKeys.generate()
PIN_BLOCK = encrypt_pin_block(KEYS.pik, "123456", PAN)
ORIGINAL = Field61("000001", "000007", "1129")

CASES: list[tuple[str, Message, Kind, set[str]]] = [
    (
        "sign-in",
        builders.sign_in(AT, "000001", "000001", "001"),
        Kind.SIGN_IN,
        {"11", "41", "42", "60", "63"},
    ),
    ("sign-out", builders.sign_out(AT, "000002", "000001"), Kind.SIGN_OUT, {"11", "41", "42", "60"}),
    ("echo", builders.echo(AT, "000003", "000001"), Kind.ECHO, {"11", "41", "42", "60"}),
    (
        "balance",
        builders.balance_inquiry(AT, "000004", "000001", pan=PAN, expiry="3012", pin_block=PIN_BLOCK),
        Kind.BALANCE,
        {"2", "3", "11", "14", "22", "25", "26", "41", "42", "49", "52", "53", "60"},
    ),
    (
        "sale with PIN",
        builders.sale(AT, "000005", "000001", amount_minor=1250, pan=PAN, expiry="3012", pin_block=PIN_BLOCK),
        Kind.SALE,
        {"2", "3", "4", "11", "14", "22", "25", "26", "41", "42", "49", "52", "53", "60"},
    ),
    (
        "sale without PIN",
        builders.sale(AT, "000006", "000001", amount_minor=1250, pan=PAN, expiry="3012", pin_block=None),
        Kind.SALE,
        {"2", "3", "4", "11", "14", "22", "25", "41", "42", "49", "53", "60"},
    ),
    (
        "void",
        builders.void(
            AT,
            "000008",
            "000001",
            pan=PAN,
            amount_minor=1250,
            rrn="000000000007",
            auth_code="123456",
            original=ORIGINAL,
        ),
        Kind.VOID,
        {"2", "3", "4", "11", "25", "37", "38", "41", "42", "49", "60", "61"},
    ),
    (
        "refund",
        builders.refund(
            AT, "000009", "000002", amount_minor=500, rrn="000000000007", original=ORIGINAL, pan=PAN
        ),
        Kind.REFUND,
        {"2", "3", "4", "11", "25", "37", "41", "42", "49", "60", "61", "63"},
    ),
    (
        "settlement",
        builders.settlement(AT, "000010", "000001", SettlementTotals(1250, 1, 0, 0), "001"),
        Kind.SETTLEMENT,
        {"11", "41", "42", "48", "49", "60", "63"},
    ),
    (
        "batch upload",
        builders.batch_upload(AT, "000011", "000001", [UploadItem("000005", PAN, 1250)]),
        Kind.BATCH_UPLOAD,
        {"11", "41", "42", "48", "60"},
    ),
    (
        "end of batch upload",
        builders.batch_upload_end(AT, "000012", "000001", 1, balanced=False),
        Kind.BATCH_UPLOAD_END,
        {"11", "41", "42", "48", "60"},
    ),
]


@pytest.mark.parametrize(("name", "msg", "kind", "fields"), CASES, ids=[c[0] for c in CASES])
def test_request_fields_and_round_trip(name: str, msg: Message, kind: Kind, fields: set[str]) -> None:
    assert set(msg.fields) == fields
    assert msg.kind is kind
    raw = sign(msg, KEYS.mak)
    assert mac_matches(raw, KEYS.mak)
    back = unpack(raw)
    assert back.mti == msg.mti and back.without("64").fields == msg.fields


def test_reversal_keeps_the_original_stan_and_batch_and_drops_the_pin() -> None:
    sale = builders.sale(
        AT, "000005", "000001", amount_minor=1250, pan=PAN, expiry="3012", pin_block=PIN_BLOCK
    )
    rev = builders.reversal(sale, "98", "123456")
    assert rev.mti == "0400" and rev.kind is Kind.REVERSAL
    assert set(rev.fields) == {"2", "3", "4", "11", "14", "22", "25", "38", "39", "41", "42", "49", "60"}
    assert (rev["11"], rev["60"], rev["39"]) == ("000005", "22000001000", "98")


def test_the_sale_of_the_profile_example_but_keyed_in() -> None:
    msg = builders.sale(
        AT, "000123", "000001", amount_minor=12345, pan=PAN, expiry="3012", pin_block=PIN_BLOCK
    )
    assert (msg["4"], msg["22"], msg["26"], msg["53"], msg["60"]) == (
        "000000012345", "011", "12", "2600000000000000", "22000001000",
    )  # fmt: skip
