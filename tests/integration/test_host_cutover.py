"""Cut-over (PROFILE §6): the host closes and settles every batch still open from before a time,
so a terminal that died mid-day still gets its merchant paid (issue 6)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from hostwire import EXPIRY, MID, PAN, PIN, TID, TMK, WireClient
from sqlalchemy import select
from typer.testing import CliRunner

from tillroll import ledger
from tillroll.clock import FakeClock, merchant_zone, to_merchant_local
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.cli import app
from tillroll.host.closing import cutover
from tillroll.host.report import ledger_problems, settlement_report
from tillroll.host.settlement import fee_minor
from tillroll.host.store import HostStore, open_store
from tillroll.store.tables import settlements

OPENING = 100_000
OTHER_TID = "87654321"


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    add_terminal(s, OTHER_TID, MID, TMK)
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


def test_cutover_pays_a_dead_terminals_batch_and_closes_it(
    host: HostServer, store: HostStore, clock: FakeClock
) -> None:
    dead = WireClient(host.address)
    assert dead.sign_in().code == "00"
    assert dead.send(dead.sale_message(6_000, pin=None)).code == "00"
    assert dead.send(dead.sale_message(1_500, pin=None)).code == "00"
    clock.advance(3600)
    late = WireClient(host.address, tid=OTHER_TID)  # opened after the cut-over time: left open
    assert late.sign_in().code == "00"
    assert late.send(late.sale_message(500, pin=None)).code == "00"

    closed = cutover(store.engine, before=clock.now() - timedelta(minutes=30), now=clock.now())
    assert [(c.tid, c.batch, c.totals.debit_minor, c.totals.debit_count) for c in closed] == [
        (TID, "000001", 7_500, 2)
    ]
    fee = fee_minor(7_500, 6000)
    assert closed[0].net_minor == 7_500 - fee
    with store.engine.connect() as conn:
        assert ledger_problems(conn) == []
        balances = ledger.balances(conn)
        row = conn.execute(select(settlements)).mappings().one()
        (report,) = settlement_report(conn, clock.now().date())
    assert balances[ledger.merchant(MID)] == 7_500 - fee
    assert (row["tid"], row["closed_by"], row["balanced"]) == (TID, "host", None)
    assert (report.tid, report.host_closed, report.net_minor) == (TID, 1, 7_500 - fee)

    # A later request in the closed batch gets 77, with the header asking for a sign-in.
    refused = dead.send(dead.sale_message(900, pin=None))
    assert refused.code == "77"
    assert refused.header[2] & 0x0F == 3
    assert card_balance(store, PAN) == OPENING - 7_500 - 500
    # The other terminal's batch is still open.
    assert late.send(late.sale_message(500, pin=None)).code == "00"
    # A second cut-over closes nothing more of the first terminal.
    assert cutover(store.engine, before=clock.now() - timedelta(minutes=30), now=clock.now()) == []
    # The terminal signs in and gets the new batch; its sales are charged there.
    assert dead.sign_in().code == "00" and dead.batch == "000002"
    assert dead.send(dead.sale_message(900, pin=None)).code == "00"
    assert card_balance(store, PAN) == OPENING - 7_500 - 1_000 - 900
    dead.close()
    late.close()


def test_a_reversal_after_cutover_is_an_automatic_refund(
    host: HostServer, store: HostStore, clock: FakeClock
) -> None:
    term = WireClient(host.address)
    term.sign_in()
    sale = term.sale_message(3_000, pin=None)
    assert term.send(sale).code == "00"
    clock.advance(60)
    assert len(cutover(store.engine, before=clock.now(), now=clock.now())) == 1
    # In the closed session a reversal too must wait for the sign-in (77); then it refunds.
    assert term.send(term.reversal_of(sale, "06")).code == "77"
    assert term.sign_in().code == "00"
    assert term.send(term.reversal_of(sale, "06")).code == "00"
    assert card_balance(store, PAN) == OPENING
    with store.engine.connect() as conn:
        assert ledger_problems(conn) == []
    term.close()


def test_cutover_cli_prints_what_it_closed(
    host: HostServer, store: HostStore, clock: FakeClock, db_url: str
) -> None:
    term = WireClient(host.address)
    term.sign_in()
    assert term.send(term.sale_message(2_000, pin=None)).code == "00"
    # --before is the merchant's wall-clock time (Asia/Shanghai); the host's clock is UTC.
    before = to_merchant_local(clock.now() + timedelta(minutes=1), merchant_zone("Asia/Shanghai"))
    before_text = before.strftime("%Y-%m-%d %H:%M")
    runner = CliRunner()
    # One minute before the sign-in, merchant time: nothing to close (read as UTC it would be
    # eight hours later, and would close the batch).
    early = (before - timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M")
    none = runner.invoke(app, ["cutover", "--before", early, "--db", db_url], env={"COLUMNS": "200"})
    assert none.exit_code == 0 and "closed 0 batch" in none.output, none.output
    result = runner.invoke(app, ["cutover", "--before", before_text, "--db", db_url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert TID in result.output and "000001" in result.output and "20.00" in result.output
    assert "closed 1 batch" in result.output
    again = runner.invoke(app, ["cutover", "--before", before_text, "--db", db_url], env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "closed 0 batch" in again.output
    bad = runner.invoke(app, ["cutover", "--before", "tomorrow", "--db", db_url])
    assert bad.exit_code == 2 and "YYYY-MM-DD HH:MM" in bad.output
    assert term.send(term.sale_message(2_000, pin=None)).code == "77"
    term.close()
