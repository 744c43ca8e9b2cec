"""Field 48 of settlement and batch upload (PROFILE §3), as both sides encode and read it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillroll.iso8583.errors import DecodeError
from tillroll.iso8583.field48 import (
    SettlementFlag,
    SettlementTotals,
    UploadItem,
    parse_upload_end,
    parse_upload_items,
    settlement_flag,
    upload_end_field48,
    upload_items_field48,
)


def test_settlement_request_is_62_digits_with_zero_foreign_figures() -> None:
    digits = SettlementTotals(12_345, 7, 500, 1).field48()
    assert digits == "0000000123450070000000005000010" + "0" * 31


def test_the_hosts_answer_carries_the_flag_at_digit_30() -> None:
    digits = SettlementTotals(1, 1, 0, 0).field48(SettlementFlag.NOT_BALANCED)
    assert settlement_flag(digits) is SettlementFlag.NOT_BALANCED
    assert SettlementTotals.parse(digits) == SettlementTotals(1, 1, 0, 0)


@given(st.integers(0, 10**12 - 1), st.integers(0, 999), st.integers(0, 10**12 - 1), st.integers(0, 999))
def test_totals_round_trip(debit: int, debits: int, credit: int, credits: int) -> None:
    totals = SettlementTotals(debit, debits, credit, credits)
    assert SettlementTotals.parse(totals.field48()) == totals


def test_upload_items_are_40_digits_with_the_pan_right_aligned() -> None:
    items = [
        UploadItem("000123", "6222021234567890123", 1250),
        UploadItem("000124", "6222020000000000011", 1),
    ]
    digits = upload_items_field48(items)
    assert digits[:2] == "02"
    assert digits[2:42] == "0000012306222021234567890123000000001250"
    assert parse_upload_items(digits) == items
    assert parse_upload_end(upload_end_field48(9)) == 9


@pytest.mark.parametrize("bad", ["", "9", "01" + "0" * 39, "0x" + "0" * 40, "09" + "0" * 360])
def test_bad_upload_items_name_field_48(bad: str) -> None:
    with pytest.raises(DecodeError) as exc:
        parse_upload_items(bad)
    assert exc.value.field == "48"


def test_more_than_eight_items_is_a_bug_of_the_caller() -> None:
    with pytest.raises(ValueError, match=r"1\.\.8"):
        upload_items_field48([UploadItem("000001", "6222020000000000011", 1)] * 9)
