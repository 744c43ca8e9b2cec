"""Stateful property test of the host's money trail (issue 3), at the wire level.

Random sales, lost responses, voids, reversals (also overtaking their original), refunds and
settlements; after every step: the ledger balances (postings sum to zero, every balance rebuilt
from them matches the bank's), no original is refunded beyond its amount, and each card's balance
equals opening - approved sales + voided or reversed sales + approved refunds (automatic ones
included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hostwire import MID, TID, TMK, WireClient, empty_database
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.report import ledger_problems
from tillroll.host.store import open_store
from tillroll.iso8583.messages import Message

CARDS = ["6222021234567890123", "6222020000000000011", "6222020000000000029"]
OPENING = 50_000


@dataclass
class Sale:
    request: Message
    answer: Message | None  # None: the response was lost
    amount: int
    card: str
    batch: str
    state: str  # approved | declined | voided | reversed | unknown
    refunded: int = 0


def make_machine(url_factory: Any) -> type[RuleBasedStateMachine]:
    class HostMoneyTrail(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            url = url_factory()
            self.store = open_store(url)
            add_merchant(self.store, MID, "状态机商户")
            add_terminal(self.store, TID, MID, TMK)
            for pan in CARDS:
                add_card(self.store, pan, "3012", "123456", OPENING)
            self.host = HostServer(self.store, clock=FakeClock()).start()
            self.client = WireClient(self.host.address)
            assert self.client.sign_in().code == "00"
            self.sales: list[Sale] = []
            self.expected = dict.fromkeys(CARDS, OPENING)

        def teardown(self) -> None:
            self.client.close()
            self.host.stop()
            self.store.engine.dispose()

        @rule(card=st.sampled_from(CARDS), amount=st.integers(1, 30_000), lose=st.booleans())
        def sale(self, card: str, amount: int, lose: bool) -> None:
            req = self.client.sale_message(amount, pan=card, pin=None)
            ans = self.client.send(req)
            approved = ans.code == "00"
            assert approved == (amount <= self.expected[card])
            if approved:
                self.expected[card] -= amount
            state = "unknown" if lose else ("approved" if approved else "declined")
            self.sales.append(
                Sale(req, None if lose else ans.message, amount, card, self.client.batch, state)
            )
            if lose:  # the terminal never saw it: it must reverse, whatever the host did
                self._reverse(self.sales[-1], was_approved=approved)

        def _reverse(self, sale: Sale, *, was_approved: bool) -> None:
            assert self.client.send(self.client.reversal_of(sale.request, "98")).code == "00"
            if was_approved and sale.batch == self.client.batch:
                self.expected[sale.card] += sale.amount
            elif was_approved:  # settled batch: an automatic refund of what was left
                self.expected[sale.card] += sale.amount - sale.refunded
                sale.refunded = sale.amount
            sale.state = "reversed"

        @rule(card=st.sampled_from(CARDS), amount=st.integers(1, 5_000))
        def reversal_overtakes_original(self, card: str, amount: int) -> None:
            req = self.client.sale_message(amount, pan=card, pin=None)
            assert self.client.send(self.client.reversal_of(req, "98")).code == "00"
            assert self.client.send(req).code == "94"

        @precondition(
            lambda self: any(s.state == "approved" and s.batch == self.client.batch for s in self.sales)
        )
        @rule(data=st.data())
        def void(self, data: st.DataObject) -> None:
            choices = [s for s in self.sales if s.state == "approved" and s.batch == self.client.batch]
            sale = data.draw(st.sampled_from(choices))
            assert sale.answer is not None
            ans = self.client.send(self.client.void_message(sale.request, sale.answer))
            if sale.refunded:
                assert ans.code == "12"
                return
            assert ans.code == "00"
            sale.state = "voided"
            self.expected[sale.card] += sale.amount

        @precondition(lambda self: any(s.state == "approved" for s in self.sales))
        @rule(data=st.data())
        def reverse(self, data: st.DataObject) -> None:
            sale = data.draw(st.sampled_from([s for s in self.sales if s.state == "approved"]))
            self._reverse(sale, was_approved=True)

        @precondition(lambda self: any(s.state == "approved" and s.answer for s in self.sales))
        @rule(data=st.data(), fraction=st.floats(0.1, 1.3))
        def refund(self, data: st.DataObject, fraction: float) -> None:
            sale = data.draw(st.sampled_from([s for s in self.sales if s.state == "approved" and s.answer]))
            assert sale.answer is not None
            amount = max(1, int(sale.amount * fraction))
            ans = self.client.send(self.client.refund_message(sale.request, sale.answer, amount))
            if amount > sale.amount:
                assert ans.code == "64"
            elif amount > sale.amount - sale.refunded:
                assert ans.code == "61"
            else:
                assert ans.code == "00"
                sale.refunded += amount
                self.expected[sale.card] += amount

        @rule()
        def settle(self) -> None:
            batch = self.client.batch
            debit = [s for s in self.sales if s.batch == batch and s.state == "approved"]
            ans = self.client.send(self.client.settle_message(sum(s.amount for s in debit), len(debit), 0, 0))
            assert ans.code == "00"
            assert self.client.sign_in().code == "00"
            assert self.client.batch != batch

        @invariant()
        def money_trail_is_sound(self) -> None:
            with self.store.engine.connect() as conn:
                assert ledger_problems(conn) == []
            for pan in CARDS:
                assert card_balance(self.store, pan) == self.expected[pan]
            assert all(s.refunded <= s.amount for s in self.sales)

    return HostMoneyTrail


@pytest.mark.slow
def test_host_money_trail_stateful(db_url: str) -> None:
    def fresh_url() -> str:
        return empty_database(db_url)

    run_state_machine_as_test(
        make_machine(fresh_url),
        settings=settings(
            max_examples=12,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
