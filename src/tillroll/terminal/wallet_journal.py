"""Wallet orders and their refunds in the terminal's journal (the same SQLite file and metadata).

Two tables beside the card rail's ``txns``:

- ``wallet_orders``: one row per payment, written with its ``out_trade_no`` **before** the first
  byte of ``pay`` leaves; the state is a :class:`WalletState` (``wallet_states.py``), the
  deadline of the query schedule is ``query_until``; the payment code only **masked** (first 6,
  last 4: the full code is sent once and never kept), the customer's contact when one was given;
- ``wallet_refunds``: one row per refund, with its ``out_refund_no`` written before it is sent;
  the state is a :class:`RefundState` — the card rail's refund machine.

Trace numbers come from the journal's one STAN counter, so ``batch-trace`` names one entry of
either rail (slips, e-receipt files, ``pos reprint``). Every state change is checked against its
table; the caller passes the connection, so a change and its announcement (``announce.py``)
commit together.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Integer,
    RowMapping,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from tillroll.store.engine import inserted_id
from tillroll.terminal.journal import Journal, metadata
from tillroll.terminal.states import (
    RECEIPT_TRANSITIONS,
    REFUND_OPEN,
    REFUND_TRANSITIONS,
    ReceiptState,
    RefundState,
    check,
)
from tillroll.terminal.wallet_states import WALLET_OPEN, WALLET_TRANSITIONS, Brand, WalletState

wallet_orders = Table(
    "wallet_orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("out_trade_no", String(32), nullable=False, unique=True),
    Column("stan", String(6), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("state", String(12), nullable=False),  # WalletState
    Column("amount_minor", Integer, nullable=False),
    Column("brand", String(8), nullable=False),  # Brand, from the code's prefix
    Column("code_masked", String(24), nullable=False),  # first 6, last 4: never the whole code
    Column("contact", String(255)),  # the customer's phone or e-mail (--notify)
    Column("operator", String(3), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("query_until", DateTime, nullable=False),  # past it, an unknown order is reversed
    Column("transaction_id", String(64)),
    Column("paid_at", DateTime),  # time_end, in UTC
    Column("openid", String(64)),  # the wallet's masked user
    Column("err_code", String(32)),  # the last refusal / unknown cause code
    Column("note", Text),
    Column("queries", Integer, nullable=False, default=0),
    Column("reverse_attempts", Integer, nullable=False, default=0),
    Column("receipt", String(10), nullable=False),  # ReceiptState
    Column("e_receipt_path", Text),
    Column("prints", Integer, nullable=False, default=0),
)

wallet_refunds = Table(
    "wallet_refunds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("out_refund_no", String(32), nullable=False, unique=True),
    Column("order_id", Integer, ForeignKey("wallet_orders.id"), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("state", String(12), nullable=False),  # RefundState
    Column("amount_minor", Integer, nullable=False),
    Column("contact", String(255)),
    Column("operator", String(3), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("approved_at", DateTime),
    Column("refund_id", String(64)),
    Column("err_code", String(32)),
    Column("note", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("receipt", String(10), nullable=False),
    Column("e_receipt_path", Text),
    Column("prints", Integer, nullable=False, default=0),
)


@dataclass(frozen=True)
class WalletOrder:
    id: int
    out_trade_no: str
    stan: str
    batch: str
    state: WalletState
    amount_minor: int
    brand: Brand
    code_masked: str
    contact: str | None
    operator: str
    created_at: datetime
    updated_at: datetime
    query_until: datetime
    transaction_id: str | None
    paid_at: datetime | None
    openid: str | None
    err_code: str | None
    note: str | None
    queries: int
    reverse_attempts: int
    receipt: ReceiptState
    e_receipt_path: str | None
    prints: int


@dataclass(frozen=True)
class WalletRefund:
    id: int
    out_refund_no: str
    order_id: int
    stan: str
    batch: str
    state: RefundState
    amount_minor: int
    contact: str | None
    operator: str
    created_at: datetime
    updated_at: datetime
    approved_at: datetime | None
    refund_id: str | None
    err_code: str | None
    note: str | None
    attempts: int
    receipt: ReceiptState
    e_receipt_path: str | None
    prints: int


def _order(row: RowMapping) -> WalletOrder:
    values = dict(row)
    values["state"] = WalletState(values["state"])
    values["brand"] = Brand(values["brand"])
    values["receipt"] = ReceiptState(values["receipt"])
    return WalletOrder(**values)


def _refund(row: RowMapping) -> WalletRefund:
    values = dict(row)
    values["state"] = RefundState(values["state"])
    values["receipt"] = ReceiptState(values["receipt"])
    return WalletRefund(**values)


class WalletJournal:
    """The wallet's part of a :class:`Journal` (its engine, transactions, counters and alerts)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        metadata.create_all(journal.engine, tables=[wallet_orders, wallet_refunds])

    def begin(self) -> AbstractContextManager[Connection]:
        return self.journal.begin()

    # --- orders -----------------------------------------------------------------------------

    def create_order(
        self,
        conn: Connection,
        *,
        out_trade_no: str,
        stan: str,
        batch: str,
        amount_minor: int,
        brand: Brand,
        code_masked: str,
        contact: str | None,
        operator: str,
        now: datetime,
        query_until: datetime,
    ) -> int:
        return inserted_id(
            conn.execute(
                insert(wallet_orders).values(
                    out_trade_no=out_trade_no,
                    stan=stan,
                    batch=batch,
                    state=WalletState.CREATED.value,
                    amount_minor=amount_minor,
                    brand=brand.value,
                    code_masked=code_masked,
                    contact=contact,
                    operator=operator,
                    created_at=now,
                    updated_at=now,
                    query_until=query_until,
                    queries=0,
                    reverse_attempts=0,
                    receipt=ReceiptState.NONE.value,
                    prints=0,
                )
            )
        )

    def order(self, order_id: int, conn: Connection | None = None) -> WalletOrder:
        if conn is None:
            with self.begin() as c:
                return self.order(order_id, c)
        return _order(
            conn.execute(select(wallet_orders).where(wallet_orders.c.id == order_id)).mappings().one()
        )

    def find_order(self, out_trade_no: str) -> WalletOrder | None:
        with self.begin() as conn:
            row = (
                conn.execute(select(wallet_orders).where(wallet_orders.c.out_trade_no == out_trade_no))
                .mappings()
                .first()
            )
        return _order(row) if row else None

    def move_order(
        self, conn: Connection, order_id: int, new: WalletState, now: datetime, **values: Any
    ) -> None:
        current = WalletState(
            conn.execute(select(wallet_orders.c.state).where(wallet_orders.c.id == order_id)).scalar_one()
        )
        check(WALLET_TRANSITIONS, current, new)
        conn.execute(
            update(wallet_orders)
            .where(wallet_orders.c.id == order_id)
            .values(state=new.value, updated_at=now, **values)
        )

    def set_order(self, conn: Connection, order_id: int, now: datetime, **values: Any) -> None:
        conn.execute(
            update(wallet_orders).where(wallet_orders.c.id == order_id).values(updated_at=now, **values)
        )

    def count_order(self, order_id: int, now: datetime, *, column: str, code: str | None) -> None:
        """One more query or reverse sent (``column`` ``queries`` / ``reverse_attempts``)."""
        with self.begin() as conn:
            col = wallet_orders.c[column]
            conn.execute(
                update(wallet_orders)
                .where(wallet_orders.c.id == order_id)
                .values({col: col + 1, "err_code": code or None, "updated_at": now})
            )

    def open_orders(self) -> list[WalletOrder]:
        """Orders whose outcome is not final (oldest first)."""
        q = select(wallet_orders).where(wallet_orders.c.state.in_([s.value for s in WALLET_OPEN]))
        with self.begin() as conn:
            return [_order(r) for r in conn.execute(q.order_by(wallet_orders.c.id)).mappings()]

    def orders(self, limit: int = 200) -> list[WalletOrder]:
        with self.begin() as conn:
            rows = conn.execute(
                select(wallet_orders).order_by(wallet_orders.c.id.desc()).limit(limit)
            ).mappings()
            return [_order(r) for r in rows]

    def receipted_order(self, stan: str | None) -> WalletOrder | None:
        """The newest paid order with that trace (or of all)."""
        q = select(wallet_orders).where(wallet_orders.c.state == WalletState.SUCCESS.value)
        if stan is not None:
            q = q.where(wallet_orders.c.stan == stan)
        with self.begin() as conn:
            row = conn.execute(q.order_by(wallet_orders.c.id.desc()).limit(1)).mappings().first()
        return _order(row) if row else None

    def set_order_receipt(
        self, order_id: int, new: ReceiptState, now: datetime, *, e_receipt_path: str | None = None
    ) -> None:
        self._set_receipt(wallet_orders, order_id, new, now, e_receipt_path)

    # --- refunds ----------------------------------------------------------------------------

    def create_refund(
        self,
        conn: Connection,
        *,
        out_refund_no: str,
        order_id: int,
        stan: str,
        batch: str,
        amount_minor: int,
        contact: str | None,
        operator: str,
        now: datetime,
    ) -> int:
        return inserted_id(
            conn.execute(
                insert(wallet_refunds).values(
                    out_refund_no=out_refund_no,
                    order_id=order_id,
                    stan=stan,
                    batch=batch,
                    state=RefundState.REQUESTED.value,
                    amount_minor=amount_minor,
                    contact=contact,
                    operator=operator,
                    created_at=now,
                    updated_at=now,
                    attempts=0,
                    receipt=ReceiptState.NONE.value,
                    prints=0,
                )
            )
        )

    def refund(self, refund_id: int, conn: Connection | None = None) -> WalletRefund:
        if conn is None:
            with self.begin() as c:
                return self.refund(refund_id, c)
        q = select(wallet_refunds).where(wallet_refunds.c.id == refund_id)
        return _refund(conn.execute(q).mappings().one())

    def move_refund(
        self, conn: Connection, row_id: int, new: RefundState, now: datetime, **values: Any
    ) -> None:
        current = RefundState(
            conn.execute(select(wallet_refunds.c.state).where(wallet_refunds.c.id == row_id)).scalar_one()
        )
        check(REFUND_TRANSITIONS, current, new)
        conn.execute(
            update(wallet_refunds)
            .where(wallet_refunds.c.id == row_id)
            .values(state=new.value, updated_at=now, **values)
        )

    def set_refund(self, conn: Connection, row_id: int, now: datetime, **values: Any) -> None:
        conn.execute(
            update(wallet_refunds).where(wallet_refunds.c.id == row_id).values(updated_at=now, **values)
        )

    def refunds(
        self, order_id: int | None = None, *, open_only: bool = False, limit: int = 200
    ) -> list[WalletRefund]:
        q = select(wallet_refunds)
        if order_id is not None:
            q = q.where(wallet_refunds.c.order_id == order_id)
        if open_only:
            q = q.where(wallet_refunds.c.state.in_([s.value for s in REFUND_OPEN]))
        with self.begin() as conn:
            rows = conn.execute(q.order_by(wallet_refunds.c.id).limit(limit)).mappings()
            return [_refund(r) for r in rows]

    def set_refund_receipt(
        self, refund_id: int, new: ReceiptState, now: datetime, *, e_receipt_path: str | None = None
    ) -> None:
        self._set_receipt(wallet_refunds, refund_id, new, now, e_receipt_path)

    def _set_receipt(
        self, table: Table, row_id: int, new: ReceiptState, now: datetime, e_receipt_path: str | None
    ) -> None:
        with self.begin() as conn:
            current = ReceiptState(
                conn.execute(select(table.c.receipt).where(table.c.id == row_id)).scalar_one()
            )
            check(RECEIPT_TRANSITIONS, current, new)
            values: dict[str, Any] = {"receipt": new.value, "updated_at": now}
            if new is ReceiptState.PRINTED:
                values["prints"] = table.c.prints + 1
            if e_receipt_path is not None:
                values["e_receipt_path"] = e_receipt_path
            conn.execute(update(table).where(table.c.id == row_id).values(**values))
