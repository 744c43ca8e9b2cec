"""The sale lane changes how a group is written, never what it answers or keeps.

Specification: a host with the lane (host/sale_lane.py) and a host without it, given the same
store and the same groups of requests, answer every request with the same bytes and end with the
same rows in every table — whatever mix of ordinary sales, retries, conflicting retries, bad
MACs, wrong PINs, unknown cards and terminals, empty accounts and other kinds of request the
groups hold. And a failure of the lane's writes is each request's own.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tillroll.clock import FakeClock
from tillroll.crypto import encrypt_pin_block, unwrap_working_keys
from tillroll.crypto.keys import WorkingKeys
from tillroll.host import hot_sql
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.config import HostConfig
from tillroll.host.pipeline import HostPipeline
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, pack, sign, unpack
from tillroll.ledger import imbalance

MID = "123456789012345"
OTHER_MID = "123456789012346"
PIN = "123456"
TERMINALS = ["LANE0001", "LANE0002", "LANE0003"]
NEVER_SIGNED_IN = "LANE0009"
# (pan, balance, per-transaction limit): ordinary, nearly empty, limited, and one unknown
CARDS = [
    ("6222021234567890001", 10**8, None),
    ("6222021234567890002", 10**8, None),
    ("6222021234567890003", 250, None),
    ("6222021234567890004", 10**8, 3_000),
]
UNKNOWN_PAN = "6222021234567899999"
TABLES = [
    "requests",
    "transactions",
    "issuer_cards",
    "issuer_authorizations",
    "issuer_messages",
    "ledger_entries",
    "ledger_postings",
    "sessions",
    "terminals",
]


def _frame(body: bytes) -> bytes:
    return framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, body).encode()[2:]


def _answer(frame: bytes | None) -> Message:
    assert frame is not None
    return unpack(framing.parse_payload(frame[2:]).message)


@dataclass
class Template:
    """A signed-in store on disk, copied afresh for each host under test."""

    path: Path
    keys: dict[str, WorkingKeys]
    batch: dict[str, str]


def _furnish(store: HostStore) -> tuple[dict[str, WorkingKeys], dict[str, str]]:
    """The merchant, the terminals signed in, the cards: each terminal's keys and batch."""
    add_merchant(store, MID, "一号便利店")
    tmks = {tid: add_terminal(store, tid, MID) for tid in TERMINALS}
    for pan, balance, limit in CARDS:
        add_card(store, pan, "3012", PIN, balance, limit_minor=limit)
    pipeline = HostPipeline(store.engine, store.keystore, FakeClock(), HostConfig())
    keys, batch = {}, {}
    for tid, tmk in tmks.items():
        signin = Message("0800", {"11": "000001", "41": tid, "42": MID, "60": "00000001003", "63": "001"})
        resp = _answer(pipeline.handle(_frame(pack(signin))).frame)
        keys[tid] = unwrap_working_keys(tmk, bytes.fromhex(resp["62"]))
        batch[tid] = resp["60"][2:8]
    return keys, batch


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    work = tmp_path_factory.mktemp("lane")
    mp = pytest.MonkeyPatch()
    mp.setenv("TILLROLL_MASTER_KEY_FILE", str(work / "master.key"))
    path = work / "template.db"
    store = open_store(f"sqlite:///{path}")
    keys, batch = _furnish(store)
    add_merchant(store, OTHER_MID, "二号便利店")
    add_terminal(store, NEVER_SIGNED_IN, MID)
    store.engine.dispose()
    yield Template(path, keys, batch)
    mp.undo()


def _host(template: Template, where: Path, *, lane: bool) -> tuple[HostStore, HostPipeline]:
    path = where / f"host-{'lane' if lane else 'steps'}.db"
    shutil.copyfile(template.path, path)
    store = open_store(f"sqlite:///{path}")
    return store, HostPipeline(store.engine, store.keystore, FakeClock(), HostConfig(sale_lane=lane))


