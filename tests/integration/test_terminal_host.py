"""The terminal engine against the real acquirer host over real TCP, with faults from the proxy."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance, card_messages
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.codes import ResponseCode
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.sim.printer_emulator import PrinterEmulator, PrinterState
from tillroll.terminal import (
    HostAddress,
    Outcome,
    ReceiptState,
    ReversalReason,
    Terminal,
    TerminalConfig,
    TxnKind,
    TxnState,
)

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
EXPIRY = "3012"
PIN = "123456"
START_MINOR = 100_000


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostStore]:
    monkeypatch.setenv("TILLROLL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    s = open_store(f"sqlite:///{tmp_path / 'host.db'}")
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    add_card(s, PAN, EXPIRY, PIN, START_MINOR)
    yield s
    s.engine.dispose()


@pytest.fixture
def host_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def host(store: HostStore, host_clock: FakeClock) -> Iterator[HostServer]:
    with HostServer(store, clock=host_clock, key_lifetime_s=3600) as server:
        yield server


@pytest.fixture
def proxy(host: HostServer) -> Iterator[FaultProxy]:
    with FaultProxy(host.address) as p:
        yield p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_terminal(
    data_dir: Path, address: tuple[str, int], *, backup: tuple[str, int] | None = None, **kw: object
) -> Terminal:
    config = TerminalConfig(
        tid=TID,
        mid=MID,
        tmk=TMK,
        host=HostAddress(*address),
        backup_host=HostAddress(*backup) if backup else None,
        merchant_name="一号便利店",
        response_timeout_s=1.0,
        connect_timeout_s=1.0,
        printer_url=kw.pop("printer_url", None),  # type: ignore[arg-type]
    )
    return Terminal(config, data_dir, **kw)  # type: ignore[arg-type]


@pytest.fixture
def term(tmp_path: Path, proxy: FaultProxy) -> Iterator[Terminal]:
    t = make_terminal(tmp_path / "pos", proxy.address)
    yield t
    t.close()


def test_approve_then_decline_51(term: Terminal, store: HostStore) -> None:
    ok = term.sale(1250, PAN, EXPIRY, PIN)
    assert ok.outcome is Outcome.APPROVED and ok.rrn and ok.auth_code
    assert card_balance(store, PAN) == START_MINOR - 1250
    no = term.sale(500_000, PAN, EXPIRY, PIN)
    assert no.outcome is Outcome.DECLINED and no.code is ResponseCode.INSUFFICIENT_FUNDS
    assert card_balance(store, PAN) == START_MINOR - 1250
    bal = term.balance(PAN, EXPIRY, PIN)
    assert bal.approved and bal.balance_minor == START_MINOR - 1250
    assert term.pending_reversals() == []


def test_lost_response_is_reversed_98_and_the_host_ledger_is_unchanged(
    term: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    term.sign_in()
    proxy.inject(Fault.DROP_RESPONSE)
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSED
    assert card_balance(store, PAN) == START_MINOR
    (entry,) = [e for e in term.entries() if e.kind is TxnKind.SALE]
    assert entry.state is TxnState.REVERSED and entry.reversal_reason is ReversalReason.NO_RESPONSE
    sms = card_messages(store, PAN)
    assert len(sms) == 2  # the "you paid" message, then the money back


def test_bad_response_mac_is_reversed_a0_and_the_terminal_signs_in_again(
    term: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    term.sign_in()
    proxy.inject(Fault.CORRUPT_RESPONSE)
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSED
    assert card_balance(store, PAN) == START_MINOR
    (entry,) = [e for e in term.entries() if e.kind is TxnKind.SALE]
    assert entry.reversal_reason is ReversalReason.MAC_FAILED
    assert term.sale(100, PAN, EXPIRY).approved
    assert card_balance(store, PAN) == START_MINOR - 100


def test_77_after_the_host_session_expired_signs_in_and_resends_with_a_new_stan(
    term: Terminal, host_clock: FakeClock, store: HostStore
) -> None:
    term.sign_in()
    host_clock.advance(3601)  # the host's session ends; the terminal's clock thinks it is fresh
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.approved
    sales = [e for e in term.entries() if e.kind is TxnKind.SALE]
    assert sorted(e.state for e in sales) == sorted([TxnState.APPROVED, TxnState.NOT_PROCESSED])
    assert len({e.stan for e in sales}) == 2
    assert card_balance(store, PAN) == START_MINOR - 1250


def test_backup_line_is_used_when_the_primary_cannot_be_reached(
    tmp_path: Path, host: HostServer, store: HostStore
) -> None:
    with make_terminal(tmp_path / "pos", ("127.0.0.1", free_port()), backup=host.address) as t:
        assert t.sale(1250, PAN, EXPIRY, PIN).approved
        assert t.sale(100, PAN, EXPIRY).approved
    assert card_balance(store, PAN) == START_MINOR - 1350


def test_unanswered_reversal_stays_pending_and_recover_finishes_it(
    term: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    term.sign_in()
    proxy.inject(Fault.DROP_RESPONSE, count=-1)  # the sale and every reversal reach the host, unanswered
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSAL_PENDING
    assert len(term.pending_reversals()) == 1
    assert any(a.kind == "reversal_pending" for a in term.alerts())
    proxy.clear()
    proxy.down()  # now the line is down altogether
    assert term.recover().outcome in (Outcome.REVERSAL_PENDING, Outcome.SIGN_IN_FAILED)
    assert len(term.pending_reversals()) == 1
    proxy.up()
    assert term.recover().outcome is Outcome.DONE  # a repeat, answered 00: done
    assert term.pending_reversals() == []
    assert card_balance(store, PAN) == START_MINOR  # undone exactly once
    assert len(card_messages(store, PAN)) == 2


def test_void_over_the_wire(term: Terminal, store: HostStore) -> None:
    sale = term.sale(1250, PAN, EXPIRY, PIN)
    assert sale.trace is not None
    void = term.void(sale.trace)
    assert void.approved, void.text
    assert card_balance(store, PAN) == START_MINOR
    assert term.void(sale.trace).outcome is Outcome.NOT_FOUND


def test_printer_jam_owes_the_receipt_writes_an_e_receipt_and_reprint_clears(
    tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    with PrinterEmulator() as printer:
        printer.state = PrinterState.JAMMED
        with make_terminal(tmp_path / "pos", proxy.address, printer_url=printer.url) as t:
            res = t.sale(1250, PAN, EXPIRY, PIN)
            assert res.approved and res.receipt is ReceiptState.OWED
            assert res.e_receipt is not None and res.e_receipt.exists()
            assert "0123" in res.e_receipt.read_text() and PAN not in res.e_receipt.read_text()
            assert card_balance(store, PAN) == START_MINOR - 1250
            assert printer.documents() == []
            printer.state = PrinterState.READY
            again = t.reprint()
            assert again.outcome is Outcome.DONE
            docs = printer.documents()
            assert len(docs) == 2 and all("REPRINT" in d for d in docs)
            assert all(PAN not in d and "622202*********0123" in d for d in docs)
            assert t.entries()[0].receipt is ReceiptState.PRINTED
