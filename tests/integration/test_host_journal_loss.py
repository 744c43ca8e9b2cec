"""PROFILE §6: a terminal that lost its journal signs in with a STAN that went backwards; the
host answers with a new batch and closes (settles) the old one itself (issue 6, seed F4)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hostwire import EXPIRY, MID, PAN, PIN, TID, TMK, WireClient
from sqlalchemy import select

from tillroll import ledger
from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.report import ledger_problems, settlement_report
from tillroll.host.settlement import fee_minor
from tillroll.host.store import HostStore, open_store
from tillroll.store.tables import settlements

OPENING = 100_000
CLOCK = FakeClock()


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    add_card(s, PAN, EXPIRY, PIN, OPENING)
    yield s
    s.engine.dispose()


@pytest.fixture
def host(store: HostStore) -> Iterator[HostServer]:
    with HostServer(store, clock=CLOCK) as h:
        yield h


def _fresh_terminal(host: HostServer) -> WireClient:
    """The replacement device: same TID and TMK, a new journal (STAN and batch start again)."""
    return WireClient(host.address)


def test_replaced_terminal_gets_a_new_batch_and_its_sales_are_charged(
    host: HostServer, store: HostStore
) -> None:
    old = _fresh_terminal(host)
    assert old.sign_in().code == "00" and old.batch == "000001"
    first = old.send(old.sale_message(2_500, pin=None))
    assert first.code == "00"
    assert old.send(old.sale_message(1_000, pin=None)).code == "00"
    old.close()  # the device dies with its journal

    new = _fresh_terminal(host)
    signed = new.sign_in()  # STAN 000001 again
    assert signed.code == "00"
    assert new.batch == "000002"
    # Seed F4: the same card and amount on a STAN used before is a new sale, charged again.
    again = new.send(new.sale_message(2_500, pin=None))
    assert again.code == "00" and again.mac_ok
    assert again.message["37"] != first.message["37"]
    assert again.message["38"] != first.message["38"]
    assert card_balance(store, PAN) == OPENING - 2_500 - 1_000 - 2_500
    # And a STAN that collided before is not stuck at 94.
    assert new.send(new.sale_message(700, pin=None)).code == "00"
    new.close()


def test_the_old_batch_is_settled_by_the_host_and_reaches_the_merchant(
    host: HostServer, store: HostStore
) -> None:
    old = _fresh_terminal(host)
    old.sign_in()
    sale = old.sale_message(4_000, pin=None)
    sale_ans = old.send(sale)
    assert sale_ans.code == "00"
    assert old.send(old.refund_message(sale, sale_ans.message, 500)).code == "00"
    old.close()

    new = _fresh_terminal(host)
    assert new.sign_in().code == "00" and new.batch == "000002"
    with store.engine.connect() as conn:
        row = conn.execute(select(settlements).where(settlements.c.batch == "000001")).mappings().one()
        assert row["closed_by"] == "host"
        assert row["terminal_debit_minor"] is None and row["balanced"] is None
        assert (row["host_debit_minor"], row["host_credit_minor"]) == (4_000, 500)
        assert ledger_problems(conn) == []
        balances = ledger.balances(conn)
        (report,) = settlement_report(conn, CLOCK.now().date())
    fee = fee_minor(4_000, 6000)
    assert balances[ledger.merchant(MID)] == 4_000 - 500 - fee
    assert balances.get(ledger.CLEARING, 0) == 0
    assert (report.batches, report.host_closed, report.gross_minor, report.net_minor) == (
        1,
        1,
        4_000,
        3_500 - fee,
    )
    # A late reversal from the dead device finds its batch settled: an automatic refund.
    assert new.send(new.reversal_of(sale, "06")).code == "00"
    assert card_balance(store, PAN) == OPENING
    new.close()


def test_the_old_device_is_refused_in_the_closed_batch(host: HostServer) -> None:
    old = _fresh_terminal(host)
    old.sign_in()
    assert old.send(old.sale_message(1_000, pin=None)).code == "00"
    new = _fresh_terminal(host)
    assert new.sign_in().code == "00"
    late = old.send(old.sale_message(1_000, pin=None))
    assert late.code in ("77", "A0")  # its keys were replaced; never approved
    old.close()
    new.close()


def test_a_sign_in_that_moves_forward_keeps_the_batch(host: HostServer, store: HostStore) -> None:
    term = _fresh_terminal(host)
    term.sign_in()
    assert term.send(term.sale_message(1_000, pin=None)).code == "00"
    assert term.sign_in().code == "00"  # key renewal, STAN went on: same batch
    assert term.batch == "000001"
    assert term.send(term.sale_message(1_000, pin=None)).code == "00"
    empty = _fresh_terminal(host)
    with store.engine.connect() as conn:
        assert conn.execute(select(settlements.c.id)).first() is None
    term.close()
    empty.close()


def test_an_empty_batch_needs_no_new_one(host: HostServer) -> None:
    first = _fresh_terminal(host)
    first.sign_in()
    first.close()
    again = _fresh_terminal(host)
    assert again.sign_in().code == "00" and again.batch == "000001"  # nothing to collide with
    again.close()


def test_a_stan_that_wrapped_is_above_the_highest(host: HostServer, store: HostStore) -> None:
    term = _fresh_terminal(host)
    term.stan = 999_996
    term.sign_in()  # 999997
    assert term.send(term.sale_message(1_000, pin=None)).code == "00"  # 999998
    assert term.send(term.sale_message(1_000, pin=None)).code == "00"  # 999999
    term.stan = 0  # wraps to 000001
    assert term.sign_in().code == "00" and term.batch == "000001"
    assert term.send(term.sale_message(1_000, pin=None)).code == "00"
    assert card_balance(store, PAN) == OPENING - 3_000
    term.close()
