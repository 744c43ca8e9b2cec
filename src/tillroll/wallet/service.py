"""The provider's operations over its database: each call is one transaction.

The decisions come from :mod:`tillroll.wallet.core`; this module reads rows, applies what was
decided, and leans on the unique constraints and conditional updates of :mod:`.tables` so that two
requests (or two processes) racing on one order number charge once: the loser of an INSERT race
gets an IntegrityError, rolls back and answers from the winner's row.

Time moves USERPAYING orders (confirmation, closing) and PROCESSING refunds. Both are applied
lazily whenever a call reads the order, and by :meth:`WalletService.sweep`, which the serve
process runs in the background so that a customer's balance and messages change at the right
moment even when nobody asks.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError

from tillroll.clock import Clock, local_day_bounds, to_merchant_local
from tillroll.money import format_yuan
from tillroll.store.engine import inserted_id
from tillroll.wallet import core
from tillroll.wallet.behaviour import parse_behaviour
from tillroll.wallet.bill import BillPayment, BillRefund, statement_csv
from tillroll.wallet.codes import Brand, mask_code, mask_user
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.core import ErrCode
from tillroll.wallet.states import (
    PAID_STATES,
    OrderEvent,
    OrderState,
    RefundStatus,
    check_refund_step,
    next_state,
)
from tillroll.wallet.tables import codes, merchants, messages, notifications, orders, refunds, users

log = logging.getLogger(__name__)
BEIJING = ZoneInfo("Asia/Shanghai")
RACE_RETRIES_MAX = 3
SWEEP_BATCH_MAX = 200

Row = RowMapping


def wallet_time(instant: datetime) -> str:
    """``yyyyMMddHHmmss`` in Beijing time (WALLET.md §1)."""
    return to_merchant_local(instant, BEIJING).strftime("%Y%m%d%H%M%S")


@dataclass
class Reply:
    """A business answer: the fields after return_code (result_code, err_code, …)."""

    fields: dict[str, str | int]
    delay_s: float = 0.0  # slow:S — the edge waits this long before answering

    @property
    def result_code(self) -> str:
        return str(self.fields["result_code"])


def fail(err: ErrCode, why: str = "", **extra: str | int) -> Reply:
    text = core.ERR_TEXT[err] + (f" ({why})" if why else "")
    return Reply({"result_code": "FAIL", "err_code": str(err), "err_code_des": text, **extra})


def ok(**fields: str | int) -> Reply:
    return Reply({"result_code": "SUCCESS", **fields})


class _CodeTaken(Exception):
    """A concurrent pay under another order number used the code first (roll back)."""


def _order_view(row: Row) -> core.OrderView:
    return core.OrderView(
        state=OrderState(row["state"]),
        auth_code=row["auth_code"],
        total_fee=row["total_fee"],
        created_at=row["created_at"],
        confirm_at=row["confirm_at"],
        close_at=row["close_at"],
        err_code=row["err_code"],
        refunded_fee=row["refunded_fee"],
        refund_count=row["refund_count"],
    )


def _new_id(prefix: str, now: datetime, digits: int) -> str:
    day = to_merchant_local(now, BEIJING).strftime("%Y%m%d")
    return prefix + day + "".join(str(secrets.randbelow(10)) for _ in range(digits))


class FifoLock:
    """A lock handed to its waiters in the order they came (threading.Lock promises no order)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        self._held = False

    def __enter__(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # the releaser hands the lock over: _held stays True

    def __exit__(self, *_exc: object) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False


@dataclass
class WalletService:
    engine: Engine
    clock: Clock
    config: WalletConfig = field(default_factory=WalletConfig)
    _write_turns: FifoLock = field(default_factory=lambda: FifoLock(), init=False, repr=False)
    _keys: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction (every one in this process goes through here, the notifier's too).

        On SQLite the threads of this process take turns, first come first served: the engine
        begins every transaction, reads included, with BEGIN IMMEDIATE, so SQLite lets one in
        at a time anyway, and its busy handler (sleeps growing to 100 ms, no queue) made some
        pays wait seconds at 50 concurrent clients. Other processes on the same file still meet
        at SQLite's own lock; PostgreSQL needs no turns."""
        if self.engine.dialect.name != "sqlite":
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_turns, self.engine.begin() as conn:
            yield conn

    # ---- reading ---------------------------------------------------------------------------

    def known_key(self, mch_id: str) -> str | None:
        """The merchant's key if it was read before (no database, no waiting)."""
        return self._keys.get(mch_id)

    def merchant_key(self, mch_id: str) -> str | None:
        """The merchant's key. Found keys are kept in memory: no call changes a key, and this read
        comes first in every request. An unknown merchant is asked again each time (it may be
        added while the server runs)."""
        key = self._keys.get(mch_id)
        if key is not None:
            return key
        with self.transaction() as conn:
            found = conn.execute(sa.select(merchants.c.key).where(merchants.c.mch_id == mch_id)).scalar()
        if found is None:
            return None
        self._keys[mch_id] = str(found)
        return str(found)

    # ---- the calls -------------------------------------------------------------------------

    def pay(self, mch_id: str, req: core.PayRequest) -> Reply:
        for _ in range(RACE_RETRIES_MAX):
            try:
                with self.transaction() as conn:
                    return self._pay(conn, mch_id, req)
            except IntegrityError:
                continue  # a concurrent pay made this order first: answer from its row
            except _CodeTaken:
                continue  # a concurrent pay used the code: the next try sees by whom
        raise RuntimeError(f"pay {req.out_trade_no}: still racing after {RACE_RETRIES_MAX} tries")

    def query(self, mch_id: str, out_trade_no: str) -> Reply:
        with self.transaction() as conn:
            row = self._order(conn, mch_id, out_trade_no)
            if row is None:
                return fail(ErrCode.ORDERNOTEXIST)
            row = self._advance(conn, row, self.clock.now())
            return self._query_reply(row)

    def reverse(self, mch_id: str, out_trade_no: str) -> Reply:
        for _ in range(RACE_RETRIES_MAX):
            try:
                with self.transaction() as conn:
                    return self._reverse(conn, mch_id, out_trade_no)
            except IntegrityError:
                continue  # a concurrent pay or reverse made the order first
        raise RuntimeError(f"reverse {out_trade_no}: still racing after {RACE_RETRIES_MAX} tries")

    def refund(self, mch_id: str, req: core.RefundRequest) -> Reply:
        for _ in range(RACE_RETRIES_MAX):
            try:
                with self.transaction() as conn:
                    return self._refund(conn, mch_id, req)
            except IntegrityError:
                continue  # a concurrent refund with this out_refund_no came first
        raise RuntimeError(f"refund {req.out_refund_no}: still racing after {RACE_RETRIES_MAX} tries")

    def refund_query(self, mch_id: str, out_refund_no: str) -> Reply:
        with self.transaction() as conn:
            ref = self._refund_row(conn, mch_id, out_refund_no)
            if ref is None:
                return fail(ErrCode.REFUNDNOTEXIST)
            ref = self._settle_refund(conn, ref, self.clock.now())
            order = conn.execute(sa.select(orders).where(orders.c.id == ref["order_id"])).mappings().one()
            return self._refund_reply(order, ref)

    def bill(self, mch_id: str, day: date) -> str:
        start, end = local_day_bounds(day, BEIJING)
        with self.transaction() as conn:
            paid = conn.execute(
                sa.select(orders)
                .where(orders.c.mch_id == mch_id, orders.c.paid_at >= start, orders.c.paid_at < end)
                .order_by(orders.c.paid_at, orders.c.id)
            ).mappings()
            payments = [
                BillPayment(
                    at=o["paid_at"],
                    time=wallet_time(o["paid_at"]),
                    out_trade_no=o["out_trade_no"],
                    transaction_id=o["transaction_id"],
                    reversed=o["state"] == OrderState.REVOKED,
                    brand=o["brand"],
                    total_fee=o["total_fee"],
                )
                for o in paid
            ]
            refunded = conn.execute(
                sa.select(
                    refunds,
                    orders.c.out_trade_no,
                    orders.c.transaction_id,
                    orders.c.brand,
                    orders.c.total_fee,
                )
                .join(orders, orders.c.id == refunds.c.order_id)
                .where(refunds.c.mch_id == mch_id, refunds.c.created_at >= start, refunds.c.created_at < end)
                .order_by(refunds.c.created_at, refunds.c.id)
            ).mappings()
            refund_rows = [
                BillRefund(
                    at=r["created_at"],
                    time=wallet_time(r["created_at"]),
                    out_trade_no=r["out_trade_no"],
                    transaction_id=r["transaction_id"],
                    brand=r["brand"],
                    total_fee=r["total_fee"],
                    out_refund_no=r["out_refund_no"],
                    refund_id=r["refund_id"],
                    refund_fee=r["refund_fee"],
                    status=r["status"],
                )
                for r in refunded
            ]
        return statement_csv(mch_id, payments, refund_rows)

    def sweep(self) -> int:
        """Apply what time has decided (confirmations, closes, refunds done); how many changed."""
        now = self.clock.now()
        changed = 0
        with self.transaction() as conn:
            due_orders = (
                conn.execute(
                    sa.select(orders.c.id)
                    .where(
                        orders.c.state == OrderState.USERPAYING,
                        sa.or_(orders.c.close_at <= now, orders.c.confirm_at <= now),
                    )
                    .limit(SWEEP_BATCH_MAX)
                )
                .scalars()
                .all()
            )
            due_refunds = (
                conn.execute(
                    sa.select(refunds.c.id)
                    .where(refunds.c.status == RefundStatus.PROCESSING, refunds.c.due_at <= now)
                    .limit(SWEEP_BATCH_MAX)
                )
                .scalars()
                .all()
            )
        for order_id in due_orders:
            with self.transaction() as conn:
                row = (
                    conn.execute(sa.select(orders).where(orders.c.id == order_id).with_for_update())
                    .mappings()
                    .one()
                )
                changed += self._advance(conn, row, now)["state"] != row["state"]
        for refund_id in due_refunds:
            with self.transaction() as conn:
                ref = (
                    conn.execute(sa.select(refunds).where(refunds.c.id == refund_id).with_for_update())
                    .mappings()
                    .one()
                )
                changed += self._settle_refund(conn, ref, now)["status"] != ref["status"]
        return changed

    # ---- pay -------------------------------------------------------------------------------

    def _pay(self, conn: Connection, mch_id: str, req: core.PayRequest) -> Reply:
        now = self.clock.now()
        row = self._order(conn, mch_id, req.out_trade_no)
        if row is not None:
            row = self._advance(conn, row, now)
            return fail(core.repeated_pay(_order_view(row), req))
        code = conn.execute(sa.select(codes).where(codes.c.code == req.auth_code)).mappings().first()
        refusal = core.check_code(
            req.auth_code, core.CodeView(code["issued_at"], code["used"]) if code else None, now, self.config
        )
        if code is not None and code["used"]:
            # A pay under this very order number may have used the code and committed between
            # our two reads (PostgreSQL reads each statement afresh): it committed the order with
            # the code, so the order is visible now. Answer from it, as for any repeated pay.
            row = self._order(conn, mch_id, req.out_trade_no)
            if row is not None:
                return fail(core.repeated_pay(_order_view(self._advance(conn, row, now)), req))
        if refusal is not None or code is None:
            why = refusal.why if refusal else ""
            log.info("pay %s refused: %s (%s)", req.out_trade_no, why, mask_code(req.auth_code))
            return fail(refusal.err_code if refusal else ErrCode.AUTH_CODE_INVALID, why)
        user = (
            conn.execute(sa.select(users).where(users.c.id == code["user_id"]).with_for_update())
            .mappings()
            .one()
        )
        view = core.UserView(
            balance_fen=user["balance_fen"],
            brand=Brand(user["brand"]),
            behaviour=parse_behaviour(user["behaviour"]),
            error_once_spent=user["error_once_spent"],
        )
        decision = core.new_order(view, req, now, self.config)
        paid = decision.state is OrderState.SUCCESS
        # An IntegrityError here: a concurrent pay made the order first; pay() answers from it.
        order_id = inserted_id(
            conn.execute(
                orders.insert().values(
                    mch_id=mch_id,
                    out_trade_no=req.out_trade_no,
                    state=decision.state,
                    auth_code=req.auth_code,
                    user_id=user["id"],
                    brand=user["brand"],
                    total_fee=req.total_fee,
                    body=req.body,
                    transaction_id=self._transaction_id(user["brand"], now) if paid else None,
                    err_code=decision.err_code,
                    created_at=now,
                    confirm_at=decision.confirm_at,
                    close_at=decision.close_at,
                    paid_at=now if paid else None,
                )
            )
        )
        taken = conn.execute(
            codes.update().where(codes.c.code == req.auth_code, codes.c.used.is_(False)).values(used=True)
        )
        if taken.rowcount != 1:
            raise _CodeTaken
        if decision.spend_error_once:
            conn.execute(users.update().where(users.c.id == user["id"]).values(error_once_spent=True))
        row = conn.execute(sa.select(orders).where(orders.c.id == order_id)).mappings().one()
        if paid:
            self._charge(conn, row, now)
        if decision.answer is not None:
            return Reply(fail(decision.answer).fields, delay_s=decision.delay_s)
        return Reply(self._paid_reply(conn, row).fields, delay_s=decision.delay_s)

    def _transaction_id(self, brand: str, now: datetime) -> str:
        return _new_id("4200" if brand == Brand.WX else "2026", now, 16)

    def _charge(self, conn: Connection, order: Row, now: datetime) -> None:
        """The user pays a paid order: balance, merchant's takings, message, notification."""
        fee = order["total_fee"]
        debited = conn.execute(
            users.update()
            .where(users.c.id == order["user_id"], users.c.balance_fen >= fee)
            .values(balance_fen=users.c.balance_fen - fee)
        )
        if debited.rowcount != 1:  # the user's row is locked and was checked: a bug if it happens
            raise RuntimeError(f"order {order['out_trade_no']}: balance changed under a lock")
        merchant = self._move_takings(conn, order["mch_id"], fee)
        self._message(conn, order["user_id"], now, core.paid_text(merchant["name"], format_yuan(fee)))
        if merchant["notify_url"]:
            conn.execute(
                notifications.insert().values(
                    order_id=order["id"], url=merchant["notify_url"], next_attempt_at=now
                )
            )

    def _move_takings(self, conn: Connection, mch_id: str, delta_fen: int) -> Row:
        conn.execute(
            merchants.update()
            .where(merchants.c.mch_id == mch_id)
            .values(takings_fen=merchants.c.takings_fen + delta_fen)
        )
        return conn.execute(sa.select(merchants).where(merchants.c.mch_id == mch_id)).mappings().one()

    def _message(self, conn: Connection, user_id: int, now: datetime, text: str) -> None:
        conn.execute(messages.insert().values(user_id=user_id, at=now, text=text))

    # ---- time ------------------------------------------------------------------------------

    def _advance(self, conn: Connection, row: Row, now: datetime) -> Row:
        """The order as time has made it by ``now`` (confirmed or closed), changed at most once."""
        due = core.due(_order_view(row), now)
        if due is None:
            return row
        what, at = due
        if what is core.Due.CONFIRM:
            balance = conn.execute(
                sa.select(users.c.balance_fen).where(users.c.id == row["user_id"]).with_for_update()
            ).scalar_one()
            event = core.confirm_event(balance, row["total_fee"])
        else:
            event = OrderEvent.CLOSE
        state = next_state(OrderState(row["state"]), event)
        values: dict[str, Any] = {"state": state}
        if state is OrderState.SUCCESS:
            values |= {"paid_at": at, "transaction_id": self._transaction_id(row["brand"], at)}
        elif state is OrderState.PAYERROR:
            values["err_code"] = ErrCode.NOTENOUGH
        else:
            values["closed_at"] = at
        moved = conn.execute(
            orders.update()
            .where(orders.c.id == row["id"], orders.c.state == OrderState.USERPAYING)
            .values(**values)
        )
        fresh = conn.execute(sa.select(orders).where(orders.c.id == row["id"])).mappings().one()
        if moved.rowcount == 1 and state is OrderState.SUCCESS:
            self._charge(conn, fresh, at)
        return fresh

    # ---- reverse ---------------------------------------------------------------------------

    def _reverse(self, conn: Connection, mch_id: str, out_trade_no: str) -> Reply:
        now = self.clock.now()
        row = self._order(conn, mch_id, out_trade_no)
        if row is not None:
            row = self._advance(conn, row, now)
        decision = core.decide_reverse(_order_view(row) if row is not None else None, now, self.config)
        action = decision.action
        if action is core.ReverseAction.REFUSE:
            assert decision.err_code is not None
            return fail(decision.err_code, decision.why, recall="Y" if decision.recall else "N")
        if action is core.ReverseAction.TOMBSTONE:
            conn.execute(
                orders.insert().values(
                    mch_id=mch_id,
                    out_trade_no=out_trade_no,
                    state=next_state(OrderState.REVOKED, OrderEvent.REVERSE),
                    created_at=now,
                    reversed_at=now,
                )
            )
            return ok(recall="N")
        assert row is not None
        if action is core.ReverseAction.NOTHING:
            return ok(recall="N")
        old = OrderState(row["state"])
        moved = conn.execute(
            orders.update()
            .where(orders.c.id == row["id"], orders.c.state == old)
            .values(state=next_state(old, OrderEvent.REVERSE), reversed_at=now)
        )
        if moved.rowcount == 1 and action is core.ReverseAction.REVOKE_AND_RETURN:
            fee = row["total_fee"]
            conn.execute(
                users.update()
                .where(users.c.id == row["user_id"])
                .values(balance_fen=users.c.balance_fen + fee)
            )
            merchant = self._move_takings(conn, mch_id, -fee)
            self._message(conn, row["user_id"], now, core.reversed_text(merchant["name"], format_yuan(fee)))
        return ok(recall="N")

    # ---- refunds ---------------------------------------------------------------------------

    def _refund(self, conn: Connection, mch_id: str, req: core.RefundRequest) -> Reply:
        now = self.clock.now()
        ref = self._refund_row(conn, mch_id, req.out_refund_no)
        if ref is not None:
            order = conn.execute(sa.select(orders).where(orders.c.id == ref["order_id"])).mappings().one()
            err = core.repeated_refund(
                core.RefundView(order["out_trade_no"], order["total_fee"], ref["refund_fee"]), req
            )
            if err is not None:
                return fail(err)
            return self._refund_reply(order, self._settle_refund(conn, ref, now))
        row = self._order(conn, mch_id, req.out_trade_no)
        if row is not None:
            row = self._advance(conn, row, now)
        err = core.check_refund(_order_view(row) if row is not None else None, req, self.config)
        if err is not None or row is None:
            return fail(err or ErrCode.ORDERNOTEXIST)
        refund_id = _new_id("50", now, 19)
        conn.execute(
            refunds.insert().values(
                mch_id=mch_id,
                out_refund_no=req.out_refund_no,
                order_id=row["id"],
                refund_id=refund_id,
                refund_fee=req.refund_fee,
                status=RefundStatus.PROCESSING,
                created_at=now,
                due_at=now + timedelta(seconds=self.config.refund_settle_s),
            )
        )
        conn.execute(
            orders.update()
            .where(orders.c.id == row["id"])
            .values(
                state=next_state(OrderState(row["state"]), OrderEvent.REFUND),
                refunded_fee=orders.c.refunded_fee + req.refund_fee,
                refund_count=orders.c.refund_count + 1,
            )
        )
        ref = self._refund_row(conn, mch_id, req.out_refund_no)
        assert ref is not None
        order = conn.execute(sa.select(orders).where(orders.c.id == row["id"])).mappings().one()
        return self._refund_reply(order, self._settle_refund(conn, ref, now))

    def _settle_refund(self, conn: Connection, ref: Row, now: datetime) -> Row:
        """A PROCESSING refund past its time becomes SUCCESS: the money is back with the customer."""
        if ref["status"] != RefundStatus.PROCESSING or ref["due_at"] > now:
            return ref
        new = check_refund_step(RefundStatus.PROCESSING, RefundStatus.SUCCESS)
        moved = conn.execute(
            refunds.update()
            .where(refunds.c.id == ref["id"], refunds.c.status == RefundStatus.PROCESSING)
            .values(status=new, done_at=now)
        )
        if moved.rowcount == 1:
            order = conn.execute(sa.select(orders).where(orders.c.id == ref["order_id"])).mappings().one()
            fee = ref["refund_fee"]
            conn.execute(
                users.update()
                .where(users.c.id == order["user_id"])
                .values(balance_fen=users.c.balance_fen + fee)
            )
            merchant = self._move_takings(conn, order["mch_id"], -fee)
            self._message(conn, order["user_id"], now, core.refunded_text(merchant["name"], format_yuan(fee)))
        return conn.execute(sa.select(refunds).where(refunds.c.id == ref["id"])).mappings().one()

    # ---- rows and replies ------------------------------------------------------------------

    def _order(self, conn: Connection, mch_id: str, out_trade_no: str) -> Row | None:
        return (
            conn.execute(
                sa.select(orders)
                .where(orders.c.mch_id == mch_id, orders.c.out_trade_no == out_trade_no)
                .with_for_update()
            )
            .mappings()
            .first()
        )

    def _refund_row(self, conn: Connection, mch_id: str, out_refund_no: str) -> Row | None:
        return (
            conn.execute(
                sa.select(refunds)
                .where(refunds.c.mch_id == mch_id, refunds.c.out_refund_no == out_refund_no)
                .with_for_update()
            )
            .mappings()
            .first()
        )

    def _paid_reply(self, conn: Connection, row: Row) -> Reply:
        name = conn.execute(sa.select(users.c.name).where(users.c.id == row["user_id"])).scalar_one()
        return ok(
            out_trade_no=row["out_trade_no"],
            transaction_id=row["transaction_id"],
            total_fee=row["total_fee"],
            time_end=wallet_time(row["paid_at"]),
            brand=row["brand"],
            openid=mask_user(str(name)),
        )

    def _query_reply(self, row: Row) -> Reply:
        state = OrderState(row["state"])
        fields: dict[str, str | int] = {"out_trade_no": row["out_trade_no"], "trade_state": str(state)}
        if row["brand"]:
            fields["brand"] = row["brand"]
        if row["total_fee"] is not None:
            fields["total_fee"] = row["total_fee"]
        if row["paid_at"] is not None:
            fields |= {"transaction_id": row["transaction_id"], "time_end": wallet_time(row["paid_at"])}
        if state in PAID_STATES and row["refunded_fee"]:
            fields["refunded_fee"] = row["refunded_fee"]
        if state is OrderState.PAYERROR and row["err_code"]:
            fields["err_code"] = row["err_code"]
        return ok(**fields)

    def _refund_reply(self, order: Row, ref: Row) -> Reply:
        return ok(
            out_trade_no=order["out_trade_no"],
            transaction_id=order["transaction_id"],
            out_refund_no=ref["out_refund_no"],
            refund_id=ref["refund_id"],
            refund_fee=ref["refund_fee"],
            total_fee=order["total_fee"],
            refund_status=ref["status"],
        )
