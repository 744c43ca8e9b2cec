"""Through a real terminal (PROFILE §6): a replacement device with a new journal on the same TID
and TMK, and a cut-over of a terminal's batch; both over real TCP to the real host (issue 6)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from tillroll import ledger
from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.closing import cutover
from tillroll.host.report import ledger_problems, settlement_report
from tillroll.host.settlement import fee_minor
from tillroll.host.store import HostStore, open_store
from tillroll.store.tables import settlements
from tillroll.terminal import HostAddress, Outcome, Terminal, TerminalConfig

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
EXPIRY = "3012"
PIN = "123456"
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
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def host(store: HostStore, clock: FakeClock) -> Iterator[HostServer]:
    with HostServer(store, clock=clock) as h:
        yield h


def make_terminal(data_dir: Path, host: HostServer) -> Terminal:
    config = TerminalConfig(
        tid=TID,
        mid=MID,
        tmk=TMK,
        host=HostAddress(*host.address),
        merchant_name="一号便利店",
        response_timeout_s=2.0,
        connect_timeout_s=1.0,
    )
    return Terminal(config, data_dir)


def _settled(store: HostStore) -> dict[str, tuple[str, int | None]]:
    """batch -> (who closed it, whether the terminal's figures balanced)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(settlements.c.batch, settlements.c.closed_by, settlements.c.balanced))
        return {str(b): (str(by), bal) for b, by, bal in rows}


def _merchant_paid(store: HostStore) -> int:
    with store.engine.connect() as conn:
        assert ledger_problems(conn) == []
        return ledger.balances(conn).get(ledger.merchant(MID), 0)


def test_a_replacement_terminal_gets_a_new_batch_and_charges_its_sales(
    tmp_path: Path, host: HostServer, store: HostStore, clock: FakeClock
) -> None:
    old = make_terminal(tmp_path / "old", host)
    first = old.sale(2_500, PAN, EXPIRY, PIN)
    assert first.outcome is Outcome.APPROVED
    assert old.sale(1_000, PAN, EXPIRY, PIN).outcome is Outcome.APPROVED
    old.close()  # the device is replaced; its journal is gone

    new = make_terminal(tmp_path / "new", host)
    again = new.sale(2_500, PAN, EXPIRY, PIN)  # same card, same amount, a STAN used before
    assert again.outcome is Outcome.APPROVED, again
    assert again.rrn != first.rrn and again.auth_code != first.auth_code
    assert new.batch == "000002"
    assert card_balance(store, PAN) == OPENING - 2_500 - 1_000 - 2_500
    # The old batch was settled by the host: its sales reached the merchant.
    assert _merchant_paid(store) == 3_500 - fee_minor(3_500, 6000)
    with store.engine.connect() as conn:
        (row,) = settlement_report(conn, clock.now().date())
    assert (row.batches, row.host_closed, row.gross_minor) == (1, 1, 3_500)
    # The new device settles its own batch normally.
    settled = new.settle()
    assert settled.outcome is Outcome.SETTLED, settled
    assert _settled(store) == {"000001": ("host", None), "000002": ("terminal", 1)}
    assert _merchant_paid(store) == 3_500 - fee_minor(3_500, 6000) + 2_500 - fee_minor(2_500, 6000)
    new.close()


def test_cutover_pays_a_dead_terminal_and_the_terminal_then_moves_on(
    tmp_path: Path, host: HostServer, store: HostStore, clock: FakeClock
) -> None:
    term = make_terminal(tmp_path / "pos", host)
    assert term.sale(4_000, PAN, EXPIRY, PIN).outcome is Outcome.APPROVED
    clock.advance(600)
    closed = cutover(store.engine, before=clock.now() - timedelta(minutes=1), now=clock.now())
    assert [(c.tid, c.batch) for c in closed] == [(TID, "000001")]
    assert _merchant_paid(store) == 4_000 - fee_minor(4_000, 6000)
    # Its next request meets the closed batch (77, "sign in again"): the terminal signs in, is
    # named the new batch, and sends the sale there; nothing was charged in the closed batch.
    sold = term.sale(700, PAN, EXPIRY, PIN)
    assert sold.outcome is Outcome.APPROVED, sold
    assert term.batch == "000002" and sold.batch == "000002"
    assert card_balance(store, PAN) == OPENING - 4_700
    settled = term.settle()
    assert settled.outcome is Outcome.SETTLED, settled
    assert _settled(store) == {"000001": ("host", None), "000002": ("terminal", 1)}
    assert _merchant_paid(store) == 4_000 - fee_minor(4_000, 6000) + 700 - fee_minor(700, 6000)
    term.close()
