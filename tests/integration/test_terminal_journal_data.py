"""The terminal journal's card data against the real host over real TCP (issue 6, PROFILE §7):
the full card number is never in the journal's files in clear, is kept sealed only while its
batch may need it, and reversal, void, refund and batch upload still work while it is kept."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text, update
from typer.testing import CliRunner

from tillroll.clock import FakeClock
from tillroll.crypto.keystore import KeyStore
from tillroll.host import HostServer, InjectedStoreFailure
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.messages import Message
from tillroll.pan import mask_pan
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.store.tables import batch_uploads
from tillroll.terminal import (
    ConfigError,
    HostAddress,
    InputError,
    Outcome,
    SettlementState,
    Terminal,
    TerminalConfig,
    TxnKind,
    TxnState,
    save_config,
)
from tillroll.terminal.cli import app
from tillroll.terminal.journal import SCHEMA_VERSION, BatchState, Journal, txns
from tillroll.terminal.receipt import Copy, slip_text
from tillroll.terminal.states import ReversalState

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PANS = ("6222021234567890123", "6228480000001234566", "621700000000987657")
EXPIRY = "3012"
PIN = "123456"
START_MINOR = 100_000


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostStore]:
    monkeypatch.setenv("TILLROLL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    s = open_store(f"sqlite:///{tmp_path / 'host.db'}")
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    for pan in PANS:
        add_card(s, pan, EXPIRY, PIN, START_MINOR)
    yield s
    s.engine.dispose()


class HostFails:
    """Fails the host's store before commit for every request of one MTI (the host then knows
    nothing was done) while ``mti`` is set."""

    def __init__(self) -> None:
        self.mti: str | None = None

    def __call__(self, point: str, msg: Message) -> None:
        if point == "before_commit" and msg.mti == self.mti:
            raise InjectedStoreFailure("injected store failure")


@pytest.fixture
def host_fails() -> HostFails:
    return HostFails()


@pytest.fixture
def host(store: HostStore, host_fails: HostFails) -> Iterator[HostServer]:
    with HostServer(store, clock=FakeClock(), key_lifetime_s=3600) as server:
        assert server._service is not None
        server._service.pipeline.fault_hook = host_fails
        yield server


@pytest.fixture
def proxy(host: HostServer) -> Iterator[FaultProxy]:
    with FaultProxy(host.address) as p:
        yield p


def make_terminal(data_dir: Path, address: tuple[str, int]) -> Terminal:
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
    )
    return Terminal(config, data_dir)


@pytest.fixture
def term(tmp_path: Path, proxy: FaultProxy) -> Iterator[Terminal]:
    t = make_terminal(tmp_path / "pos", proxy.address)
    yield t
    t.close()


def journal_bytes(data_dir: Path) -> bytes:
    """The journal as it sits on disk: the database, its WAL and its shared-memory index."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("journal.db*")))


def pan_forms(pan: str) -> list[bytes]:
    """A card number as text and as packed BCD (how field 2 travels), either way it could sit."""
    digits = pan + "0" * (len(pan) % 2)
    return [pan.encode(), bytes.fromhex(digits)]


def clear_pans_in(blob: bytes) -> list[str]:
    return [pan for pan in PANS if any(form in blob for form in pan_forms(pan))]


def sealed_values(term: Terminal) -> list[str]:
    with term.journal.begin() as conn:
        return [str(v) for v in conn.execute(select(txns.c.pan_sealed)).scalars() if v]


