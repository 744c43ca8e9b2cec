"""The terminal engine against the real acquirer host over real TCP, with faults from the proxy.

Scenarios that need the host to break its own rules (an approval without field 38, wrong key
check values, a batch number set by hand) stay on the scripted fake in
tests/unit/test_terminal_engine.py; everything else runs here.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tillroll.clock import FakeClock
from tillroll.host import HostServer, InjectedStoreFailure
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance, card_messages
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.messages import Message, unpack
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.sim.printer_emulator import PrinterEmulator, PrinterState
from tillroll.terminal import (
    HostAddress,
    LinkResult,
    Outcome,
    ReceiptState,
    ReversalReason,
    ReversalState,
    TcpHostLink,
    Terminal,
    TerminalConfig,
    TxnKind,
    TxnState,
)
from tillroll.terminal.printer import MemoryPrinter, PrinterStatus
from tillroll.terminal.receipt import Copy, TransType

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


class StoreFaults:
    """Makes the host's store fail before COMMIT for the next ``armed`` requests (answered 96)."""

    def __init__(self) -> None:
        self.armed = 0

    def __call__(self, point: str, msg: Message) -> None:
        if point == "before_commit" and self.armed > 0:
            self.armed -= 1
            raise InjectedStoreFailure("injected before commit")


@pytest.fixture
def store_faults() -> StoreFaults:
    return StoreFaults()


@pytest.fixture
def host(store: HostStore, host_clock: FakeClock, store_faults: StoreFaults) -> Iterator[HostServer]:
    with HostServer(store, clock=host_clock, key_lifetime_s=3600, fault_hook=store_faults) as server:
        yield server


@pytest.fixture
def proxy(host: HostServer) -> Iterator[FaultProxy]:
    with FaultProxy(host.address) as p:
        yield p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# How long a terminal waits for an answer. Fault-free exchanges get slack for a loaded machine
# (1 s once reversed a fault-free decline in CI beside the browser tests); a test that loses
# answers on purpose is marked `answers_lost` and waits less, as it waits once per lost answer.
ANSWER_TIMEOUT_S = 5.0
LOST_ANSWER_TIMEOUT_S = 1.5


@pytest.fixture
def answer_timeout_s(request: pytest.FixtureRequest) -> float:
    lost = request.node.get_closest_marker("answers_lost") is not None
    return LOST_ANSWER_TIMEOUT_S if lost else ANSWER_TIMEOUT_S


def make_terminal(
    data_dir: Path,
    address: tuple[str, int],
    *,
    backup: tuple[str, int] | None = None,
    response_timeout_s: float = ANSWER_TIMEOUT_S,
    **kw: object,
) -> Terminal:
    config = TerminalConfig(
        tid=TID,
        mid=MID,
        tmk=TMK,
        host=HostAddress(*address),
        backup_host=HostAddress(*backup) if backup else None,
        merchant_name="一号便利店",
        response_timeout_s=response_timeout_s,
        connect_timeout_s=1.0,
        printer_url=kw.pop("printer_url", None),  # type: ignore[arg-type]
    )
    return Terminal(config, data_dir, **kw)  # type: ignore[arg-type]


@pytest.fixture
def term(tmp_path: Path, proxy: FaultProxy, answer_timeout_s: float) -> Iterator[Terminal]:
    t = make_terminal(tmp_path / "pos", proxy.address, response_timeout_s=answer_timeout_s)
    yield t
    t.close()


class SpyLink:
    """The real TCP link, keeping a decoded copy of every request sent (what the host saw, or
    would have); ``crash`` makes the device die right after the host answered."""

    def __init__(self, address: tuple[str, int], response_timeout_s: float) -> None:
        self.inner = TcpHostLink(address, connect_timeout_s=1.0, response_timeout_s=response_timeout_s)
        self.sent: list[Message] = []
        self.crash = False

    def exchange(self, message: bytes) -> LinkResult:
        self.sent.append(unpack(message))
        res = self.inner.exchange(message)
        if self.crash:
            raise DeviceDied
        return res

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def of_mti(self, mti: str) -> list[Message]:
        return [m for m in self.sent if m.mti == mti]


class DeviceDied(BaseException):
    """The process dies mid-exchange (a BaseException: nothing in the engine catches it)."""


@pytest.fixture
def spy(proxy: FaultProxy, answer_timeout_s: float) -> Iterator[SpyLink]:
    link = SpyLink(proxy.address, answer_timeout_s)
    yield link
    link.close()


