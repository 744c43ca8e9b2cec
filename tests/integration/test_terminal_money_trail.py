"""Refunds and settlement from the terminal engine, against the real host over real TCP (issue 3).

Faults come from the fault proxy (lost responses) and from the host pipeline's ``fault_hook``
(a store failure mid-request, answered 96).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tillroll.clock import FakeClock
from tillroll.host import HostServer, InjectedStoreFailure
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.messages import Message
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.sim.printer_emulator import PrinterEmulator
from tillroll.store.tables import batch_differences, settlements, transactions
from tillroll.terminal import (
    HostAddress,
    Outcome,
    ReceiptState,
    RefundState,
    Result,
    SettlementState,
    Terminal,
    TerminalConfig,
    TerminalError,
    TxnKind,
)

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
EXPIRY = "3012"
START_MINOR = 100_000


class StoreFaults:
    """Fails the host's store, before commit, for the next ``count`` requests of one MTI."""

    def __init__(self) -> None:
        self.mti: str | None = None
        self.count = 0
        self.hits = 0

    def arm(self, mti: str, count: int = 1) -> None:
        self.mti, self.count = mti, count

    def __call__(self, point: str, msg: Message) -> None:
        if point == "before_commit" and msg.mti == self.mti and self.count:
            self.count -= 1
            self.hits += 1
            raise InjectedStoreFailure("injected store failure")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostStore]:
    monkeypatch.setenv("TILLROLL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    s = open_store(f"sqlite:///{tmp_path / 'host.db'}")
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    add_card(s, PAN, EXPIRY, "123456", START_MINOR)
    yield s
    s.engine.dispose()


@pytest.fixture
def faults() -> StoreFaults:
    return StoreFaults()


@pytest.fixture
def host_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def host(store: HostStore, faults: StoreFaults, host_clock: FakeClock) -> Iterator[HostServer]:
    with HostServer(store, clock=host_clock, key_lifetime_s=3600) as server:
        assert server._service is not None
        server._service.pipeline.fault_hook = faults
        yield server


@pytest.fixture
def proxy(host: HostServer) -> Iterator[FaultProxy]:
    with FaultProxy(host.address) as p:
        yield p


def make_terminal(data_dir: Path, address: tuple[str, int], **kw: object) -> Terminal:
    config = TerminalConfig(
        tid=TID,
        mid=MID,
        tmk=TMK,
        host=HostAddress(*address),
        merchant_name="一号便利店",
        response_timeout_s=2.0,  # generous: a first request on a busy 2-core CI machine
        connect_timeout_s=2.0,
        refund_retries_max=2,
        retry_backoff_s=0.01,
        printer_url=kw.pop("printer_url", None),  # type: ignore[arg-type]
    )
    return Terminal(config, data_dir, **kw)  # type: ignore[arg-type]


@pytest.fixture
def term(tmp_path: Path, proxy: FaultProxy) -> Iterator[Terminal]:
    t = make_terminal(tmp_path / "pos", proxy.address)
    yield t
    t.close()


def sale(term: Terminal, amount_minor: int) -> tuple[Result, str]:
    """An approved sale and its host date (field 13), which a refund names in 61.3."""
    res = term.sale(amount_minor, PAN, EXPIRY)
    assert res.approved, res.text
    assert res.txn_id is not None
    host_date = term.journal.get(res.txn_id).host_date
    assert host_date is not None
    return res, host_date


def host_refunds(store: HostStore) -> list[int]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(transactions.c.amount_minor).where(
                transactions.c.kind == "refund", transactions.c.status == "approved"
            )
        ).all()
    return [int(r[0]) for r in rows]


def refund_entries(term: Terminal) -> list[RefundState]:
    return [RefundState(e.state) for e in term.entries() if e.kind is TxnKind.REFUND]


# --- refunds ---------------------------------------------------------------------------------


def test_refund_approved_prints_refund_slips(tmp_path: Path, proxy: FaultProxy, store: HostStore) -> None:
    with (
        PrinterEmulator() as printer,
        make_terminal(tmp_path / "pos", proxy.address, printer_url=printer.url) as t,
    ):
        s, date = sale(t, 1250)
        assert s.rrn is not None
        r = t.refund(400, s.rrn, date)
        assert r.approved, r.text
        assert r.receipt is ReceiptState.PRINTED
        docs = printer.documents()[2:]  # after the sale's two copies
        assert len(docs) == 2
        assert all("REFUND" in d and s.rrn in d and PAN not in d for d in docs)
        (entry,) = [e for e in t.entries() if e.kind is TxnKind.REFUND]
        assert entry.state is RefundState.APPROVED and entry.request.mti == "0220"
        f = entry.request.fields
        assert f["3"] == "200000" and f["37"] == s.rrn and f["63"] == "000" and f["2"] == PAN
        assert f["60"] == f"25{t.batch}000"
        assert f["61"] == f"{s.batch}{s.trace}{date}"
    assert card_balance(store, PAN) == START_MINOR - 1250 + 400


