"""Two host processes on one PostgreSQL database (issue #9: the way the host grows past one
process), the same terminal talking to both, and the requests that must not both take effect
sent to the two at the same instant. Uniqueness constraints and row locks, not process memory,
decide; each race is run many times and each round must end in exactly one correct outcome:

- one sale sent to both processes is authorized once, and both answers are the same bytes;
- a sale and its reversal racing end reversed: the card whole again, one reversal at most;
- a sign-in racing a settlement ends as if one came first; a sign-in on one process and a sale
  on the other work;
- two refunds of one sale racing never give back more than the sale.

The ledger is balanced at the end of each. PostgreSQL only (SQLite has one writer at a time:
nothing races there). The two processes are started once for the module.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hostprocs import HostProcess, serve_many, stop_all
from hostwire import EXPIRY, MID, PIN, TMK, Answer, WireClient, empty_database
from moneycheck import money_back_by_sale, over_returned
from sqlalchemy import func, select

from tillroll.crypto import unwrap_working_keys
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.report import ledger_problems
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.messages import Message, pack, sign
from tillroll.store.tables import sessions, settlements, terminals, transactions

pytestmark = pytest.mark.postgres

OPENING = 100_000_000
TIDS = {"same": "R0000001", "reversal": "R0000002", "settle": "R0000003", "refund": "R0000004"}
PANS = {name: f"62220299990000{n:05d}" for n, name in enumerate(TIDS)}
ROUNDS = 30
SETTLE_ROUNDS = 20
RACE_TIMEOUT_S = 20.0


@dataclass
class Rail:
    store: HostStore
    addresses: tuple[tuple[str, int], tuple[str, int]]


@pytest.fixture(scope="module")
def rail(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rail]:
    key_file = str(tmp_path_factory.mktemp("race-pg") / "master.key")
    empty_database(pg_database)
    hosts: list[HostProcess] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TILLROLL_MASTER_KEY_FILE", key_file)
        store = open_store(pg_database)
        try:
            add_merchant(store, MID, "一号便利店")
            for name, tid in TIDS.items():
                add_terminal(store, tid, MID, TMK)
                add_card(store, PANS[name], EXPIRY, PIN, OPENING)
            env = {**os.environ, "TILLROLL_MASTER_KEY_FILE": key_file}
            started = serve_many(2, pg_database, env)
            hosts.extend(host for host, _ in started)
            yield Rail(store, (started[0][1], started[1][1]))
        finally:
            stop_all(hosts)
            store.engine.dispose()


@dataclass
class Lanes:
    """One terminal with a connection to each host process; `one` keeps its STAN counter."""

    one: WireClient
    two: WireClient

    def sign_in_body(self) -> bytes:
        one = self.one
        fields = {"11": one.next_stan(), "41": one.tid, "42": one.mid, "60": f"00{one.batch}003", "63": "001"}
        return pack(Message("0800", fields))

    def take_sign_in(self, answer: Answer) -> str:
        """Both connections take the keys and batch a sign-in answered; the batch."""
        assert answer.code == "00", answer.message
        keys = unwrap_working_keys(TMK, bytes.fromhex(answer.message["62"]))
        batch = answer.message["60"][2:8]
        for c in (self.one, self.two):
            c.keys, c.batch = keys, batch
        return batch

    def sign_in(self, on: WireClient) -> None:
        self.take_sign_in(on.exchange_raw(self.sign_in_body()))

    def other(self, client: WireClient) -> WireClient:
        return self.two if client is self.one else self.one

    def body(self, msg: Message) -> bytes:
        assert self.one.keys is not None
        return sign(msg, self.one.keys.mak)

    def close(self) -> None:
        self.one.close()
        self.two.close()


@pytest.fixture
def lanes_for(rail: Rail) -> Iterator[Callable[[str], Lanes]]:
    made: list[Lanes] = []

    def make(name: str) -> Lanes:
        tid = TIDS[name]
        lanes = Lanes(WireClient(rail.addresses[0], tid=tid), WireClient(rail.addresses[1], tid=tid))
        made.append(lanes)
        lanes.sign_in(lanes.one)
        return lanes

    yield make
    for lanes in made:
        lanes.close()


def race(*sends: Callable[[], Answer]) -> list[Answer]:
    """Run the sends at once (each in its thread, let go together); their answers, in order."""
    barrier = threading.Barrier(len(sends))
    results: list[Answer | BaseException | None] = [None] * len(sends)

    def run(i: int, send: Callable[[], Answer]) -> None:
        try:
            barrier.wait(RACE_TIMEOUT_S)
            results[i] = send()
        except BaseException as exc:  # handed to the test thread below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(sends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RACE_TIMEOUT_S)
        assert not t.is_alive(), "a racing request got no answer"
    answers = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        assert r is not None
        answers.append(r)
    return answers


def sender(body: bytes, client: WireClient) -> Callable[[], Answer]:
    return lambda: client.exchange_raw(body)


def ledger_clean(store: HostStore) -> None:
    with store.engine.connect() as conn:
        assert ledger_problems(conn) == []
        assert over_returned(conn) == []


def test_one_sale_sent_to_both_processes_is_authorized_once(
    rail: Rail, lanes_for: Callable[[str], Lanes]
) -> None:
    lanes = lanes_for("same")
    pan = PANS["same"]
    rng = random.Random(9001)
    expected = OPENING
    for _ in range(ROUNDS):
        amount = rng.randint(1, 10_000)
        body = lanes.body(lanes.one.sale_message(amount, pan=pan))
        first, second = race(sender(body, lanes.one), sender(body, lanes.two))
        assert first.code == "00" and first.mac_ok
        assert second.raw == first.raw  # the later one is the stored answer, replayed
        expected -= amount
        assert card_balance(rail.store, pan) == expected  # charged once
    with rail.store.engine.connect() as conn:
        sales = conn.execute(
            select(func.count()).where(transactions.c.tid == TIDS["same"], transactions.c.kind == "sale")
        ).scalar_one()
    assert sales == ROUNDS
    ledger_clean(rail.store)


def test_a_sale_and_its_reversal_racing_on_two_processes_end_reversed(
    rail: Rail, lanes_for: Callable[[str], Lanes]
) -> None:
    lanes = lanes_for("reversal")
    tid, pan = TIDS["reversal"], PANS["reversal"]
    rng = random.Random(9002)
    outcomes: Counter[str] = Counter()
    for n in range(ROUNDS):
        amount = rng.randint(1, 10_000)
        sale = lanes.one.sale_message(amount, pan=pan, pin=None)
        reversal = lanes.one.reversal_of(sale)
        sale_body, reversal_body = lanes.body(sale), lanes.body(reversal)
        sale_on, reversal_on = (lanes.one, lanes.two) if n % 2 == 0 else (lanes.two, lanes.one)
        sold, reversed_ = race(sender(sale_body, sale_on), sender(reversal_body, reversal_on))
        assert reversed_.code == "00"
        # The sale came first (approved, then undone) or the reversal did (its tombstone: the
        # late sale is a duplicate and moves nothing).
        assert sold.code in ("00", "94"), sold.message
        outcomes[sold.code] += 1
        # The terminal repeats its reversal until it hears back: answered as before, no effect.
        assert sale_on.exchange_raw(reversal_body).raw == reversed_.raw
        with rail.store.engine.connect() as conn:
            rows = conn.execute(
                select(transactions.c.id, transactions.c.status, transactions.c.rrn).where(
                    transactions.c.tid == tid,
                    transactions.c.batch == lanes.one.batch,
                    transactions.c.stan == sale["11"],
                    transactions.c.kind == "sale",
                )
            ).all()
            undone = conn.execute(
                select(func.count()).where(
                    transactions.c.kind == "reversal",
                    transactions.c.original_id.in_([r.id for r in rows]),
                )
            ).scalar_one()
            back = money_back_by_sale(conn)
        what = (sold.code, [tuple(r) for r in rows], undone)
        assert card_balance(rail.store, pan) == OPENING, what
        if sold.code == "00":
            assert [r.status for r in rows] == ["reversed"]
            assert undone == 1
            assert back[rows[0].rrn] == (amount, amount)
        else:
            assert rows == [] and undone == 0
    ledger_clean(rail.store)
    print(f"sale first (approved, reversed): {outcomes['00']}; reversal first (sale 94): {outcomes['94']}")


def _session(rail: Rail, tid: str) -> tuple[str, str, str]:
    """The terminal's open batch, and its latest session's batch and state."""
    with rail.store.engine.connect() as conn:
        open_batch = conn.execute(select(terminals.c.batch).where(terminals.c.tid == tid)).scalar_one()
        latest = conn.execute(
            select(sessions.c.batch, sessions.c.state)
            .where(sessions.c.tid == tid)
            .order_by(sessions.c.id.desc())
            .limit(1)
        ).one()
    return str(open_batch), str(latest.batch), str(latest.state)


def _settled(rail: Rail, tid: str, batch: str) -> int:
    with rail.store.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(settlements.c.tid == tid, settlements.c.batch == batch)
            ).scalar_one()
        )


def test_sign_in_on_one_process_and_settlement_on_the_other(
    rail: Rail, lanes_for: Callable[[str], Lanes]
) -> None:
    lanes = lanes_for("settle")
    tid, pan = TIDS["settle"], PANS["settle"]
    outcomes: Counter[str] = Counter()
    debit_minor = debit_count = 0
    signed_in_on = lanes.one
    for n in range(SETTLE_ROUNDS):
        # Signed in on one process, a sale on the other works.
        sale = lanes.other(signed_in_on).send(lanes.one.sale_message(100 + n, pan=pan, pin=None))
        assert sale.code == "00", sale.message
        debit_minor, debit_count = debit_minor + 100 + n, debit_count + 1
        batch = lanes.one.batch
        settle_body = lanes.body(lanes.one.settle_message(debit_minor, debit_count, 0, 0))
        sign_in_body = lanes.sign_in_body()
        settle_on, signed_in_on = (lanes.one, lanes.two) if n % 2 == 0 else (lanes.two, lanes.one)
        settled, signed_in = race(sender(settle_body, settle_on), sender(sign_in_body, signed_in_on))
        new_batch = lanes.take_sign_in(signed_in)
        open_batch, session_batch, session_state = _session(rail, tid)
        assert session_batch == new_batch
        following = f"{int(batch) + 1:06d}"
        if settled.code == "00":
            assert _settled(rail, tid, batch) == 1 and open_batch == following
            if new_batch == following:  # the settlement first; the sign-in opened the next batch
                outcome = "settle, then sign-in"
                assert session_state == "active"
            else:  # the sign-in first, in the open batch; the settlement then closed its session too
                outcome = "sign-in, then settle"
                assert new_batch == batch and session_state == "settled"
            debit_minor = debit_count = 0
        else:  # the sign-in first and committed: the settlement's MAC key was no longer current
            outcome = "sign-in, settle refused"
            assert settled.code == "A0", settled.message
            assert _settled(rail, tid, batch) == 0 and new_batch == batch == open_batch
            assert session_state == "active"
        outcomes[outcome] += 1
        if session_state != "active":  # its batch is settled: the terminal signs in for the next
            signed_in_on = lanes.other(signed_in_on)
            lanes.sign_in(signed_in_on)
    sale = lanes.other(signed_in_on).send(lanes.one.sale_message(1, pan=pan, pin=None))
    assert sale.code == "00"
    ledger_clean(rail.store)
    print(dict(outcomes))


def test_two_refunds_of_one_sale_racing_never_give_back_more_than_it(
    rail: Rail, lanes_for: Callable[[str], Lanes]
) -> None:
    lanes = lanes_for("refund")
    pan = PANS["refund"]
    rng = random.Random(9004)
    expected = OPENING
    winners: Counter[str] = Counter()
    for n in range(ROUNDS):
        amount = rng.randint(2, 5_000)
        sale = lanes.one.sale_message(amount, pan=pan, pin=None)
        sold = lanes.one.send(sale)
        assert sold.code == "00"
        expected -= amount
        first = rng.randint(1, amount - 1)
        second = rng.randint(amount - first + 1, amount)  # together more than the sale
        refunds = [lanes.one.refund_message(sale, sold.message, x) for x in (first, second)]
        on = (lanes.one, lanes.two) if n % 2 == 0 else (lanes.two, lanes.one)
        answers = race(*(sender(lanes.body(r), c) for r, c in zip(refunds, on, strict=True)))
        codes = [a.code for a in answers]
        assert sorted(codes) == ["00", "61"], codes  # one refund given, the other beyond what is left
        given = (first, second)[codes.index("00")]
        winners["first" if codes[0] == "00" else "second"] += 1
        expected += given
        assert card_balance(rail.store, pan) == expected
        with rail.store.engine.connect() as conn:
            assert money_back_by_sale(conn)[sold.message["37"]] == (amount, given)
    ledger_clean(rail.store)
    print(dict(winners))
