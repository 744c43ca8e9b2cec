"""The end-of-day (Z) report of one terminal: its journal copy against the host's transactions
(card) and the wallet provider's statement (wallet), line by line, each a GROUP BY over the day.

A line agrees when both sides count the same payments for the same fen. The wallet statement is
the provider's business day (Beijing, ``bill_date``); its rows belong to the terminal through
the journal copy's order numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import Connection, and_, func, select

from tillroll.console.auth import Principal
from tillroll.console.queries import day_bounds
from tillroll.store.tables import journal_entries, transactions, wallet_statement_rows


@dataclass(frozen=True)
class ZLine:
    key: str  # catalogue key of the line's name
    journal_count: int
    journal_minor: int
    other_source: str  # "host" | "statement"
    other_count: int
    other_minor: int

    @property
    def agrees(self) -> bool:
        return (self.journal_count, self.journal_minor) == (self.other_count, self.other_minor)


def _pair(conn: Connection, stmt: object) -> tuple[int, int]:
    row = conn.execute(stmt).one()  # type: ignore[call-overload]
    return int(row[0] or 0), int(row[1] or 0)


def z_report(conn: Connection, principal: Principal, tid: str, day: date) -> list[ZLine]:
    start, end, _ = day_bounds(conn, principal, day)
    je, tx, ws = journal_entries, transactions, wallet_statement_rows
    j_day = and_(
        je.c.tid == tid, je.c.created_at >= start, je.c.created_at < end, principal.scope_tid(je.c.tid)
    )
    h_day = and_(tx.c.tid == tid, tx.c.created_at >= start, tx.c.created_at < end, principal.scope(tx.c.mid))

    def journal(kind: str, states: tuple[str, ...]) -> tuple[int, int]:
        return _pair(
            conn,
            select(func.count(), func.sum(je.c.amount_minor)).where(
                j_day, je.c.kind == kind, je.c.state.in_(states)
            ),
        )

    def host(kind: str, status: str) -> tuple[int, int]:
        return _pair(
            conn,
            select(func.count(), func.sum(tx.c.amount_minor)).where(
                h_day, tx.c.kind == kind, tx.c.status == status
            ),
        )

    orders = select(je.c.order_no).where(j_day, je.c.rail == "wallet", je.c.order_no.is_not(None))
    bill_date = day.strftime("%Y%m%d")
    paid = _pair(
        conn,
        select(func.count(), func.sum(ws.c.total_minor)).where(
            ws.c.bill_date == bill_date, ws.c.trade_state == "SUCCESS", ws.c.out_trade_no.in_(orders)
        ),
    )
    refund_orders = select(je.c.order_no).where(j_day, je.c.kind == "qr_refund", je.c.order_no.is_not(None))
    refunded = _pair(
        conn,
        select(func.count(), func.sum(ws.c.refund_minor)).where(
            ws.c.bill_date == bill_date, ws.c.trade_state == "REFUND", ws.c.out_refund_no.in_(refund_orders)
        ),
    )
    lines = [
        ("z.card_sales", journal("sale", ("approved",)), "host", host("sale", "approved")),
        ("z.card_voided", journal("sale", ("voided",)), "host", host("sale", "voided")),
        ("z.card_refunds", journal("refund", ("approved",)), "host", host("refund", "approved")),
        ("z.wallet_paid", journal("qr_pay", ("success",)), "statement", paid),
        ("z.wallet_refunds", journal("qr_refund", ("approved",)), "statement", refunded),
    ]
    return [ZLine(key, j[0], j[1], src, o[0], o[1]) for key, j, src, o in lines]
