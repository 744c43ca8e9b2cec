"""The terminal engine against a scripted fake host: states, reversals, sign-in, receipts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from test_terminal_fakehost import EXPIRY, MID, PAN, PIN, TID, TMK, Act, FakeHost

from tillroll.clock import FakeClock
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.messages import Message
from tillroll.terminal import (
    HostAddress,
    IllegalTransition,
    InputError,
    LinkResult,
    Outcome,
    ReceiptState,
    ReversalReason,
    ReversalState,
    Terminal,
    TerminalConfig,
    TxnKind,
    TxnState,
    build_reversal,
)
from tillroll.terminal.journal import counters, txns
from tillroll.terminal.printer import MemoryPrinter, PrinterStatus
from tillroll.terminal.receipt import Copy, Slip, TransType
from tillroll.terminal.states import TXN_TRANSITIONS, check


class EReceipts:
    def __init__(self) -> None:
        self.slips: list[Slip] = []

    def __call__(self, slip: Slip, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{slip.batch}-{slip.trace}.html"
        path.write_text(f"<html>{slip.pan_masked} {slip.amount_minor}</html>")
        self.slips.append(slip)
        return path


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def printer() -> MemoryPrinter:
    return MemoryPrinter()


@pytest.fixture
def ereceipts() -> EReceipts:
    return EReceipts()


def config(**changes: object) -> TerminalConfig:
    base: dict[str, object] = {
        "tid": TID,
        "mid": MID,
        "tmk": TMK,
        "host": HostAddress("127.0.0.1", 1),
        "merchant_name": "一号便利店",
    }
    base.update(changes)
    return TerminalConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def term(
    tmp_path: Path, host: FakeHost, clock: FakeClock, printer: MemoryPrinter, ereceipts: EReceipts
) -> Iterator[Terminal]:
    t = Terminal(
        config(), tmp_path / "pos", clock=clock, printer=printer, link=host, e_receipt_writer=ereceipts
    )
    yield t
    t.close()


def journal_rows(term: Terminal) -> list[dict[str, object]]:
    with term.journal.begin() as conn:
        return [dict(r) for r in conn.execute(select(txns)).mappings()]


# --- approvals -------------------------------------------------------------------------------


def test_sale_signs_in_by_itself_is_approved_and_prints_two_copies_from_the_journal(
    term: Terminal, host: FakeHost, printer: MemoryPrinter
) -> None:
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.APPROVED and res.approved
    assert res.receipt is ReceiptState.PRINTED
    assert host.sign_ins == 1 and host.ledger_minor == 1250
    (sale,) = host.of_mti("0200")
    assert sale["22"] == "011" and sale["26"] == "12" and "52" in sale and sale["60"] == "22000001000"
    assert [p.copy for p in printer.printed] == [Copy.MERCHANT, Copy.CARDHOLDER]
    slip = printer.printed[0].slip
    assert slip.pan_masked == "622202*********0123" and slip.entry_mode == "M"
    assert slip.trans_type is TransType.SALE and slip.amount_minor == 1250
    assert slip.rrn == res.rrn and slip.auth_code == res.auth_code and slip.trace == res.trace
    assert slip.issuer == "FAKE BANK" and slip.merchant_name == "一号便利店"
    assert not printer.printed[0].reprint
    (entry,) = term.entries()
    assert entry.state is TxnState.APPROVED and entry.reversal_state is ReversalState.CANCELLED
    assert entry.receipt is ReceiptState.PRINTED


def test_the_journal_never_holds_the_pin_block(term: Terminal, host: FakeHost) -> None:
    term.sale(1250, PAN, EXPIRY, PIN)
    term.balance(PAN, EXPIRY, PIN)
    for row in journal_rows(term):
        assert "52" not in json.loads(str(row["request"]))
    term.close()
    stored = b"".join(p.read_bytes() for p in term.data_dir.glob("journal.db*"))
    for req in host.of_mti("0200"):
        block = req["52"]
        assert block.encode() not in stored and bytes.fromhex(block) not in stored


def test_sale_without_pin_is_entry_mode_012_without_fields_26_and_52(term: Terminal, host: FakeHost) -> None:
    assert term.sale(100, PAN, EXPIRY).approved
    (sale,) = host.of_mti("0200")
    assert sale["22"] == "012" and "26" not in sale and "52" not in sale


def test_stan_increments_persistently_and_wraps(term: Terminal, tmp_path: Path, host: FakeHost) -> None:
    first = term.sale(100, PAN, EXPIRY).trace
    second = term.sale(100, PAN, EXPIRY).trace
    assert first is not None and second is not None and int(second) == int(first) + 1
    with term.journal.begin() as conn:
        conn.execute(update(counters).where(counters.c.name == "stan").values(value=999_999))
    assert term.sale(100, PAN, EXPIRY).trace == "000001"


def test_balance_inquiry_reads_field_54(term: Terminal, host: FakeHost) -> None:
    res = term.balance(PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.APPROVED and res.balance_minor == 100_000
    (req,) = host.of_mti("0200")
    assert req["3"] == "310000" and req["60"].startswith("01") and "4" not in req
    assert not term.pending_reversals()


# --- declines --------------------------------------------------------------------------------


def test_decline_51_cancels_the_reversal_and_prints_nothing(
    term: Terminal, host: FakeHost, printer: MemoryPrinter
) -> None:
    res = term.sale(200_000, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.DECLINED and res.code is ResponseCode.INSUFFICIENT_FUNDS
    assert "余额不足" in res.text and "insufficient funds" in res.text
    assert printer.printed == [] and host.of_mti("0400") == []
    (entry,) = term.entries()
    assert entry.state is TxnState.DECLINED and entry.reversal_state is ReversalState.CANCELLED


def test_verified_96_repeats_the_same_request(term: Terminal, host: FakeHost) -> None:
    host.script.append(Act.ANSWER_96)
    res = term.sale(300, PAN, EXPIRY, PIN)
    assert res.approved
    a, b = host.of_mti("0200")
    assert a["11"] == b["11"] and a.fields == b.fields


# --- unknown outcomes and reversals ----------------------------------------------------------


def test_lost_response_is_reversed_98_and_the_ledger_is_unchanged(
    term: Terminal, host: FakeHost, printer: MemoryPrinter
) -> None:
    host.script.append(Act.DROP_RESPONSE)
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSED and not res.approved
    (sale,) = host.of_mti("0200")
    (rev,) = host.of_mti("0400")
    assert rev["39"] == "98" and rev["11"] == sale["11"] and rev["60"] == sale["60"]
    assert not {"26", "35", "36", "52", "53"} & rev.fields.keys()
    assert rev["4"] == sale["4"] and rev["2"] == sale["2"]
    assert host.ledger_minor == 0 and host.balances[PAN] == 100_000
    assert printer.printed == []
    (entry,) = term.entries()
    assert entry.state is TxnState.REVERSED and entry.reversal_state is ReversalState.DONE


def test_request_lost_before_the_host_is_reversed_too_and_leaves_a_tombstone(
    term: Terminal, host: FakeHost
) -> None:
    host.script.append(Act.DROP_REQUEST)
    assert term.sale(1250, PAN, EXPIRY, PIN).outcome is Outcome.REVERSED
    assert len(host.tombstones) == 1 and host.ledger_minor == 0


def test_bad_response_mac_reverses_a0_and_signs_in_again(term: Terminal, host: FakeHost) -> None:
    host.script.append(Act.CORRUPT_MAC)
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSED
    (rev,) = host.of_mti("0400")
    assert rev["39"] == "A0"
    assert host.sign_ins == 2  # the first, then a new one before the reversal went out
    assert host.ledger_minor == 0 and host.balances[PAN] == 100_000
    assert term.sale(100, PAN, EXPIRY).approved


def test_reversal_carries_the_auth_code_when_known() -> None:
    orig = Message(
        "0200",
        {
            "2": PAN,
            "3": "000000",
            "4": "000000000100",
            "11": "000007",
            "52": "AB" * 8,
            "26": "12",
            "53": "2600000000000000",
            "60": "22000001000",
            "64": "X" * 8,
        },
    )
    rev = build_reversal(orig, ReversalReason.CANNOT_COMPLETE, "123456")
    assert rev.mti == "0400" and rev["39"] == "96" and rev["38"] == "123456"
    assert rev["11"] == "000007" and rev["60"] == "22000001000"
    assert not {"26", "52", "53", "64"} & rev.fields.keys()


def test_approval_without_an_auth_code_cannot_complete_and_is_reversed_96(
    term: Terminal, host: FakeHost, printer: MemoryPrinter
) -> None:
    host.script.append(Act.NO_AUTH_CODE)
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSED and printer.printed == []
    (rev,) = host.of_mti("0400")
    assert rev["39"] == "96" and host.ledger_minor == 0


def test_unreachable_reversal_stays_pending_with_an_alert_blocks_and_is_sent_later(
    term: Terminal, host: FakeHost
) -> None:
    host.script.extend([Act.DROP_RESPONSE, Act.UNREACHABLE, Act.UNREACHABLE, Act.UNREACHABLE])
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSAL_PENDING
    assert "冲正" in res.text and "reversal" in res.text
    assert host.ledger_minor == 1250  # approved at the host, reversal not yet through
    (pending,) = term.pending_reversals()
    assert pending.reversal_reason is ReversalReason.NO_RESPONSE and pending.reversal_attempts == 3
    assert any(a.kind == "reversal_pending" for a in term.alerts())
    # The line stays down: the next sale is not started, the reversal is kept.
    host.unreachable = True
    blocked = term.sale(100, PAN, EXPIRY)
    assert blocked.outcome is Outcome.BLOCKED_BY_REVERSAL
    assert len(term.pending_reversals()) == 1
    assert term.recover().outcome is Outcome.REVERSAL_PENDING
    # The line comes back: recover sends it, the ledger is restored.
    host.unreachable = False
    done = term.recover()
    assert done.outcome is Outcome.DONE
    assert host.ledger_minor == 0 and term.pending_reversals() == []
    assert term.entries()[-1].state is TxnState.REVERSED


def test_a_repeated_reversal_answered_00_is_done(term: Terminal, host: FakeHost) -> None:
    host.script.extend([Act.DROP_RESPONSE, Act.DROP_RESPONSE])  # the sale and the first reversal
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSED
    first, second = host.of_mti("0400")
    assert first.fields == second.fields
    assert host.ledger_minor == 0


def test_pending_reversal_goes_out_before_the_next_transaction(term: Terminal, host: FakeHost) -> None:
    host.script.extend([Act.DROP_RESPONSE, Act.UNREACHABLE, Act.UNREACHABLE, Act.UNREACHABLE])
    term.sale(1250, PAN, EXPIRY, PIN)
    assert term.sale(200, PAN, EXPIRY).approved
    kinds = [m.mti for m in host.requests if m.mti != "0800"]
    assert kinds == ["0200", "0400", "0200"]
    assert host.ledger_minor == 200


def test_host_unreachable_sends_nothing_and_leaves_nothing_pending(term: Terminal, host: FakeHost) -> None:
    term.sign_in()
    host.script.append(Act.UNREACHABLE)
    res = term.sale(100, PAN, EXPIRY)
    assert res.outcome is Outcome.HOST_UNREACHABLE
    assert term.pending_reversals() == []
    assert term.entries()[0].state is TxnState.NOT_PROCESSED


def test_interrupted_sale_is_reversed_06_on_recover(
    tmp_path: Path, host: FakeHost, clock: FakeClock, printer: MemoryPrinter, ereceipts: EReceipts
) -> None:
    class Crash(BaseException):
        pass

    class CrashingLink:
        crash = False

        def exchange(self, message: bytes) -> LinkResult:
            answer = host.exchange(message)
            if self.crash:  # the host processes it; the device dies before the answer
                raise Crash
            return answer

        def close(self) -> None:
            pass

    data = tmp_path / "pos"
    link = CrashingLink()
    t1 = Terminal(config(), data, clock=clock, printer=printer, link=link, e_receipt_writer=ereceipts)
    t1.sign_in()
    link.crash = True
    with pytest.raises(Crash):
        t1.sale(1250, PAN, EXPIRY, PIN)
    t1.close()
    assert host.ledger_minor == 1250
    t2 = Terminal(config(), data, clock=clock, printer=printer, link=host, e_receipt_writer=ereceipts)
    assert t2.signed_in  # the session survived the restart
    assert t2.recover().outcome is Outcome.DONE
    (rev,) = host.of_mti("0400")
    assert rev["39"] == "06" and host.ledger_minor == 0
    assert t2.entries()[0].state is TxnState.REVERSED
    t2.close()


# --- sessions --------------------------------------------------------------------------------


def test_77_signs_in_and_sends_again_with_a_new_stan(term: Terminal, host: FakeHost) -> None:
    term.sign_in()
    host.script.append(Act.ANSWER_77)
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.approved
    first, second = host.of_mti("0200")
    assert int(second["11"]) > int(first["11"])
    assert host.sign_ins == 2 and host.ledger_minor == 1250
    assert host.of_mti("0400") == []
    states = sorted(e.state for e in term.entries())
    assert states == sorted([TxnState.APPROVED, TxnState.NOT_PROCESSED])


def test_host_session_lost_gives_77_and_the_terminal_recovers(term: Terminal, host: FakeHost) -> None:
    term.sign_in()
    host.keys = None  # e.g. the host restarted its sessions
    assert term.sale(100, PAN, EXPIRY).approved
    assert host.sign_ins == 2


def test_signs_in_again_before_the_key_lifetime_runs_out(
    term: Terminal, host: FakeHost, clock: FakeClock
) -> None:
    term.sale(100, PAN, EXPIRY)
    clock.advance(term.config.refresh_after_s - 1)
    term.sale(100, PAN, EXPIRY)
    assert host.sign_ins == 1
    clock.advance(2)
    term.sale(100, PAN, EXPIRY)
    assert host.sign_ins == 2


def test_wrong_check_value_fails_the_sign_in_and_the_keys_are_not_used(
    term: Terminal, host: FakeHost
) -> None:
    host.bad_kcv = True
    res = term.sign_in()
    assert res.outcome is Outcome.SIGN_IN_FAILED and not term.signed_in
    sale = term.sale(100, PAN, EXPIRY)
    assert sale.outcome is Outcome.SIGN_IN_FAILED
    assert host.of_mti("0200") == []
    assert term.journal.load_session() is None


def test_sign_in_takes_the_batch_from_the_response(term: Terminal, host: FakeHost) -> None:
    host.batch = "000042"
    res = term.sign_in()
    assert res.outcome is Outcome.DONE and res.batch == "000042" and term.batch == "000042"
    (req,) = host.of_mti("0800")
    assert req["63"] == "001" and req["60"] == "00000001003"


def test_sign_out_drops_the_session(term: Terminal, host: FakeHost) -> None:
    term.sign_in()
    assert term.sign_out().outcome is Outcome.DONE
    assert not term.signed_in and host.of_mti("0820")[0]["60"].endswith("002")


# --- voids -----------------------------------------------------------------------------------


def test_void_by_trace_names_the_original(term: Terminal, host: FakeHost, printer: MemoryPrinter) -> None:
    sale = term.sale(1250, PAN, EXPIRY, PIN)
    assert sale.trace is not None
    void = term.void(str(int(sale.trace)))
    assert void.approved
    req = host.of_mti("0200")[-1]
    assert req["3"] == "200000" and req["4"] == "000000001250" and req["37"] == sale.rrn
    assert req["38"] == sale.auth_code and req["61"] == f"000001{sale.trace}1129"
    assert req["60"].startswith("23") and "52" not in req
    assert host.ledger_minor == 0 and host.balances[PAN] == 100_000
    states = {e.kind: e.state for e in term.entries()}
    assert states == {TxnKind.SALE: TxnState.VOIDED, TxnKind.VOID: TxnState.APPROVED}
    slip = printer.printed[-1].slip
    assert slip.trans_type is TransType.VOID and slip.reference and sale.trace in slip.reference
    assert term.void(sale.trace).outcome is Outcome.NOT_FOUND


def test_void_of_an_unknown_trace_sends_nothing(term: Terminal, host: FakeHost) -> None:
    assert term.void("123").outcome is Outcome.NOT_FOUND
    assert host.of_mti("0200") == []


def test_lost_void_response_is_reversed(term: Terminal, host: FakeHost) -> None:
    sale = term.sale(1250, PAN, EXPIRY, PIN)
    assert sale.trace is not None
    host.script.append(Act.DROP_RESPONSE)
    assert term.void(sale.trace).outcome is Outcome.REVERSED
    assert term.journal.find(kind=TxnKind.SALE, stan=sale.trace, batch="000001") is not None
    states = {e.kind: e.state for e in term.entries()}
    assert states == {TxnKind.SALE: TxnState.APPROVED, TxnKind.VOID: TxnState.REVERSED}


# --- receipts --------------------------------------------------------------------------------


def test_jammed_printer_keeps_the_sale_owes_the_receipt_writes_an_e_receipt_and_reprint_clears(
    term: Terminal, host: FakeHost, printer: MemoryPrinter, ereceipts: EReceipts
) -> None:
    printer.set_status(PrinterStatus.JAMMED)
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.approved and res.receipt is ReceiptState.OWED
    assert res.e_receipt is not None and res.e_receipt.exists()
    assert res.e_receipt.parent.name == "e-receipts"
    assert host.ledger_minor == 1250 and host.of_mti("0400") == []
    assert term.entries()[0].receipt is ReceiptState.OWED
    assert any(a.kind == "receipt_owed" for a in term.alerts())
    assert term.reprint().outcome is Outcome.PRINT_FAILED
    printer.set_status(PrinterStatus.READY)
    again = term.reprint()
    assert again.outcome is Outcome.DONE and again.trace == res.trace
    assert [p.reprint for p in printer.printed] == [True, True]
    assert term.entries()[0].receipt is ReceiptState.PRINTED


def test_reprint_by_trace_and_of_nothing(term: Terminal, printer: MemoryPrinter) -> None:
    assert term.reprint().outcome is Outcome.NOT_FOUND
    a = term.sale(100, PAN, EXPIRY)
    term.sale(200, PAN, EXPIRY)
    assert a.trace is not None
    res = term.reprint(a.trace)
    assert res.outcome is Outcome.DONE and printer.printed[-1].slip.amount_minor == 100
    assert printer.printed[-1].reprint


def test_no_printer_means_receipt_owed_with_e_receipt(
    tmp_path: Path, host: FakeHost, clock: FakeClock, ereceipts: EReceipts
) -> None:
    with Terminal(config(), tmp_path / "p", clock=clock, link=host, e_receipt_writer=ereceipts) as t:
        res = t.sale(100, PAN, EXPIRY)
        assert res.approved and res.receipt is ReceiptState.OWED and len(ereceipts.slips) == 1


# --- input and tables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "pan", "expiry", "pin"),
    [
        (0, PAN, EXPIRY, None),
        (100, "12345", EXPIRY, None),
        (100, PAN, "3013", None),
        (100, PAN, EXPIRY, "12"),
    ],
)
def test_bad_input_is_rejected_before_anything_is_journalled(
    term: Terminal, host: FakeHost, amount: int, pan: str, expiry: str, pin: str | None
) -> None:
    with pytest.raises(InputError):
        term.sale(amount, pan, expiry, pin)
    assert host.requests == [] and term.entries() == []


def test_transition_table_refuses_impossible_moves() -> None:
    check(TXN_TRANSITIONS, TxnState.SENT, TxnState.APPROVED)
    with pytest.raises(IllegalTransition):
        check(TXN_TRANSITIONS, TxnState.DECLINED, TxnState.APPROVED)
    with pytest.raises(IllegalTransition):
        check(TXN_TRANSITIONS, TxnState.REVERSED, TxnState.APPROVED)


def test_config_repr_hides_the_tmk() -> None:
    assert TMK.hex() not in repr(config()).lower() and "hidden" in repr(config())


def test_one_terminal_per_data_dir_at_a_time(
    term: Terminal, host: FakeHost, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tillroll.terminal import TerminalError
    from tillroll.terminal import device as engine_module

    monkeypatch.setattr(engine_module, "LOCK_WAIT_S", 0.1)
    with pytest.raises(TerminalError, match="another `tillroll pos` command"):
        Terminal(config(), term.data_dir, clock=clock, link=host)
    term.close()
    Terminal(config(), term.data_dir, clock=clock, link=host).close()
