"""PROFILE §6 "undo gives back only what is still charged", at the wire (issue 6).

Every path that returns money against a sale (refund, void, reversal in the batch, reversal after
settlement) together never returns more than the sale's amount, and the merchant is paid for
exactly what the cardholder still pays.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hostwire import EXPIRY, MID, PAN, PIN, TID, TMK, WireClient

from tillroll import ledger
from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.report import ledger_problems
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.messages import Message

OPENING = 100_000


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    add_card(s, PAN, EXPIRY, PIN, OPENING)
    yield s
    s.engine.dispose()


@pytest.fixture
def client(store: HostStore) -> Iterator[WireClient]:
    with HostServer(store, clock=FakeClock()) as host:
        c = WireClient(host.address)
        assert c.sign_in().code == "00"
        yield c
        c.close()


def _sale(client: WireClient, amount: int) -> tuple[Message, Message]:
    sale = client.sale_message(amount, pin=None)
    ans = client.send(sale)
    assert ans.code == "00"
    return sale, ans.message


def _balances(store: HostStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        assert ledger_problems(conn) == []
        return ledger.balances(conn)


def _settle(client: WireClient, debit: int, debits: int, credit: int, credits: int) -> None:
    ans = client.send(client.settle_message(debit, debits, credit, credits))
    assert ans.code == "00" and ans.message["48"][30] == "1", ans.message["48"]


def test_refund_then_reversal_returns_only_the_remainder(client: WireClient, store: HostStore) -> None:
    sale, ans = _sale(client, 5_000)
    assert client.send(client.refund_message(sale, ans, 3_000)).code == "00"
    assert client.send(client.reversal_of(sale, "96")).code == "00"
    assert card_balance(store, PAN) == OPENING  # not 30.00 above it
    assert client.send(client.reversal_of(sale, "96")).code == "00"  # a repeat changes nothing
    assert card_balance(store, PAN) == OPENING
    # The merchant keeps nothing of a sale that was undone, and pays nothing for its refund.
    _settle(client, 0, 0, 3_000, 1)
    balances = _balances(store)
    assert balances.get(ledger.merchant(MID), 0) == 0
    assert balances.get(ledger.CLEARING, 0) == 0


def test_refund_then_void_returns_only_the_remainder(client: WireClient, store: HostStore) -> None:
    sale, ans = _sale(client, 5_000)
    assert client.send(client.refund_message(sale, ans, 3_000)).code == "00"
    void = client.void_message(sale, ans)
    assert client.send(void).code == "00"
    assert card_balance(store, PAN) == OPENING
    assert client.send(client.refund_message(sale, ans, 1)).code == "12"  # a voided sale
    assert client.send(client.reversal_of(sale, "96")).code == "00"  # already undone
    assert card_balance(store, PAN) == OPENING
    _settle(client, 0, 0, 3_000, 1)
    balances = _balances(store)
    assert balances.get(ledger.merchant(MID), 0) == 0
    assert balances.get(ledger.CLEARING, 0) == 0


def test_a_reversed_void_charges_again_only_what_the_void_returned(
    client: WireClient, store: HostStore
) -> None:
    sale, ans = _sale(client, 5_000)
    assert client.send(client.refund_message(sale, ans, 3_000)).code == "00"
    void = client.void_message(sale, ans)
    assert client.send(void).code == "00"
    assert client.send(client.reversal_of(void, "98")).code == "00"
    assert card_balance(store, PAN) == OPENING - 2_000
    assert client.send(client.refund_message(sale, ans, 2_001)).code == "61"
    assert client.send(client.refund_message(sale, ans, 2_000)).code == "00"
    assert card_balance(store, PAN) == OPENING
    fee = (5_000 * 6000 + 500_000) // 1_000_000
    _settle(client, 5_000, 1, 5_000, 2)
    balances = _balances(store)
    assert balances[ledger.merchant(MID)] == -fee
    assert balances.get(ledger.CLEARING, 0) == 0


def test_fully_refunded_sale_reversed_returns_nothing(client: WireClient, store: HostStore) -> None:
    sale, ans = _sale(client, 4_000)
    assert client.send(client.refund_message(sale, ans, 4_000)).code == "00"
    assert client.send(client.void_message(sale, ans)).code == "12"  # nothing left to void
    assert client.send(client.reversal_of(sale, "06")).code == "00"
    assert client.send(client.void_message(sale, ans)).code == "12"  # already reversed
    assert card_balance(store, PAN) == OPENING
    _balances(store)


def test_refund_then_reversal_after_settlement_returns_the_remainder(
    client: WireClient, store: HostStore
) -> None:
    sale, ans = _sale(client, 5_000)
    assert client.send(client.refund_message(sale, ans, 1_000)).code == "00"
    _settle(client, 5_000, 1, 1_000, 1)
    assert client.sign_in().code == "00"
    assert client.send(client.refund_message(sale, ans, 1_500)).code == "00"  # a later batch
    assert client.send(client.reversal_of(sale, "06")).code == "00"  # automatic refund of 25.00
    assert card_balance(store, PAN) == OPENING
    assert client.send(client.refund_message(sale, ans, 1)).code == "61"
    _settle(client, 0, 0, 1_500, 1)
    fee = (5_000 * 6000 + 500_000) // 1_000_000
    balances = _balances(store)
    assert balances[ledger.merchant(MID)] == -fee
    assert balances.get(ledger.CLEARING, 0) == 0


def test_refund_on_another_terminal_then_reversal(client: WireClient, store: HostStore) -> None:
    """A refund may be made at any terminal of the merchant; the undo still sees it."""
    other_tid = "87654321"
    add_terminal(store, other_tid, MID, TMK)
    other = WireClient(client.address, tid=other_tid)
    assert other.sign_in().code == "00"
    sale, ans = _sale(client, 6_000)
    assert other.send(other.refund_message(sale, ans, 2_500)).code == "00"
    assert client.send(client.reversal_of(sale, "96")).code == "00"
    assert card_balance(store, PAN) == OPENING
    _settle(client, 0, 0, 0, 0)
    ans2 = other.send(other.settle_message(0, 0, 2_500, 1))
    assert ans2.code == "00" and ans2.message["48"][30] == "1"
    other.close()
    balances = _balances(store)
    assert balances.get(ledger.merchant(MID), 0) == 0
    assert balances.get(ledger.CLEARING, 0) == 0