def _dump(store: HostStore) -> dict[str, list[tuple[Any, ...]]]:
    with store.engine.connect() as conn:
        return {t: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1")] for t in TABLES}


# --- the requests a hostile, messy world sends -------------------------------------------

request_specs = st.fixed_dictionaries(
    {
        "terminal": st.sampled_from([*TERMINALS, NEVER_SIGNED_IN, "NOSUCH01"]),
        "card": st.integers(0, len(CARDS)),  # len(CARDS): a card the bank never issued
        "amount": st.sampled_from([1, 100, 2_999, 5_000, 0, 10**10]),
        "pin": st.sampled_from(["none", "right", "wrong"]),
        "mac": st.sampled_from(["ok", "ok", "ok", "bad"]),
        "what": st.sampled_from(["sale"] * 6 + ["retry", "conflict", "balance", "other_mid", "old_batch"]),
    }
)
groups_strategy = st.lists(st.lists(request_specs, min_size=1, max_size=10), min_size=1, max_size=4)


class World:
    """Turns specs into signed frames, keeping each terminal's STANs and what it sent."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.stan = dict.fromkeys([*TERMINALS, NEVER_SIGNED_IN, "NOSUCH01"], 1)
        self.sent: dict[str, list[tuple[dict[str, str], str]]] = {}

    def frame(self, spec: dict[str, Any]) -> bytes:
        tid = spec["terminal"]
        keys = self.template.keys.get(tid) or self.template.keys[TERMINALS[0]]
        previous = self.sent.get(tid)
        if spec["what"] in ("retry", "conflict") and previous:
            fields, mti = previous[-1]
            fields = dict(fields)
            if spec["what"] == "conflict":
                fields["4"] = f"{int(fields.get('4', '1')) + 1:012d}"
        else:
            self.stan[tid] += 1
            pan = CARDS[spec["card"]][0] if spec["card"] < len(CARDS) else UNKNOWN_PAN
            batch = self.template.batch.get(tid, "000001")
            if spec["what"] == "old_batch":
                batch = f"{int(batch) - 1:06d}" if int(batch) > 1 else "000099"
            mti = "0200"
            fields = {
                "2": pan,
                "3": "310000" if spec["what"] == "balance" else "000000",
                "11": f"{self.stan[tid]:06d}",
                "14": "3012",
                "22": "022" if spec["pin"] == "none" else "021",
                "25": "00",
                "41": tid,
                "42": OTHER_MID if spec["what"] == "other_mid" else MID,
                "49": "156",
                "53": "2600000000000000",
                "60": f"{'01' if spec['what'] == 'balance' else '22'}{batch}000",
            }
            if spec["what"] != "balance":
                fields["4"] = f"{spec['amount']:012d}"
            if spec["pin"] != "none":
                fields["26"] = "12"
                pin = PIN if spec["pin"] == "right" else "654321"
                fields["52"] = encrypt_pin_block(keys.pik, pin, pan).hex().upper()
        self.sent.setdefault(tid, []).append((fields, mti))
        mak = keys.mak if spec["mac"] == "ok" else bytes(16)
        return _frame(sign(Message(mti, fields), mak))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=groups_strategy)
def test_the_lane_answers_and_keeps_exactly_what_the_steps_do(
    template: Template, tmp_path_factory: pytest.TempPathFactory, groups: list[list[dict[str, Any]]]
) -> None:
    where = tmp_path_factory.mktemp("example")
    world = World(template)
    frames = [[world.frame(spec) for spec in group] for group in groups]
    lane_store, lane = _host(template, where, lane=True)
    steps_store, steps = _host(template, where, lane=False)
    try:
        for group in frames:
            with_lane = [(r.frame, r.close) for r in lane.handle_batch(group)]
            without = [(r.frame, r.close) for r in steps.handle_batch(group)]
            assert with_lane == without
        assert _dump(lane_store) == _dump(steps_store)
        with lane_store.engine.connect() as conn:
            assert all(v == 0 for v in imbalance(conn).values())
        assert steps.sales.stats["laned"] == 0
        # Alone on its store the lane never meets a write it did not foresee (a retry it failed
        # to see would reach the unique key and fall back, hiding behind the same answers).
        assert lane.sales.stats["fallbacks"] == 0
    finally:
        lane_store.engine.dispose()
        steps_store.engine.dispose()


def _sales(template: Template, n_each: int, *, first_stan: int = 2) -> list[bytes]:
    frames = []
    for k in range(n_each):
        for i, tid in enumerate(TERMINALS):
            fields = {
                "2": CARDS[i][0], "3": "000000", "4": "000000000100", "11": f"{first_stan + k:06d}",
                "14": "3012", "22": "022", "25": "00", "41": tid, "42": MID, "49": "156",
                "53": "2600000000000000", "60": f"22{template.batch[tid]}000",
            }  # fmt: skip
            frames.append(_frame(sign(Message("0200", fields), template.keys[tid].mak)))
    return frames


def test_ordinary_sales_of_a_group_go_through_the_lane_in_runs(template: Template, tmp_path: Path) -> None:
    store, pipeline = _host(template, tmp_path, lane=True)
    try:
        replies = pipeline.handle_batch(_sales(template, 2))  # 3 terminals twice: two runs
        assert [_answer(r.frame)["39"] for r in replies] == ["00"] * 6
        assert pipeline.sales.stats | {"key_hits": 0, "key_misses": 0} == {
            "runs": 2, "laned": 6, "deferred": 0, "fallbacks": 0, "key_hits": 0, "key_misses": 0,
        }  # fmt: skip
        assert pipeline.sales.stats["key_misses"] == 3  # each session's keys opened once
        rrns = [_answer(r.frame)["37"] for r in replies]
        assert rrns == sorted(rrns) and len(set(rrns)) == 6  # in request order
    finally:
        store.engine.dispose()


def test_a_run_split_over_several_statements_keeps_what_the_steps_do(
    template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows past one statement's bound go out in further statements: with two rows a statement,
    three sales (six postings) take several, and every row is the steps' own, once."""
    monkeypatch.setattr(hot_sql, "ROWS_PER_STATEMENT_MAX", 2)
    lane_store, lane = _host(template, tmp_path, lane=True)
    steps_store, steps = _host(template, tmp_path, lane=False)
    try:
        frames = _sales(template, 1)
        with_lane = [r.frame for r in lane.handle_batch(frames)]
        assert with_lane == [r.frame for r in steps.handle_batch(frames)]
        assert [_answer(f)["39"] for f in with_lane] == ["00"] * 3
        assert lane.sales.stats["laned"] == 3 and lane.sales.stats["fallbacks"] == 0
        assert _dump(lane_store) == _dump(steps_store)
    finally:
        lane_store.engine.dispose()
        steps_store.engine.dispose()


def test_a_failing_write_in_the_lane_fails_only_its_own_request(template: Template, tmp_path: Path) -> None:
    """The database refuses one sale's row (a trigger): the run falls back to the steps, which
    answer that sale 96 and approve the others of the group, all written once."""
    store, pipeline = _host(template, tmp_path, lane=True)
    frames = _sales(template, 1)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_one BEFORE INSERT ON transactions WHEN NEW.tid = 'LANE0002' "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    try:
        replies = pipeline.handle_batch(frames)
        assert [_answer(r.frame)["39"] for r in replies] == ["00", "96", "00"]
        assert pipeline.sales.stats["fallbacks"] == 1
        with store.engine.connect() as conn:
            counts = {
                t: conn.exec_driver_sql(f"SELECT count(*) FROM {t} WHERE {w}").scalar_one()
                for t, w in [
                    ("transactions", "kind = 'sale'"),
                    ("requests", "mti = '0200'"),
                    ("issuer_authorizations", "reason = 'sale'"),
                ]
            }
            assert counts == {"transactions": 2, "requests": 2, "issuer_authorizations": 2}
            assert all(v == 0 for v in imbalance(conn).values())
        # The refused sale, retried once the disk is well again, is approved (it was not kept).
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse_one")
        assert _answer(pipeline.handle_batch([frames[1]])[0].frame)["39"] == "00"
    finally:
        store.engine.dispose()


def test_the_lane_is_on_by_default_and_can_be_turned_off() -> None:
    assert HostConfig().sale_lane is True
    assert HostConfig(sale_lane=False).sale_lane is False


def test_lane_rows_identical_on_postgres_too(db_url: str) -> None:
    """On PostgreSQL the lane's ids come from the tables' sequences: a group answered through
    the lane leaves sale rows whose RRN, authorization and entry link up as the steps' do."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the SQLite lane is compared byte for byte above")
    store = open_store(db_url)
    try:
        keys, batch = _furnish(store)
        pipeline = HostPipeline(store.engine, store.keystore, FakeClock(), HostConfig())
        replies = pipeline.handle_batch(_sales(Template(Path("."), keys, batch), 2))
        answers = [_answer(r.frame) for r in replies]
        assert [a["39"] for a in answers] == ["00"] * 6
        assert pipeline.sales.stats["laned"] == 6
        with store.engine.connect() as conn:
            joined = conn.execute(
                sa.text(
                    "SELECT t.rrn, t.auth_code, t.issuer_ref, a.reference, e.reference, r.id "
                    "FROM transactions t JOIN issuer_authorizations a ON a.id = t.issuer_ref "
                    "JOIN ledger_entries e ON e.reference = t.rrn "
                    "JOIN requests r ON r.id = CAST(t.rrn AS BIGINT) WHERE t.kind = 'sale' ORDER BY t.rrn"
                )
            ).all()
            assert [row[0] for row in joined] == sorted(a["37"] for a in answers)
            assert all(row[0] == row[3] == row[4] and int(row[0]) == row[5] for row in joined)
            assert {row[1] for row in joined} == {a["38"] for a in answers}
            assert all(v == 0 for v in imbalance(conn).values())
            postings = conn.exec_driver_sql("SELECT count(*) FROM ledger_postings").scalar_one()
            assert postings == 2 * len(CARDS) + 2 * 6  # opening balances, and two legs a sale
    finally:
        store.engine.dispose()