def test_partial_refunds_and_61_beyond_what_is_left(term: Terminal, store: HostStore) -> None:
    s, date = sale(term, 10_000)
    assert s.rrn is not None
    assert term.refund(4_000, s.rrn, date).approved
    over = term.refund(6_001, s.rrn, date)
    assert over.outcome is Outcome.DECLINED and over.code is ResponseCode.AMOUNT_LIMIT
    assert "61" in over.text and "exceeds what is left to refund" in over.text and "超出可退金额" in over.text
    assert term.refund(6_000, s.rrn, date).approved
    assert term.refund(1, s.rrn, date).code is ResponseCode.AMOUNT_LIMIT
    assert card_balance(store, PAN) == START_MINOR
    assert sorted(host_refunds(store)) == [4_000, 6_000]
    assert sorted(refund_entries(term)) == sorted(
        [RefundState.APPROVED, RefundState.APPROVED, RefundState.DECLINED, RefundState.DECLINED]
    )


def test_refund_of_a_sale_not_in_this_journal_needs_trace_and_batch(
    term: Terminal, tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    s, date = sale(term, 3_000)
    assert s.rrn and s.trace and s.batch
    term.close()
    with make_terminal(tmp_path / "other", proxy.address) as other:  # a fresh journal, same TID
        wrong = other.refund(100, s.rrn, date, trace=s.trace, batch=s.batch, pan="6222021234567890000")
        assert wrong.code is ResponseCode.ORIGINAL_NOT_FOUND
        ok = other.refund(1_000, s.rrn, date, trace=s.trace, batch=s.batch, pan=PAN, expiry=EXPIRY)
        assert ok.approved, ok.text
    assert card_balance(store, PAN) == START_MINOR - 2_000


def test_lost_refund_response_completes_on_the_automatic_retry_exactly_once(
    term: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    s, date = sale(term, 5_000)
    assert s.rrn is not None
    proxy.inject(Fault.DROP_RESPONSE)  # the host refunds, the answer is lost
    r = term.refund(2_000, s.rrn, date)
    assert r.approved, r.text
    assert card_balance(store, PAN) == START_MINOR - 3_000
    assert host_refunds(store) == [2_000]
    assert refund_entries(term) == [RefundState.APPROVED]


def test_refund_answered_96_by_a_store_failure_completes_on_retry(
    term: Terminal, faults: StoreFaults, store: HostStore
) -> None:
    s, date = sale(term, 5_000)
    assert s.rrn is not None
    faults.arm("0220")
    r = term.refund(1_500, s.rrn, date)
    assert faults.hits == 1
    assert r.approved, r.text
    assert host_refunds(store) == [1_500]
    assert card_balance(store, PAN) == START_MINOR - 3_500


def test_refund_unknown_after_every_retry_stays_unknown_and_recover_completes_it(
    term: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    s, date = sale(term, 5_000)
    assert s.rrn is not None
    proxy.inject(Fault.DROP_RESPONSE, count=-1)
    r = term.refund(2_500, s.rrn, date)
    assert r.outcome is Outcome.REFUND_UNKNOWN
    assert "system error" not in r.text.lower()
    assert "退货" in r.text and "recover" in r.text and "no answer" in r.text  # cause and next step
    assert refund_entries(term) == [RefundState.UNKNOWN]
    assert any(a.kind == "refund_unknown" for a in term.alerts())
    # A second refund of the same sale is not started while the first is open.
    assert term.refund(100, s.rrn, date).outcome is Outcome.REFUND_BLOCKED
    proxy.clear()
    done = term.recover()
    assert done.outcome is Outcome.DONE, done.text
    assert refund_entries(term) == [RefundState.APPROVED]
    assert host_refunds(store) == [2_500]  # once, though sent many times
    assert card_balance(store, PAN) == START_MINOR - 2_500


def test_refund_answered_77_signs_in_and_sends_the_same_request(
    term: Terminal, host_clock: FakeClock, store: HostStore
) -> None:
    s, date = sale(term, 5_000)
    assert s.rrn is not None
    host_clock.advance(3601)  # the host's session ends; the terminal's clock thinks it is fresh
    r = term.refund(800, s.rrn, date)
    assert r.approved, r.text
    (entry,) = [e for e in term.entries() if e.kind is TxnKind.REFUND]
    assert entry.stan == r.trace  # one entry, one STAN: the same request went again
    assert host_refunds(store) == [800]


def test_refund_interrupted_after_the_host_answered_is_finished_by_recover(
    term: Terminal, store: HostStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host refunded and answered, but the journal could not record it: the refund stays
    open (submitted) and `recover` sends the same request, which the host replays."""
    s, date = sale(term, 5_000)
    assert s.rrn is not None

    def journal_fails(*args: object, **kwargs: object) -> Result:
        raise OperationalError("UPDATE txns", {}, Exception("disk I/O error"))

    monkeypatch.setattr(term.refunds, "_approve", journal_fails)
    with pytest.raises(TerminalError, match="journal"):
        term.refund(1_000, s.rrn, date)
    assert refund_entries(term) == [RefundState.SUBMITTED]
    monkeypatch.undo()
    assert term.recover().outcome is Outcome.DONE
    assert refund_entries(term) == [RefundState.APPROVED]
    assert host_refunds(store) == [1_000]
    assert card_balance(store, PAN) == START_MINOR - 4_000


# --- settlement ------------------------------------------------------------------------------


def test_settlement_balanced_moves_to_the_next_batch_and_signs_in(term: Terminal, store: HostStore) -> None:
    s1, date = sale(term, 1_000)
    s2, _ = sale(term, 2_000)
    sale(term, 700)
    assert s1.trace and s2.rrn
    assert term.void(s1.trace).approved
    assert term.refund(500, s2.rrn, date).approved
    batch = term.batch
    res = term.settle()
    assert res.outcome is Outcome.SETTLED, res.text
    assert "结算" in res.text and "balanced" in res.text
    assert term.signed_in and term.batch == f"{int(batch) + 1:06d}"
    (st,) = term.settlements()
    assert st.state is SettlementState.BALANCED and st.batch == batch
    assert (st.totals.debit_minor, st.totals.debit_count) == (2_700, 2)
    assert (st.totals.credit_minor, st.totals.credit_count) == (500, 1)
    assert st.request.fields["48"] == "000000002700002000000000500001" + "0" * 32
    with store.engine.connect() as conn:
        (row,) = conn.execute(select(settlements)).mappings().all()
    assert row["balanced"] == 1 and row["batch"] == batch
    nxt = term.sale(100, PAN, EXPIRY)  # the new batch works at once
    assert nxt.approved and nxt.batch == term.batch


def test_settlement_not_balanced_uploads_the_batch_and_the_host_records_the_difference(
    term: Terminal, tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    """An honest disagreement: a second device with the same TID (a swapped-in spare, say) takes
    a sale the first terminal's journal never saw. Its sign-in also replaces the first one's
    keys, so the first terminal's 0500 is refused, it signs in again and repeats it."""
    s, _ = sale(term, 1_000)
    term.sign_in()
    with make_terminal(tmp_path / "spare", proxy.address) as spare:
        # Its STANs move past the first terminal's sale before it signs in: a sign-in at a STAN
        # the host has already stored in the batch would be a lost journal (PROFILE §6), and
        # the host would close the batch instead.
        spare.sign_out()
        spare.sign_out()
        spare.sign_in()
        other = spare.sale(700, PAN, EXPIRY)
        assert other.approved and other.trace != s.trace
    batch = term.batch
    res = term.settle()
    assert res.outcome is Outcome.SETTLED_NOT_BALANCED, res.text
    assert "不平" in res.text and "NOT balanced" in res.text
    (st,) = term.settlements()
    assert st.state is SettlementState.UPLOADED and st.items_uploaded == 1
    assert term.batch == f"{int(batch) + 1:06d}" and term.signed_in
    with store.engine.connect() as conn:
        diffs = conn.execute(select(batch_differences)).mappings().all()
        (row,) = conn.execute(select(settlements)).mappings().all()
    assert [(d["stan"], d["difference"], d["host_amount_minor"]) for d in diffs] == [
        (other.trace, "missing_at_terminal", 700)
    ]
    assert row["balanced"] == 0 and row["upload_items"] == 1


def test_settlement_waits_for_an_open_refund(term: Terminal, proxy: FaultProxy) -> None:
    s, date = sale(term, 1_000)
    assert s.rrn is not None
    proxy.inject(Fault.DROP_RESPONSE, count=-1)
    assert term.refund(300, s.rrn, date).outcome is Outcome.REFUND_UNKNOWN
    assert term.settle().outcome is Outcome.SETTLEMENT_BLOCKED
    assert term.settlements() == []
    proxy.clear()
    res = term.settle()  # the refund goes out first, then the settlement balances
    assert res.outcome is Outcome.SETTLED, res.text
    assert refund_entries(term) == [RefundState.APPROVED]
    assert term.settlements()[0].totals.credit_minor == 300


def test_settlement_whose_answer_is_lost_is_repeated_and_replayed(
    term: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    """The host closes the batch when it answers 0510; the terminal repeats the same 0500 and the
    host replays its stored answer, so a lost 0510 settles the batch exactly once."""
    sale(term, 1_000)
    batch = term.batch
    proxy.inject(Fault.DROP_RESPONSE)
    res = term.settle()
    assert res.outcome is Outcome.SETTLED, res.text
    assert term.batch != batch
    with store.engine.connect() as conn:
        (row,) = conn.execute(select(settlements)).mappings().all()
    assert row["balanced"] == 1  # the host settled it, once
    assert term.sale(100, PAN, EXPIRY).approved
