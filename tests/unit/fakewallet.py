"""A fake wallet gateway for the terminal's unit tests.

Why a fake: these tests drive the terminal's state machine and the outcome verdict through
orders of events the real provider (``tillroll wallet serve``, used by the integration tests)
produces only by timing — a confirmation landing between the last query and the reverse, a
reverse refused several times, an answer lost after the money moved — and they run the 45 s
query window on a fake clock in no time. The fake keeps a tiny model of the wallet (who was
charged, what is refunded) so the tests check money, not call counts; what it answers follows
WALLET.md's outcomes, judged by the same typed results the HTTP gateway returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tillroll.terminal.wallet_gateway import (
    PayOutcome,
    PayResult,
    QueryOutcome,
    QueryResult,
    RefundOutcome,
    RefundQueryOutcome,
    RefundQueryResult,
    RefundResult,
    RefundStatus,
    ReverseOutcome,
    ReverseResult,
    TradeState,
)


@dataclass
class FakeOrder:
    out_trade_no: str
    total_fee: int
    state: TradeState
    charged: bool = False
    refunded_minor: int = 0
    reversed_back: bool = False  # the whole amount went back by the reverse


@dataclass
class FakeWallet:
    """``behaviour`` for the next pay: ok | userpaying | never | systemerror-paid | lost-paid |
    refuse:CODE | not-sent | lost-unpaid. ``confirm_after_queries`` turns USERPAYING into SUCCESS
    after that many queries; ``on_reverse`` runs just before a reverse is judged (the race)."""

    behaviour: str = "ok"
    confirm_after_queries: int | None = None
    reverse_again: int = 0  # reverses answered AGAIN (USERPAYING) before one is accepted
    reverse_down: bool = False  # reverses get no answer
    refund_down: int = 0  # refunds with no answer before one gets through
    refund_processing_queries: int = 0  # refund/query answers PROCESSING this many times
    query_down: bool = False
    on_reverse: Callable[[FakeOrder], None] | None = None
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    tombstones: set[str] = field(default_factory=set)
    refunds: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # no -> (order, fee, status)
    calls: list[str] = field(default_factory=list)
    codes_seen: list[str] = field(default_factory=list)
    queries: int = 0
    closed: bool = False

    def charged_minor(self) -> int:
        """What the customers are out of pocket now."""
        return sum(
            o.total_fee - o.refunded_minor for o in self.orders.values() if o.charged and not o.reversed_back
        )

    def pay(self, *, out_trade_no: str, auth_code: str, total_fee: int, body: str) -> PayResult:
        self.calls.append("pay")
        self.codes_seen.append(auth_code)
        b = self.behaviour
        if b == "not-sent":
            return PayResult(PayOutcome.NOT_SENT, "NOT_SENT", "cannot connect")
        if out_trade_no in self.tombstones:
            return PayResult(PayOutcome.REFUSED, "ORDERREVERSED")
        if b.startswith("refuse:"):
            return PayResult(PayOutcome.REFUSED, b.split(":", 1)[1])
        if b in ("ok", "systemerror-paid", "lost-paid"):
            self.orders[out_trade_no] = FakeOrder(out_trade_no, total_fee, TradeState.SUCCESS, charged=True)
            if b == "ok":
                return PayResult(PayOutcome.PAID, transaction_id=f"T{out_trade_no}", total_fee=total_fee)
            return PayResult(PayOutcome.UNKNOWN, "SYSTEMERROR" if b == "systemerror-paid" else "NO_ANSWER")
        if b == "lost-unpaid":
            return PayResult(PayOutcome.UNKNOWN, "NO_ANSWER")
        self.orders[out_trade_no] = FakeOrder(out_trade_no, total_fee, TradeState.USERPAYING)
        return PayResult(PayOutcome.USER_PAYING, "USERPAYING")

    def confirm(self, order: FakeOrder) -> None:
        if order.state is TradeState.USERPAYING:
            order.state, order.charged = TradeState.SUCCESS, True

    def query(self, *, out_trade_no: str, total_fee: int) -> QueryResult:
        self.calls.append("query")
        self.queries += 1
        if self.query_down:
            return QueryResult(QueryOutcome.UNKNOWN, None, "NO_ANSWER")
        order = self.orders.get(out_trade_no)
        if order is None:
            if out_trade_no in self.tombstones:
                return QueryResult(QueryOutcome.FOUND, TradeState.REVOKED)
            return QueryResult(QueryOutcome.NOT_FOUND, None, "ORDERNOTEXIST")
        if self.confirm_after_queries is not None and self.queries >= self.confirm_after_queries:
            self.confirm(order)
        tid = f"T{out_trade_no}" if order.charged else ""
        return QueryResult(QueryOutcome.FOUND, order.state, transaction_id=tid, total_fee=order.total_fee)

    def reverse(self, *, out_trade_no: str) -> ReverseResult:
        self.calls.append("reverse")
        if self.reverse_down:
            return ReverseResult(ReverseOutcome.UNKNOWN, "NO_ANSWER")
        order = self.orders.get(out_trade_no)
        if order is not None and self.on_reverse is not None:
            self.on_reverse(order)
        if self.reverse_again > 0:
            self.reverse_again -= 1
            return ReverseResult(ReverseOutcome.AGAIN, "USERPAYING")
        if order is None:
            self.tombstones.add(out_trade_no)
            return ReverseResult(ReverseOutcome.REVERSED)
        if order.charged and not order.reversed_back:
            order.reversed_back = True
        order.state = TradeState.REVOKED
        return ReverseResult(ReverseOutcome.REVERSED)

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, total_fee: int, refund_fee: int
    ) -> RefundResult:
        self.calls.append("refund")
        if self.refund_down > 0:
            self.refund_down -= 1
            return RefundResult(RefundOutcome.UNKNOWN, None, "NO_ANSWER")
        if out_refund_no in self.refunds:
            _, _, status = self.refunds[out_refund_no]
            return RefundResult(RefundOutcome.ACCEPTED, RefundStatus(status), refund_id=f"R{out_refund_no}")
        order = self.orders.get(out_trade_no)
        if order is None or not order.charged or order.reversed_back:
            return RefundResult(RefundOutcome.REFUSED, None, "ORDERNOTPAID")
        if order.refunded_minor + refund_fee > order.total_fee:
            return RefundResult(RefundOutcome.REFUSED, None, "REFUND_FEE_INVALID")
        order.refunded_minor += refund_fee
        order.state = TradeState.REFUND
        status = "PROCESSING" if self.refund_processing_queries else "SUCCESS"
        self.refunds[out_refund_no] = (out_trade_no, refund_fee, status)
        return RefundResult(RefundOutcome.ACCEPTED, RefundStatus(status), refund_id=f"R{out_refund_no}")

    def refund_query(self, *, out_refund_no: str) -> RefundQueryResult:
        self.calls.append("refund_query")
        if out_refund_no not in self.refunds:
            return RefundQueryResult(RefundQueryOutcome.NOT_FOUND, None, "REFUNDNOTEXIST")
        order_no, fee, status = self.refunds[out_refund_no]
        if status == "PROCESSING":
            if self.refund_processing_queries > 0:
                self.refund_processing_queries -= 1
            if self.refund_processing_queries == 0:
                status = "SUCCESS"
                self.refunds[out_refund_no] = (order_no, fee, status)
        return RefundQueryResult(RefundQueryOutcome.FOUND, RefundStatus(status), refund_fee=fee)

    def close(self) -> None:
        self.closed = True
