"""The terminal engine where the real host cannot take part: the scripted fake host here answers
what the real one never does. Every other scenario (approvals, declines, 96, lost answers, bad
MACs, reversals, 77, sessions, voids, receipts) runs against the real HostServer through the
fault proxy in tests/integration/test_terminal_host.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from test_terminal_fakehost import EXPIRY, MID, PAN, PIN, TID, TMK, Act, FakeHost

from tillroll.clock import FakeClock
from tillroll.iso8583.messages import Message
from tillroll.terminal import (
    HostAddress,
    IllegalTransition,
    InputError,
    Outcome,
    ReversalReason,
    Terminal,
    TerminalConfig,
    TxnState,
    build_reversal,
)
from tillroll.terminal.journal import counters, txns
from tillroll.terminal.printer import MemoryPrinter
from tillroll.terminal.receipt import Slip
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


# --- what the real host would not do ---------------------------------------------------------


# On the real host a wrapped STAN collides with the earlier request of the batch that used it
# (94); the wrap itself is the journal's counter, so the fake answers whatever STAN comes.
def test_stan_increments_persistently_and_wraps(term: Terminal, tmp_path: Path, host: FakeHost) -> None:
    first = term.sale(100, PAN, EXPIRY).trace
    second = term.sale(100, PAN, EXPIRY).trace
    assert first is not None and second is not None and int(second) == int(first) + 1
    with term.journal.begin() as conn:
        conn.execute(update(counters).where(counters.c.name == "stan").values(value=999_999))
    assert term.sale(100, PAN, EXPIRY).trace == "000001"


# Pure: the builder, no host at all.
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


# The real host always sends field 38 with an approval.
def test_approval_without_an_auth_code_cannot_complete_and_is_reversed_96(
    term: Terminal, host: FakeHost, printer: MemoryPrinter
) -> None:
    host.script.append(Act.NO_AUTH_CODE)
    res = term.sale(1250, PAN, EXPIRY, PIN)
    assert res.outcome is Outcome.REVERSED and printer.printed == []
    (rev,) = host.of_mti("0400")
    assert rev["39"] == "96" and host.ledger_minor == 0


# The real host's check values are right; a byte flipped by the proxy fails decoding or the MAC
# instead, never only the check value.
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


# The real host chooses the batch itself; the fake is told one.
def test_sign_in_takes_the_batch_from_the_response(term: Terminal, host: FakeHost) -> None:
    host.batch = "000042"
    res = term.sign_in()
    assert res.outcome is Outcome.DONE and res.batch == "000042" and term.batch == "000042"
    (req,) = host.of_mti("0800")
    assert req["63"] == "001" and req["60"] == "00000001003"


# --- no host involved: input, tables, the device -------------------------------------------


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