@pytest.fixture
def printer() -> MemoryPrinter:
    return MemoryPrinter()


@pytest.fixture
def clock() -> FakeClock:
    """The terminal's clock: backoff waits are instant, the key lifetime can be run out."""
    return FakeClock()


@pytest.fixture
def spied(
    tmp_path: Path, proxy: FaultProxy, spy: SpyLink, printer: MemoryPrinter, clock: FakeClock
) -> Iterator[Terminal]:
    t = make_terminal(tmp_path / "pos", proxy.address, link=spy, printer=printer, clock=clock)
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


@pytest.mark.answers_lost
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


@pytest.mark.answers_lost
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


# --- moved from the scripted fake host: the same scenarios against the real one -------------


def test_sale_signs_in_by_itself_and_prints_two_copies_from_the_journal(
    spied: Terminal, spy: SpyLink, printer: MemoryPrinter, store: HostStore
) -> None:
    res = spied.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.APPROVED and res.receipt is ReceiptState.PRINTED
    assert len(spy.of_mti("0800")) == 1 and card_balance(store, PAN) == START_MINOR - 1250
    (sale,) = spy.of_mti("0200")
    assert sale["22"] == "011" and sale["26"] == "12" and "52" in sale and sale["60"] == "22000001000"
    assert [p.copy for p in printer.printed] == [Copy.MERCHANT, Copy.CARDHOLDER]
    slip = printer.printed[0].slip
    assert slip.pan_masked == "622202*********0123" and slip.entry_mode == "M"
    assert slip.trans_type is TransType.SALE and slip.amount_minor == 1250
    assert slip.rrn == res.rrn and slip.auth_code == res.auth_code and slip.trace == res.trace
    assert slip.merchant_name == "一号便利店" and not printer.printed[0].reprint
    (entry,) = spied.entries()
    assert entry.state is TxnState.APPROVED and entry.reversal_state is ReversalState.CANCELLED


def test_the_journal_never_holds_the_pin_block(spied: Terminal, spy: SpyLink) -> None:
    assert spied.sale(1250, PAN, EXPIRY, PIN).approved and spied.balance(PAN, EXPIRY, PIN).approved
    for entry in spied.entries():
        assert "52" not in entry.request
    with spied.journal.begin() as conn:
        raw = conn.exec_driver_sql("SELECT request FROM txns").scalars().all()
    assert raw and all("52" not in json.loads(r) for r in raw)
    spied.close()
    stored = b"".join(p.read_bytes() for p in spied.data_dir.glob("journal.db*"))
    for req in spy.of_mti("0200"):
        assert req["52"].encode() not in stored and bytes.fromhex(req["52"]) not in stored


def test_sale_without_pin_is_entry_mode_012_without_fields_26_and_52(spied: Terminal, spy: SpyLink) -> None:
    assert spied.sale(100, PAN, EXPIRY).approved
    (sale,) = spy.of_mti("0200")
    assert sale["22"] == "012" and "26" not in sale and "52" not in sale


