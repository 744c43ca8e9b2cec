"""The host's settlement report and the ledger check."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from datetime import date, tzinfo
from pathlib import Path

from rich.table import Table
from sqlalchemy import Connection, case, func, select, true

from tillroll import ledger
from tillroll.clock import DEFAULT_MERCHANT_TZ, local_day_bounds, merchant_zone
from tillroll.host.card import TxnKind, TxnStatus
from tillroll.host.settlement import ClosedBy
from tillroll.money import format_yuan
from tillroll.store.tables import issuer_cards, merchants, settlements, transactions


@dataclass(frozen=True)
class ReportRow:
    mid: str
    merchant_name: str
    tid: str
    batches: int
    sale_count: int
    gross_minor: int
    refund_count: int
    refunds_minor: int
    auto_refund_count: int
    auto_refunds_minor: int
    fees_minor: int
    retained_minor: int  # refunded part of undone sales, paid back to the merchant (PROFILE §6)
    host_closed: int  # batches the host closed itself: lost journal or cut-over
    net_minor: int  # what the acquirer pays the merchant for the day


def settlement_report(
    conn: Connection, day: date, tz: tzinfo | None = None, *, mid: str | None = None
) -> list[ReportRow]:
    """Per merchant and terminal: the batches settled on `day`, and the automatic refunds
    booked that day (they belong to no terminal's totals, but reduce what the merchant is paid).
    `day` is a calendar day of the merchant's zone `tz` (default Asia/Shanghai); `mid` limits it
    to one merchant (in the SQL: a merchant's console never reads another's figures)."""
    start, end = local_day_bounds(day, tz or merchant_zone(DEFAULT_MERCHANT_TZ))
    names = {
        str(m): str(name)
        for m, name in conn.execute(
            select(merchants.c.mid, merchants.c.name).where(true() if mid is None else merchants.c.mid == mid)
        )
    }
    acc: dict[tuple[str, str], dict[str, int]] = {}

    def slot(mid: str, tid: str) -> dict[str, int]:
        return acc.setdefault((mid, tid), {f.name: 0 for f in fields(ReportRow)[3:]})

    settled = conn.execute(
        select(
            settlements.c.mid,
            settlements.c.tid,
            func.count(),
            func.sum(settlements.c.host_debit_count),
            func.sum(settlements.c.host_debit_minor),
            func.sum(settlements.c.host_credit_count),
            func.sum(settlements.c.host_credit_minor),
            func.sum(settlements.c.fee_minor),
            func.sum(settlements.c.retained_minor),
            func.sum(case((settlements.c.closed_by == ClosedBy.HOST, 1), else_=0)),
        )
        .where(
            settlements.c.settled_at >= start,
            settlements.c.settled_at < end,
            true() if mid is None else settlements.c.mid == mid,
        )
        .group_by(settlements.c.mid, settlements.c.tid)
    )
    for row_mid, tid, batches, sales, gross, refunds, refunded, fees, kept, by_host in settled:
        s = slot(row_mid, tid)
        s.update(
            batches=int(batches),
            sale_count=int(sales),
            gross_minor=int(gross),
            refund_count=int(refunds),
            refunds_minor=int(refunded),
            fees_minor=int(fees),
            retained_minor=int(kept),
            host_closed=int(by_host),
        )
    autos = conn.execute(
        select(transactions.c.mid, transactions.c.tid, func.count(), func.sum(transactions.c.amount_minor))
        .where(
            transactions.c.kind == TxnKind.AUTO_REFUND,
            transactions.c.status == TxnStatus.APPROVED,
            transactions.c.created_at >= start,
            transactions.c.created_at < end,
            true() if mid is None else transactions.c.mid == mid,
        )
        .group_by(transactions.c.mid, transactions.c.tid)
    )
    for row_mid, tid, count, total in autos:
        s = slot(row_mid, tid)
        s.update(auto_refund_count=int(count), auto_refunds_minor=int(total))
    rows = []
    for (row_mid, tid), s in sorted(acc.items()):
        s["net_minor"] = (
            s["gross_minor"]
            + s["retained_minor"]
            - s["refunds_minor"]
            - s["fees_minor"]
            - s["auto_refunds_minor"]
        )
        rows.append(ReportRow(mid=row_mid, merchant_name=names.get(row_mid, ""), tid=tid, **s))
    return rows


def report_table(rows: list[ReportRow], day: date) -> Table:
    table = Table(title=f"结算报表 Settlement report {day}")
    for col in ("MID", "商户 Merchant", "TID"):
        table.add_column(col)
    for col in ("批次 Batches", "主机关闭 Host-closed", "消费 Sales", "金额 Gross", "退货 Refunds",
                "退款额 Refunded", "自动退款 Auto", "撤销留存 Kept", "手续费 Fees", "应付 Net"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.mid, r.merchant_name, r.tid, str(r.batches), str(r.host_closed), str(r.sale_count),
            format_yuan(r.gross_minor), str(r.refund_count), format_yuan(r.refunds_minor),
            format_yuan(r.auto_refunds_minor), format_yuan(r.retained_minor), format_yuan(r.fees_minor),
            format_yuan(r.net_minor),
        )  # fmt: skip
    return table


def write_csv(rows: list[ReportRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(ReportRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def ledger_problems(conn: Connection) -> list[str]:
    """Rebuild every balance from the postings; name each place where they disagree."""
    problems = [
        f"postings in currency {cur} sum to {total}, not 0"
        for cur, total in ledger.imbalance(conn).items()
        if total
    ]
    balances = ledger.balances(conn)
    for card_id, pan, held in conn.execute(
        select(issuer_cards.c.id, issuer_cards.c.pan, issuer_cards.c.balance_minor)
    ):
        derived = balances.get(ledger.cardholder(card_id), 0)
        if derived != held:
            problems.append(f"card ending {pan[-4:]}: bank balance {held} but postings give {derived}")
    return problems
