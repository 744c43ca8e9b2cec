"""The daily statement (对账单, WALLET.md §4) as CSV: amounts in yuan, one row per event. Pure."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from tillroll.money import format_yuan

HEADER = (
    "trade_time",
    "mch_id",
    "out_trade_no",
    "transaction_id",
    "trade_state",
    "brand",
    "total_fee",
    "out_refund_no",
    "refund_id",
    "refund_fee",
    "refund_status",
)


@dataclass(frozen=True)
class BillPayment:
    at: datetime  # the instant, for ordering rows within one second
    time: str  # yyyyMMddHHmmss, Beijing: when it was paid
    out_trade_no: str
    transaction_id: str
    reversed: bool
    brand: str
    total_fee: int


@dataclass(frozen=True)
class BillRefund:
    at: datetime
    time: str  # yyyyMMddHHmmss, Beijing: when the refund was accepted
    out_trade_no: str
    transaction_id: str
    brand: str
    total_fee: int
    out_refund_no: str
    refund_id: str
    refund_fee: int
    status: str


def statement_rows(
    mch_id: str, payments: Iterable[BillPayment], refunds: Iterable[BillRefund]
) -> list[tuple[str, ...]]:
    """Every row after the header, in time order (a payment before a refund at the same instant)."""
    keyed: list[tuple[datetime, int, tuple[str, ...]]] = []
    for p in payments:
        state = "REVOKED" if p.reversed else "SUCCESS"
        row = (
            p.time,
            mch_id,
            p.out_trade_no,
            p.transaction_id,
            state,
            p.brand,
            format_yuan(p.total_fee),
            "",
            "",
            "",
            "",
        )
        keyed.append((p.at, 0, row))
    for r in refunds:
        row = (
            r.time,
            mch_id,
            r.out_trade_no,
            r.transaction_id,
            "REFUND",
            r.brand,
            format_yuan(r.total_fee),
            r.out_refund_no,
            r.refund_id,
            format_yuan(r.refund_fee),
            r.status,
        )
        keyed.append((r.at, 1, row))
    keyed.sort(key=lambda k: (k[0], k[1]))  # stable: the database's order at one instant
    return [row for _, _, row in keyed]


def statement_csv(mch_id: str, payments: Iterable[BillPayment], refunds: Iterable[BillRefund]) -> str:
    """The header line, then the rows; ``\\n`` line ends, no footer."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(statement_rows(mch_id, payments, refunds))
    return out.getvalue()
