"""Field 48 of settlement (0500/0510) and batch upload (0320), PROFILE §3. Pure.

Both the terminal and the host speak these formats; they live here, with the profile, so that
neither has to know the other.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from tillroll.iso8583.errors import DecodeError

UPLOAD_ITEMS_MAX = 8
UPLOAD_ITEM_DIGITS = 40
ORG_DOMESTIC = "00"


class SettlementFlag(enum.StrEnum):
    """0-based digit 30 of the 0510's field 48."""

    REQUEST = "0"
    BALANCED = "1"
    NOT_BALANCED = "2"
    ERROR = "3"


@dataclass(frozen=True)
class SettlementTotals:
    """Debits: approved sales neither voided nor reversed; credits: approved refunds."""

    debit_minor: int
    debit_count: int
    credit_minor: int
    credit_count: int

    def digits(self, flag: SettlementFlag) -> str:
        """31 digits: debit amount n12, count n3, credit amount n12, count n3, flag n1."""
        debit = f"{self.debit_minor:012d}{self.debit_count:03d}"
        return f"{debit}{self.credit_minor:012d}{self.credit_count:03d}{flag.value}"

    def field48(self, flag: SettlementFlag = SettlementFlag.REQUEST) -> str:
        """62 digits: these (domestic) figures, then zero figures for foreign cards."""
        return self.digits(flag) + NO_TOTALS.digits(SettlementFlag.REQUEST)

    @classmethod
    def parse(cls, field48: str) -> SettlementTotals:
        """The domestic figures of a field 48 (its first 30 digits)."""
        if len(field48) < 30 or not field48[:30].isdigit():
            raise DecodeError(f"settlement totals {field48!r} are not 30 digits", field="48")
        d = field48
        return cls(int(d[0:12]), int(d[12:15]), int(d[15:27]), int(d[27:30]))


NO_TOTALS = SettlementTotals(0, 0, 0, 0)


def settlement_flag(field48: str) -> SettlementFlag:
    try:
        return SettlementFlag(field48[30])
    except (IndexError, ValueError):
        raise DecodeError(f"field 48 {field48!r} has no settlement flag at digit 30", field="48") from None


@dataclass(frozen=True)
class UploadItem:
    stan: str
    pan: str
    amount_minor: int
    org: str = ORG_DOMESTIC


def upload_items_field48(items: Sequence[UploadItem]) -> str:
    """Item count n2, then up to 8 items of 40 digits: org n2 + STAN n6 + PAN n20 + amount n12."""
    if not 1 <= len(items) <= UPLOAD_ITEMS_MAX:
        raise ValueError(f"a batch upload message carries 1..{UPLOAD_ITEMS_MAX} items, not {len(items)}")
    body = "".join(f"{i.org}{i.stan}{i.pan:0>20}{i.amount_minor:012d}" for i in items)
    return f"{len(items):02d}{body}"


def parse_upload_items(field48: str) -> list[UploadItem]:
    if len(field48) < 2 or not field48.isdigit():
        raise DecodeError("batch upload field 48 is not digits with an item count", field="48")
    count = int(field48[:2])
    if not 1 <= count <= UPLOAD_ITEMS_MAX or len(field48) < 2 + count * UPLOAD_ITEM_DIGITS:
        raise DecodeError(f"batch upload field 48 does not hold {count} items", field="48")
    items = []
    for n in range(count):
        item = field48[2 + n * UPLOAD_ITEM_DIGITS : 2 + (n + 1) * UPLOAD_ITEM_DIGITS]
        items.append(
            UploadItem(
                stan=item[2:8], pan=item[8:28].lstrip("0"), amount_minor=int(item[28:40]), org=item[:2]
            )
        )
    return items


def upload_end_field48(total_items: int) -> str:
    return f"{total_items:04d}"


def parse_upload_end(field48: str) -> int:
    if len(field48) < 4 or not field48[:4].isdigit():
        raise DecodeError("end-of-upload field 48 is not a 4-digit item count", field="48")
    return int(field48[:4])
