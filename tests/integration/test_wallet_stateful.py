"""A hypothesis state machine over the provider's service (real SQLite database, a moved clock).

Random pays by users of every behaviour, repeats, queries, reverses, refunds and the passing of
time, in any order. After every step, from the contract rather than the code:
- money is conserved (users' balances + the merchant's takings), and takings match a recount;
- each user's balance is the start, minus every order that is paid and not reversed, plus every
  refund that has reached them;
- each user's message stream says exactly that: one "paid" per order ever paid, one "reversed"
  per paid order reversed, one "refunded" per refund done — and nothing for any other order;
- the refunds of an order never exceed it, and a SUCCESS is never answered twice for one order.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tillroll.clock import FakeClock
from tillroll.money import format_yuan
from tillroll.wallet import core
from tillroll.wallet.admin import (
    add_merchant,
    add_user,
    issue_code,
    money_total_fen,
    open_wallet,
    takings_fen,
    takings_from_records,
)
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.service import WalletService
from tillroll.wallet.tables import messages, orders, refunds, users

MCH = "M1"
NAME = "测试便利店"
START_FEN = 100_00
BEHAVIOURS = ["ok", "confirm:3", "confirm:60", "never", "fail:NOTENOUGH", "error-once", "slow:1"]
CONFIG = WalletConfig(refund_settle_s=2.0)


class WalletMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.engine = open_wallet(f"sqlite:///{Path(self.tmp.name) / 'w.db'}")
        self.clock = FakeClock()
        self.service = WalletService(self.engine, self.clock, CONFIG)
        add_merchant(self.engine, MCH, NAME, "stateful-merchant-key-01")
        self.users = [f"u{i}" for i in range(len(BEHAVIOURS))]
        for name, behaviour in zip(self.users, BEHAVIOURS, strict=True):
            add_user(self.engine, name, START_FEN, behaviour=behaviour)
        self.sent: dict[str, tuple[str, int]] = {}  # out_trade_no -> (code, fee) of its first pay
        self.successes: Counter[str] = Counter()
        self.order_no = 0
        self.refund_no = 0

    def teardown(self) -> None:
        self.engine.dispose()
        self.tmp.cleanup()

    def _answer(self, out_trade_no: str, reply: core.ErrCode | str) -> None:
        if reply == "SUCCESS":
            self.successes[out_trade_no] += 1

    @rule(who=st.integers(0, len(BEHAVIOURS) - 1), fee=st.integers(1, 60_00))
    def pay_new(self, who: int, fee: int) -> None:
        self.order_no += 1
        no = f"O{self.order_no}"
        code = issue_code(self.engine, self.users[who], self.clock)
        reply = self.service.pay(MCH, core.PayRequest(code, no, fee))
        self.sent[no] = (code, fee)
        self._answer(no, reply.result_code)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data(), other_fee=st.booleans())
    def pay_again(self, data: st.DataObject, other_fee: bool) -> None:
        no = data.draw(st.sampled_from(sorted(self.sent)))
        code, fee = self.sent[no]
        reply = self.service.pay(MCH, core.PayRequest(code, no, fee + 1 if other_fee else fee))
        assert reply.result_code == "FAIL", "a known order number never pays again"
        if other_fee:
            assert reply.fields["err_code"] == "OUT_TRADE_NO_USED"

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def query(self, data: st.DataObject) -> None:
        no = data.draw(st.sampled_from(sorted(self.sent)))
        assert self.service.query(MCH, no).result_code == "SUCCESS"

    @rule(data=st.data(), unseen=st.booleans())
    def reverse(self, data: st.DataObject, unseen: bool) -> None:
        if unseen or not self.sent:
            self.order_no += 1
            no = f"O{self.order_no}"
        else:
            no = data.draw(st.sampled_from(sorted(self.sent)))
        reply = self.service.reverse(MCH, no)
        if reply.result_code == "FAIL":
            assert reply.fields["err_code"] in ("USERPAYING", "REVERSE_EXPIRE")
        elif unseen or not self.sent:
            code = issue_code(self.engine, self.users[0], self.clock)
            late = self.service.pay(MCH, core.PayRequest(code, no, 100))
            assert late.fields["err_code"] == "ORDERREVERSED"

    @precondition(lambda self: bool(self.sent))
    @rule(
        data=st.data(),
        fee=st.integers(1, 40_00),
        kind=st.sampled_from(["any", "rest", "over"]),
        repeat=st.booleans(),
    )
    def refund(self, data: st.DataObject, fee: int, kind: str, repeat: bool) -> None:
        no = data.draw(st.sampled_from(sorted(self.sent)))
        if kind != "any":  # exactly what is left, or one fen more (the edge of REFUND_FEE_INVALID)
            state = self.service.query(MCH, no).fields
            left = int(state.get("total_fee", 0)) - int(state.get("refunded_fee", 0))
            fee = max(1, left + (kind == "over"))
        if not repeat or self.refund_no == 0:
            self.refund_no += 1
        rno = f"R{self.refund_no}"
        reply = self.service.refund(MCH, core.RefundRequest(no, rno, self.sent[no][1], fee))
        if reply.result_code == "FAIL":
            assert reply.fields["err_code"] in (
                "ORDERNOTPAID",
                "REFUND_FEE_INVALID",
                "OUT_REFUND_NO_USED",
                "REFUND_COUNT_EXCEED",
            ), reply.fields

    @rule(seconds=st.sampled_from([0.5, 2.0, 3.0, 10.0, 46.0, 61.0]), sweep=st.booleans())
    def time_passes(self, seconds: float, sweep: bool) -> None:
        self.clock.advance(seconds)
        if sweep:
            self.service.sweep()

    @invariant()
    def books_agree(self) -> None:
        if not hasattr(self, "engine"):
            return
        assert money_total_fen(self.engine) == START_FEN * len(self.users)
        assert takings_fen(self.engine, MCH) == takings_from_records(self.engine, MCH)
        assert all(n <= 1 for n in self.successes.values())
        with self.engine.connect() as conn:
            order_rows = conn.execute(sa.select(orders).where(orders.c.user_id.is_not(None))).mappings().all()
            refund_rows = conn.execute(sa.select(refunds)).mappings().all()
            names = dict(conn.execute(sa.select(users.c.id, users.c.name)).all())
            balances = dict(conn.execute(sa.select(users.c.name, users.c.balance_fen)).all())
            streams: dict[str, Counter[str]] = {n: Counter() for n in names.values()}
            for uid, text in conn.execute(sa.select(messages.c.user_id, messages.c.text)).all():
                streams[names[uid]][text] += 1
        expected_balance = {n: START_FEN for n in names.values()}
        expected_texts: dict[str, Counter[str]] = {n: Counter() for n in names.values()}
        by_id = {o["id"]: o for o in order_rows}
        for o in order_rows:
            name = names[o["user_id"]]
            if o["paid_at"] is None:
                assert o["state"] in ("USERPAYING", "CLOSED", "PAYERROR", "REVOKED")
                continue
            expected_texts[name][core.paid_text(NAME, format_yuan(o["total_fee"]))] += 1
            if o["state"] == "REVOKED":
                expected_texts[name][core.reversed_text(NAME, format_yuan(o["total_fee"]))] += 1
            else:
                assert o["state"] in ("SUCCESS", "REFUND")
                expected_balance[name] -= o["total_fee"]
        for o in order_rows:
            refunded = sum(r["refund_fee"] for r in refund_rows if r["order_id"] == o["id"])
            assert refunded == o["refunded_fee"] and (refunded == 0 or refunded <= o["total_fee"])
        for r in refund_rows:
            if r["status"] == "SUCCESS":
                name = names[by_id[r["order_id"]]["user_id"]]
                expected_balance[name] += r["refund_fee"]
                expected_texts[name][core.refunded_text(NAME, format_yuan(r["refund_fee"]))] += 1
        assert balances == expected_balance
        assert streams == expected_texts


WalletMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_wallet_provider_stateful = WalletMachine.TestCase