def test_balance_inquiry_reads_field_54_and_moves_nothing(spied: Terminal, spy: SpyLink) -> None:
    res = spied.balance(PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.APPROVED and res.balance_minor == START_MINOR
    (req,) = spy.of_mti("0200")
    assert req["3"] == "310000" and req["60"].startswith("01") and "4" not in req
    assert not spied.pending_reversals()


def test_decline_51_cancels_the_reversal_and_prints_nothing(
    spied: Terminal, spy: SpyLink, printer: MemoryPrinter
) -> None:
    res = spied.sale(START_MINOR + 1, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.DECLINED and res.code is ResponseCode.INSUFFICIENT_FUNDS
    assert "余额不足" in res.text and "insufficient funds" in res.text
    assert printer.printed == [] and spy.of_mti("0400") == []
    (entry,) = spied.entries()
    assert entry.state is TxnState.DECLINED and entry.reversal_state is ReversalState.CANCELLED


def test_verified_96_repeats_the_same_request(
    spied: Terminal, spy: SpyLink, store_faults: StoreFaults, store: HostStore
) -> None:
    spied.sign_in()
    store_faults.armed = 1  # the host's store fails once: it answers 96, nothing done
    assert spied.sale(300, PAN, EXPIRY, PIN).approved
    a, b = spy.of_mti("0200")
    assert a.fields == b.fields and card_balance(store, PAN) == START_MINOR - 300


@pytest.mark.answers_lost
def test_lost_response_reversal_carries_the_original_keys_and_no_pin(
    spied: Terminal, spy: SpyLink, proxy: FaultProxy, store: HostStore, printer: MemoryPrinter
) -> None:
    spied.sign_in()
    proxy.inject(Fault.DROP_RESPONSE)
    assert spied.sale(1250, PAN, EXPIRY, PIN).outcome is Outcome.REVERSED
    (sale,) = spy.of_mti("0200")
    (rev,) = spy.of_mti("0400")
    assert rev["39"] == "98" and rev["11"] == sale["11"] and rev["60"] == sale["60"]
    assert not {"26", "35", "36", "52", "53"} & rev.fields.keys()
    assert rev["4"] == sale["4"] and rev["2"] == sale["2"]
    assert card_balance(store, PAN) == START_MINOR and printer.printed == []


@pytest.mark.answers_lost
def test_request_lost_before_the_host_is_reversed_too(
    spied: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    spied.sign_in()
    proxy.inject(Fault.DROP_REQUEST)
    assert spied.sale(1250, PAN, EXPIRY, PIN).outcome is Outcome.REVERSED
    assert card_balance(store, PAN) == START_MINOR
    assert spied.sale(100, PAN, EXPIRY).approved  # a new STAN: served normally


def test_bad_response_mac_reverses_a0_after_a_new_sign_in(
    spied: Terminal, spy: SpyLink, proxy: FaultProxy, store: HostStore
) -> None:
    spied.sign_in()
    proxy.inject(Fault.CORRUPT_RESPONSE)
    assert spied.sale(1250, PAN, EXPIRY, PIN).outcome is Outcome.REVERSED
    (rev,) = spy.of_mti("0400")
    assert rev["39"] == "A0" and len(spy.of_mti("0800")) == 2  # new keys before the reversal
    assert card_balance(store, PAN) == START_MINOR


@pytest.mark.answers_lost
def test_a_repeated_reversal_answered_00_is_done(
    spied: Terminal, spy: SpyLink, proxy: FaultProxy, store: HostStore
) -> None:
    spied.sign_in()
    proxy.inject(Fault.DROP_RESPONSE, count=2)  # the sale and the first reversal
    assert spied.sale(1250, PAN, EXPIRY, PIN).outcome is Outcome.REVERSED
    first, second = spy.of_mti("0400")
    assert first.fields == second.fields and card_balance(store, PAN) == START_MINOR


@pytest.mark.answers_lost
def test_a_pending_reversal_blocks_then_goes_out_before_the_next_sale(
    spied: Terminal, spy: SpyLink, proxy: FaultProxy, store: HostStore
) -> None:
    spied.sign_in()
    proxy.inject(Fault.DROP_RESPONSE, count=4)  # the sale and its 3 reversal tries
    assert spied.sale(1250, PAN, EXPIRY, PIN).outcome is Outcome.REVERSAL_PENDING
    proxy.down()
    spy.inner.close()
    assert spied.sale(100, PAN, EXPIRY).outcome is Outcome.BLOCKED_BY_REVERSAL
    assert len(spied.pending_reversals()) == 1 and len(spy.of_mti("0200")) == 1  # nothing new sent
    proxy.up()
    assert spied.sale(200, PAN, EXPIRY).approved
    after = [m.mti for m in spy.sent if m.mti != "0800"][-2:]
    assert after == ["0400", "0200"]
    assert card_balance(store, PAN) == START_MINOR - 200


def test_host_unreachable_sends_nothing_and_leaves_nothing_pending(
    spied: Terminal, spy: SpyLink, store: HostStore
) -> None:
    spied.sign_in()
    # The line goes: a connect to a port nobody listens on is refused (the proxy's REFUSE
    # accepts and then closes, which is a lost answer, not an unreachable host).
    spy.inner.close()
    spy.inner = TcpHostLink(("127.0.0.1", free_port()), connect_timeout_s=1.0, response_timeout_s=1.0)
    assert spied.sale(100, PAN, EXPIRY).outcome is Outcome.HOST_UNREACHABLE
    assert spied.pending_reversals() == [] and spied.entries()[0].state is TxnState.NOT_PROCESSED
    assert card_balance(store, PAN) == START_MINOR


def test_interrupted_sale_is_reversed_06_on_recover(
    tmp_path: Path, proxy: FaultProxy, spy: SpyLink, store: HostStore
) -> None:
    data = tmp_path / "pos"
    with make_terminal(data, proxy.address, link=spy) as t1:
        t1.sign_in()
        spy.crash = True  # the host charges the card; the device dies before reading the answer
        with pytest.raises(DeviceDied):
            t1.sale(1250, PAN, EXPIRY, PIN)
    assert card_balance(store, PAN) == START_MINOR - 1250
    spy.crash = False
    with make_terminal(data, proxy.address, link=spy) as t2:
        assert t2.signed_in  # the session survived the restart
        assert t2.recover().outcome is Outcome.DONE
        assert spy.of_mti("0400")[-1]["39"] == "06"
        assert t2.entries()[0].state is TxnState.REVERSED
    assert card_balance(store, PAN) == START_MINOR


def test_signs_in_again_before_the_key_lifetime_runs_out(
    spied: Terminal, spy: SpyLink, clock: FakeClock
) -> None:
    assert spied.sale(100, PAN, EXPIRY).approved
    clock.advance(spied.config.refresh_after_s - 1)
    assert spied.sale(100, PAN, EXPIRY).approved
    assert len(spy.of_mti("0800")) == 1
    clock.advance(2)
    assert spied.sale(100, PAN, EXPIRY).approved
    assert len(spy.of_mti("0800")) == 2


def test_sign_in_and_sign_out_fields_and_the_session_dropped(spied: Terminal, spy: SpyLink) -> None:
    res = spied.sign_in()
    assert res.outcome is Outcome.DONE and res.batch == spied.batch
    (req,) = spy.of_mti("0800")
    assert req["63"] == "001" and req["60"] == "00000001003"
    assert spied.sign_out().outcome is Outcome.DONE
    assert not spied.signed_in and spy.of_mti("0820")[0]["60"].endswith("002")


def test_void_by_trace_names_the_original(
    spied: Terminal, spy: SpyLink, printer: MemoryPrinter, store: HostStore
) -> None:
    sale = spied.sale(1250, PAN, EXPIRY, PIN)
    assert sale.trace is not None
    void = spied.void(str(int(sale.trace)))
    assert void.approved, void.text
    req = spy.of_mti("0200")[-1]
    assert req["3"] == "200000" and req["4"] == "000000001250" and req["37"] == sale.rrn
    assert req["38"] == sale.auth_code and req["61"][:12] == f"{sale.batch}{sale.trace}"
    assert req["60"].startswith("23") and "52" not in req
    assert card_balance(store, PAN) == START_MINOR
    states = {e.kind: e.state for e in spied.entries()}
    assert states == {TxnKind.SALE: TxnState.VOIDED, TxnKind.VOID: TxnState.APPROVED}
    slip = printer.printed[-1].slip
    assert slip.trans_type is TransType.VOID and slip.reference and sale.trace in slip.reference
    assert spied.void(sale.trace).outcome is Outcome.NOT_FOUND
    assert spied.void("123").outcome is Outcome.NOT_FOUND
    assert len(spy.of_mti("0200")) == 2  # the unknown trace sent nothing


@pytest.mark.answers_lost
def test_lost_void_response_is_reversed_and_the_sale_stands(
    spied: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    sale = spied.sale(1250, PAN, EXPIRY, PIN)
    assert sale.trace is not None
    proxy.inject(Fault.DROP_RESPONSE)
    assert spied.void(sale.trace).outcome is Outcome.REVERSED
    states = {e.kind: e.state for e in spied.entries()}
    assert states == {TxnKind.SALE: TxnState.APPROVED, TxnKind.VOID: TxnState.REVERSED}
    assert card_balance(store, PAN) == START_MINOR - 1250


def test_reprint_by_trace_and_of_nothing(spied: Terminal, printer: MemoryPrinter) -> None:
    assert spied.reprint().outcome is Outcome.NOT_FOUND
    a = spied.sale(100, PAN, EXPIRY)
    assert spied.sale(200, PAN, EXPIRY).approved and a.trace is not None
    printer.set_status(PrinterStatus.JAMMED)
    assert spied.reprint(a.trace).outcome is Outcome.PRINT_FAILED
    printer.set_status(PrinterStatus.READY)
    res = spied.reprint(a.trace)
    assert res.outcome is Outcome.DONE and printer.printed[-1].slip.amount_minor == 100
    assert printer.printed[-1].reprint


def test_no_printer_means_receipt_owed_with_an_e_receipt(tmp_path: Path, proxy: FaultProxy) -> None:
    with make_terminal(tmp_path / "p", proxy.address) as t:
        res = t.sale(100, PAN, EXPIRY)
        assert res.approved and res.receipt is ReceiptState.OWED
        assert res.e_receipt is not None and res.e_receipt.exists()
        assert any(a.kind == "receipt_owed" for a in t.alerts())
