"""The terminal journal's card data against the real host over real TCP (issue 6, PROFILE §7):
the full card number is never in the journal's files in clear, is kept sealed only while its
batch may need it, and reversal, void, refund and batch upload still work while it is kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text, update

from tillroll.clock import FakeClock
from tillroll.crypto.keystore import KeyStore
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.messages import Message
from tillroll.pan import mask_pan
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.store.tables import batch_uploads
from tillroll.terminal import (
    HostAddress,
    Outcome,
    SettlementState,
    Terminal,
    TerminalConfig,
    TxnKind,
    TxnState,
)
from tillroll.terminal.journal import SCHEMA_VERSION, BatchState, Journal, txns
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


@pytest.fixture
def host(store: HostStore) -> Iterator[HostServer]:
    with HostServer(store, clock=FakeClock(), key_lifetime_s=3600) as server:
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
        response_timeout_s=0.5,
        connect_timeout_s=0.5,
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