def test_a_day_of_sales_refunds_and_reversals_never_writes_a_card_number_in_clear(
    term: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    a = term.sale(5_000, PANS[0], EXPIRY, PIN)
    b = term.sale(1_200, PANS[1], EXPIRY)
    c = term.sale(800, PANS[2], EXPIRY, PIN)
    assert a.approved and b.approved and c.approved and a.rrn and b.trace
    assert a.txn_id is not None
    date = term.journal.get(a.txn_id).host_date
    assert date is not None
    assert term.refund(2_000, a.rrn, date).approved
    assert term.void(b.trace).approved  # the void repeats the sealed card number
    proxy.inject(Fault.DROP_RESPONSE)
    lost = term.sale(300, PANS[2], EXPIRY, PIN)
    assert lost.outcome is Outcome.REVERSED  # the reversal repeats it too
    term.balance(PANS[1], EXPIRY, PIN)
    assert card_balance(store, PANS[0]) == START_MINOR - 3_000
    assert card_balance(store, PANS[1]) == START_MINOR
    assert card_balance(store, PANS[2]) == START_MINOR - 800

    assert clear_pans_in(journal_bytes(term.data_dir)) == []
    for e in term.entries():
        with term.journal.begin() as conn:
            row = conn.execute(select(txns.c.request).where(txns.c.id == e.id)).scalar_one()
        assert "2" not in json.loads(row)  # only the sealed column holds it
    kept = {e.kind for e in term.entries() if e.pan}
    assert kept == {TxnKind.SALE, TxnKind.VOID, TxnKind.REFUND}  # a balance inquiry's is not kept
    before = sealed_values(term)
    assert before

    # The host sees one sale the journal does not (tampered, as a damaged journal would be):
    # not balanced, so the batch upload sends every approved item with its card number.
    with term.journal.begin() as conn:
        conn.execute(update(txns).where(txns.c.id == c.txn_id).values(state=TxnState.DECLINED.value))
    batch = term.batch
    res = term.settle()
    assert res.outcome is Outcome.SETTLED_NOT_BALANCED, res.text
    (st,) = term.settlements()
    assert st.state is SettlementState.UPLOADED and st.items_uploaded == 2  # sale a and its refund
    with store.engine.connect() as conn:
        uploaded = conn.execute(select(batch_uploads.c.pan_masked)).scalars().all()
    assert sorted(uploaded) == [mask_pan(PANS[0])] * 2  # the full number went out, unsealed

    assert term.journal.batch_state(batch) is BatchState.SETTLED
    assert term.journal.sealed_pan_count(batch) == 0 and sealed_values(term) == []
    blob = journal_bytes(term.data_dir)
    assert clear_pans_in(blob) == []
    assert [v for v in before if v.encode() in blob] == []  # not even the sealed copies linger
    assert {e.pan_masked for e in term.entries() if e.kind is TxnKind.SALE} == {mask_pan(p) for p in PANS}
    assert all(e.pan == "" for e in term.entries())

    nxt = term.sale(100, PANS[0], EXPIRY)  # the next batch keeps its own numbers again
    assert nxt.approved and nxt.txn_id is not None
    assert term.journal.get(nxt.txn_id).pan == PANS[0]
    assert clear_pans_in(journal_bytes(term.data_dir)) == []


def test_a_pending_reversal_keeps_its_card_number_past_the_batch_until_it_is_answered(
    term: Terminal, proxy: FaultProxy, store: HostStore
) -> None:
    ok = term.sale(1_000, PANS[0], EXPIRY)
    assert ok.approved
    proxy.inject(Fault.DROP_RESPONSE, count=-1)
    stuck = term.sale(700, PANS[1], EXPIRY)
    assert stuck.outcome is Outcome.REVERSAL_PENDING and stuck.txn_id is not None
    old_batch = term.batch
    with term.journal.begin() as conn:  # the batch is left (the host moved on) while it is pending
        term.journal.set_batch(conn, f"{int(old_batch) + 1:06d}", term.clock.now())
    assert term.journal.batch_state(old_batch) is BatchState.CLOSED_BY_HOST
    assert term.journal.get(ok.txn_id or 0).pan == ""  # nothing pending: erased
    assert term.journal.get(stuck.txn_id).pan == PANS[1]  # the reversal must repeat it
    proxy.clear()
    assert term.recover().outcome is Outcome.DONE
    assert card_balance(store, PANS[1]) == START_MINOR
    assert term.journal.get(stuck.txn_id).pan == "" and term.journal.sealed_pan_count() == 0
    assert clear_pans_in(journal_bytes(term.data_dir)) == []


def _sale_request(pan: str, stan: str, batch: str) -> Message:
    return Message(
        "0200",
        {
            "2": pan,
            "3": "000000",
            "4": "000000001000",
            "11": stan,
            "14": EXPIRY,
            "22": "012",
            "25": "00",
            "41": TID,
            "42": MID,
            "49": "156",
            "60": f"22{batch}000",
        },
    )


def test_a_version_2_journal_with_clear_card_numbers_is_sealed_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    keys = KeyStore(bytes(range(32)))
    j = Journal(path, keys)
    now = FakeClock().now()
    with j.begin() as conn:
        j.set_batch(conn, "000001")
        old = j.record_request(
            conn, kind=TxnKind.SALE, request=_sale_request(PANS[0], "000001", "000001"),
            entry_mode="M", operator="001", now=now,
        )  # fmt: skip
        j.end_reversal(conn, old, ReversalState.CANCELLED, now)
        j.set_batch(conn, "000002")  # batch 1 left; its 0500 was never answered
        current = j.record_request(
            conn, kind=TxnKind.SALE, request=_sale_request(PANS[1], "000002", "000002"),
            entry_mode="M", operator="001", now=now,
        )  # fmt: skip
    j.close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # what a version-2 journal held: the number in clear, no seal
        for txn_id, pan in ((old, PANS[0]), (current, PANS[1])):
            req = json.loads(conn.execute(text(f"SELECT request FROM txns WHERE id = {txn_id}")).scalar_one())
            req["2"] = pan
            conn.execute(
                text("UPDATE txns SET request = :r WHERE id = :i"), {"r": json.dumps(req), "i": txn_id}
            )
        conn.execute(text("ALTER TABLE txns DROP COLUMN pan_sealed"))
        conn.execute(text("DROP TABLE batches"))
        conn.execute(text("UPDATE counters SET value = 2 WHERE name = 'schema'"))
    engine.dispose()
    assert clear_pans_in(journal_bytes(tmp_path)) == [PANS[0], PANS[1]]  # the test can fail

    j = Journal(path, keys)
    try:
        assert j.schema_version() == SCHEMA_VERSION == 3
        assert clear_pans_in(journal_bytes(tmp_path)) == []
        assert j.get(current).pan == PANS[1]  # the open batch keeps it, sealed
        assert j.get(old).pan == "" and j.get(old).pan_masked == mask_pan(PANS[0])
        assert j.batch_state("000001") is BatchState.CLOSED_BY_HOST
    finally:
        j.close()


# --- batches the host closed (PROFILE §6) ------------------------------------------------------


def test_a_batch_the_host_closed_is_marked_so_never_settled_and_its_reversal_still_goes(
    term: Terminal, tmp_path: Path, proxy: FaultProxy, store: HostStore, host_fails: HostFails
) -> None:
    kept = term.sale(1_000, PANS[0], EXPIRY)
    assert kept.approved
    proxy.inject(Fault.DROP_RESPONSE)  # the sale is charged, its answer lost ...
    host_fails.mti = "0400"  # ... and every reversal fails at the host (nothing done): pending
    stuck = term.sale(700, PANS[1], EXPIRY)
    assert stuck.outcome is Outcome.REVERSAL_PENDING and stuck.txn_id is not None
    old_batch = term.batch
    # The host closes the batch without this terminal: a spare device with the same TID settles
    # it (what a cut-over does host-side). Its sign-in also replaces this terminal's keys.
    with make_terminal(tmp_path / "spare", proxy.address) as spare:
        assert spare.sign_in().outcome is Outcome.DONE
        assert spare.settle().outcome in (Outcome.SETTLED, Outcome.SETTLED_NOT_BALANCED)
    assert card_balance(store, PANS[1]) == START_MINOR - 700  # charged, its reversal still owed
    host_fails.mti = None

    res = term.recover()  # signs in again: the host names a new batch
    assert res.outcome is Outcome.DONE, res.text
    assert term.batch != old_batch
    assert term.journal.batch_state(old_batch) is BatchState.CLOSED_BY_HOST
    assert any(a.kind == "batch_closed_by_host" for a in term.alerts())
    assert card_balance(store, PANS[1]) == START_MINOR  # the reversal went, naming the old batch
    assert term.pending_reversals() == [] and term.journal.sealed_pan_count() == 0
    assert clear_pans_in(journal_bytes(term.data_dir)) == []

    settled = term.settle()  # settles the new batch only; the old one is never settled or uploaded
    assert settled.outcome is Outcome.SETTLED and settled.batch != old_batch
    assert [s.batch for s in term.settlements()] == [settled.batch]
    assert card_balance(store, PANS[0]) == START_MINOR - 1_000  # the old batch's sale stands

    # A refund of the old batch's sale: its card number is gone, the RRN finds the sale.
    assert kept.rrn and kept.txn_id is not None
    date = term.journal.get(kept.txn_id).host_date
    assert date is not None
    with pytest.raises(InputError):
        term.refund(100, kept.rrn, date, pan=PANS[1])  # not the card of that sale (masked check)
    assert term.refund(400, kept.rrn, date, pan=PANS[0]).approved
    assert card_balance(store, PANS[0]) == START_MINOR - 600


# --- time ---------------------------------------------------------------------------------------


@pytest.fixture
def utc_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's TZ is UTC (as in a container) for the test, then restored."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_in_a_utc_process_the_slip_shows_beijing_time_and_the_journal_keeps_utc(
    tmp_path: Path, store: HostStore, utc_process: None
) -> None:
    instant = datetime(2026, 11, 29, 17, 5, 9)  # UTC: 2026-11-30 01:05:09 in Beijing
    clock = FakeClock(instant)
    with HostServer(store, clock=clock, key_lifetime_s=3600) as host:
        config = TerminalConfig(tid=TID, mid=MID, tmk=TMK, host=HostAddress(*host.address))
        with Terminal(config, tmp_path / "pos", clock=clock) as t:
            res = t.sale(1_250, PANS[0], EXPIRY)
            assert res.approved and res.txn_id is not None
            entry = t.journal.get(res.txn_id)
            assert (entry.host_date, entry.host_time) == ("1130", "010509")  # fields 13/12
            assert entry.approved_at == instant and entry.created_at == instant  # stored in UTC
            text = slip_text(t.slip_for(entry), Copy.CARDHOLDER)
    assert "2026/11/30 01:05:09" in text
    assert "2026/11/29" not in text


