"""Stateful property test of the host's money trail (issues 3 and 6), at the wire level.

Random sales, lost responses, voids (and their reversal), reversals (also overtaking their
original), refunds, settlements and a replaced terminal (journal lost: its STAN starts again).
The model follows the contract (PROFILE §3, §6), not the host's code: a sale is charged its
amount; everything given back against it — refunds, a void, a reversal in its open batch, an
automatic refund after its batch was settled — never exceeds it, and an undo gives back only
what is still charged; a sign-in whose STAN is not above one the host stored in the open batch
gets a new batch. After every step: each card's bank balance is the model's, the ledger
balances, each sale's money back at the host is the model's and never above its amount, and
each settlement balances against the model's totals.
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
from moneycheck import money_back_by_sale

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
    answer: Message
    amount: int
    card: str
    batch: str
    approved: bool  # the host approved it (charged the card)
    undone: bool = False  # voided or reversed: nothing more can be given back
    returned: int = 0  # everything given back against it, by every path
    void: Message | None = None  # the void that stands, and what it gave back
    void_returned: int = 0

    @property
    def still_charged(self) -> int:
        return self.amount - self.returned if self.approved else 0


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
            self.refunds: list[tuple[str, int]] = []  # (batch, amount) of approved refunds
            self.settled: set[str] = set()
            self.batch_used = False  # the host stored a request in the open batch

        def teardown(self) -> None:
            self.client.close()
            self.host.stop()
            self.store.engine.dispose()

        def _open(self, sale: Sale) -> bool:
            return sale.batch not in self.settled

        def _charged(self, card: str) -> int:
            return sum(s.still_charged for s in self.sales if s.card == card)

        @rule(card=st.sampled_from(CARDS), amount=st.integers(1, 30_000), lose=st.booleans())
        def sale(self, card: str, amount: int, lose: bool) -> None:
            req = self.client.sale_message(amount, pan=card, pin=None)
            ans = self.client.send(req)
            approved = ans.code == "00"
            assert approved == (amount <= OPENING - self._charged(card))
            sale = Sale(req, ans.message, amount, card, self.client.batch, approved)
            self.batch_used = True
            self.sales.append(sale)
            if lose:  # the terminal never saw the answer: it reverses, whatever the host did
                self._reverse(sale)

        def _reverse(self, sale: Sale) -> None:
            assert self.client.send(self.client.reversal_of(sale.request, "98")).code == "00"
            self.batch_used |= sale.batch == self.client.batch
            if sale.approved and not sale.undone:
                # In the open batch or after settlement (an automatic refund): what is left.
                sale.returned = sale.amount
                sale.undone = True

        @rule(card=st.sampled_from(CARDS), amount=st.integers(1, 5_000))
        def reversal_overtakes_original(self, card: str, amount: int) -> None:
            req = self.client.sale_message(amount, pan=card, pin=None)
            assert self.client.send(self.client.reversal_of(req, "98")).code == "00"
            assert self.client.send(req).code == "94"
            self.batch_used = True

        @precondition(lambda self: any(s.batch == self.client.batch for s in self.sales))
        @rule(data=st.data())
        def void(self, data: st.DataObject) -> None:
            sale = data.draw(st.sampled_from([s for s in self.sales if s.batch == self.client.batch]))
            void = self.client.void_message(sale.request, sale.answer)
            ans = self.client.send(void)
            self.batch_used = True
            if not sale.approved or sale.undone or sale.still_charged == 0:
                assert ans.code != "00"  # a fully refunded sale has nothing left to void
                return
            assert ans.code == "00" and len(ans.message.get("38", "")) == 6
            sale.void, sale.void_returned = void, sale.still_charged
            sale.returned, sale.undone = sale.amount, True

        @precondition(
            lambda self: any(s.void is not None and s.batch == self.client.batch for s in self.sales)
        )
        @rule(data=st.data())
        def reverse_a_void(self, data: st.DataObject) -> None:
            """The terminal never saw the void's answer: the sale stands again, charged again
            what the void gave back."""
            choices = [s for s in self.sales if s.void is not None and s.batch == self.client.batch]
            sale = data.draw(st.sampled_from(choices))
            assert sale.void is not None
            assert self.client.send(self.client.reversal_of(sale.void, "98")).code == "00"
            sale.returned -= sale.void_returned
            sale.void, sale.void_returned, sale.undone = None, 0, False

        @precondition(lambda self: any(s.approved and not s.undone for s in self.sales))
        @rule(data=st.data())
        def reverse(self, data: st.DataObject) -> None:
            sale = data.draw(st.sampled_from([s for s in self.sales if s.approved and not s.undone]))
            self._reverse(sale)

        @precondition(lambda self: bool(self.sales))
        @rule(data=st.data(), fraction=st.floats(0.1, 1.3))
        def refund(self, data: st.DataObject, fraction: float) -> None:
            sale = data.draw(st.sampled_from(self.sales))
            amount = max(1, int(sale.amount * fraction))
            ans = self.client.send(self.client.refund_message(sale.request, sale.answer, amount))
            self.batch_used = True
            if not sale.approved or sale.undone or amount > sale.still_charged:
                assert ans.code != "00"
                if sale.approved and not sale.undone and amount > sale.amount:
                    assert ans.code == "64"
                elif sale.approved and not sale.undone:
                    assert ans.code == "61"
                return
            assert ans.code == "00"
            sale.returned += amount
            self.refunds.append((self.client.batch, amount))

        @rule()
        def settle(self) -> None:
            batch = self.client.batch
            debit = [s.amount for s in self.sales if s.batch == batch and s.approved and not s.undone]
            credit = [amount for b, amount in self.refunds if b == batch]
            ans = self.client.send(
                self.client.settle_message(sum(debit), len(debit), sum(credit), len(credit))
            )
            assert ans.code == "00"
            assert ans.message["48"][30] == "1", "the model's totals are the host's"
            self.settled.add(batch)
            self.batch_used = False
            assert self.client.sign_in().code == "00"
            assert self.client.batch != batch

        @rule()
        def replace_terminal(self) -> None:
            """The device is replaced (journal lost): same TID and TMK, its STAN starts again.
            If the host stored anything in the open batch, it closes and settles that batch
            and names a new one (PROFILE §6); nothing the old device did is replayed."""
            batch = self.client.batch
            self.client.close()
            self.client = WireClient(self.host.address)
            assert self.client.sign_in().code == "00"
            if self.batch_used:
                assert self.client.batch != batch
                self.settled.add(batch)
            else:
                assert self.client.batch == batch
            self.batch_used = False

        @invariant()
        def money_trail_is_sound(self) -> None:
            with self.store.engine.connect() as conn:
                assert ledger_problems(conn) == []
                back = money_back_by_sale(conn)
            for pan in CARDS:
                assert card_balance(self.store, pan) == OPENING - self._charged(pan)
            for s in self.sales:
                assert 0 <= s.returned <= s.amount
                amount, returned = back[s.answer["37"]]
                assert (amount, returned) == (s.amount, s.returned if s.approved else 0)
                assert returned <= amount

    return HostMoneyTrail


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_host_money_trail_stateful(db_url: str) -> None:
    def fresh_url() -> str:
        return empty_database(db_url)

    run_state_machine_as_test(
        make_machine(fresh_url),
        settings=settings(
            max_examples=50,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