def test_merchant_time_zone_is_validated_at_start_up() -> None:
    with pytest.raises(ConfigError, match="merchant_tz"):
        TerminalConfig(tid=TID, mid=MID, tmk=TMK, host=HostAddress("127.0.0.1", 1), merchant_tz="Mars/Base")
    assert TerminalConfig(tid=TID, mid=MID, tmk=TMK, host=HostAddress("127.0.0.1", 1)).merchant_tz == (
        "Asia/Shanghai"
    )


# --- files --------------------------------------------------------------------------------------


def test_the_data_dir_is_0700_and_its_files_0600_from_creation(term: Terminal) -> None:
    res = term.sale(100, PANS[0], EXPIRY)  # no printer: the receipt is owed, an e-receipt written
    assert res.approved and res.e_receipt is not None
    save_config(term.data_dir, term.config)
    assert stat.S_IMODE(term.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(res.e_receipt.parent.stat().st_mode) == 0o700
    files = [p for p in term.data_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"journal.db", "device.key", "terminal.lock", "terminal.json"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}


# --- secrets from a prompt or standard input ----------------------------------------------------


def test_pos_reads_the_tmk_and_the_pin_from_standard_input_when_given_as_dash(
    tmp_path: Path, host: HostServer, store: HostStore
) -> None:
    runner = CliRunner()
    base = ["--dir", str(tmp_path / "pos")]
    address = "{}:{}".format(*host.address)
    tmk_hex = TMK.hex().upper()
    init = runner.invoke(
        app,
        [*base, "init", "--tid", TID, "--mid", MID, "--tmk", "-", "--host", address],
        input=tmk_hex + "\n",
    )
    assert init.exit_code == 0, init.output
    assert tmk_hex not in init.output
    sale = runner.invoke(
        app, [*base, "sale", "12.50", "--card", PANS[0], "--expiry", EXPIRY, "--pin", "-"], input=PIN + "\n"
    )
    assert sale.exit_code == 0, sale.output
    assert card_balance(store, PANS[0]) == START_MINOR - 1_250
    wrong = runner.invoke(
        app, [*base, "balance", "--card", PANS[0], "--expiry", EXPIRY, "--pin", "-"], input="999999\n"
    )
    assert wrong.exit_code == 1  # the PIN read was used: a wrong one is declined by the issuer
    balance = runner.invoke(
        app, [*base, "balance", "--card", PANS[0], "--expiry", EXPIRY, "--pin", "-"], input=PIN + "\n"
    )
    assert balance.exit_code == 0, balance.output
    assert "987.50" in balance.output
    empty = runner.invoke(app, [*base, "sale", "1.00", "--card", PANS[0], "--expiry", EXPIRY, "--pin", "-"])
    assert empty.exit_code == 2 and "PIN" in empty.output
    journal = runner.invoke(app, [*base, "journal"], env={"COLUMNS": "200"})
    assert journal.exit_code == 0 and PANS[0] not in journal.output and mask_pan(PANS[0]) in journal.output
    assert PIN not in sale.output + balance.output
