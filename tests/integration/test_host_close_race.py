"""A host-side close racing with requests in flight (PROFILE §6): every sale the host approved
in a batch is in that batch's settlement, and every sale it refused as "batch closed" (77) moved
no money — whichever commits first, on SQLite and on PostgreSQL (where the sale takes a shared
lock on its terminal's row and the close an exclusive one)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hostwire import EXPIRY, MID, PIN, TMK, WireClient
from sqlalchemy import select

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.closing import cutover
from tillroll.host.report import ledger_problems
from tillroll.host.store import HostStore, open_store
from tillroll.store.tables import settlements, transactions

TIDS = ("C0000001", "C0000002", "C0000003")
PANS = {tid: f"62220200000{i:08d}" for i, tid in enumerate(TIDS)}
OPENING = 10_000_000
ROUNDS = 12
# Per terminal and round, a bound only: a round ends at the first 77. On SQLite the close waits
# for the write lock between the host's group commits; with the sale lane the host sold 200 per
# terminal before the close got in (2026-12-02), so the bound is far above that.
SALES_MAX = 5_000


@dataclass
class Lane:
    """One terminal's sales in one round: what the host answered to each."""

    client: WireClient
    approved: dict[str, int] = field(default_factory=dict)  # batch → approved amount
    approved_count: dict[str, int] = field(default_factory=dict)
    refused_77: int = 0
    answered: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    for tid in TIDS:
        add_terminal(s, tid, MID, TMK)
        add_card(s, PANS[tid], EXPIRY, PIN, OPENING)
    yield s
    s.engine.dispose()


def sell_until_closed(lane: Lane, rng: random.Random) -> None:
    client = lane.client
    for _ in range(SALES_MAX):
        batch = client.batch
        amount = rng.randint(1, 500)
        answer = client.send(client.sale_message(amount, pan=PANS[client.tid], pin=None))
        lane.answered.set()
        if answer.code == "77":
            lane.refused_77 += 1
            return
        assert answer.code == "00", answer.message
        lane.approved[batch] = lane.approved.get(batch, 0) + amount
        lane.approved_count[batch] = lane.approved_count.get(batch, 0) + 1


def test_sales_in_flight_and_a_cutover_agree_on_every_batch(store: HostStore) -> None:
    clock = FakeClock()
    rng = random.Random(20261202)
    charged = dict.fromkeys(TIDS, 0)
    closed_with_sales = closed_empty = 0
    with HostServer(store, clock=clock) as host:
        clients = {tid: WireClient(host.address, tid=tid) for tid in TIDS}
        try:
            for _ in range(ROUNDS):
                lanes = []
                for client in clients.values():
                    assert client.sign_in().code == "00"
                    lanes.append(Lane(client))
                workers = [
                    threading.Thread(target=sell_until_closed, args=(lane, random.Random(rng.random())))
                    for lane in lanes
                ]
                for w in workers:
                    w.start()
                for lane in lanes:  # every lane is selling before the close is let go
                    assert lane.answered.wait(10.0)
                threading.Event().wait(rng.uniform(0.0, 0.02))  # land the close at a random point
                closed = cutover(store.engine, before=clock.now() + timedelta(days=1), now=clock.now())
                for w in workers:
                    w.join(30.0)
                    assert not w.is_alive()
                assert {c.tid for c in closed} == set(TIDS)
                with store.engine.connect() as conn:
                    for lane in lanes:
                        tid = lane.client.tid
                        assert lane.refused_77 == 1  # each lane saw the close, and stopped there
                        (batch,) = {c.batch for c in closed if c.tid == tid}
                        row = conn.execute(
                            select(settlements).where(settlements.c.tid == tid, settlements.c.batch == batch)
                        ).one()
                        assert row.host_debit_minor == lane.approved.get(batch, 0), (tid, batch)
                        assert row.host_debit_count == lane.approved_count.get(batch, 0)
                        assert set(lane.approved) <= {batch}  # no approval in any other batch
                        approved_rows = conn.execute(
                            select(transactions.c.amount_minor).where(
                                transactions.c.tid == tid,
                                transactions.c.batch == batch,
                                transactions.c.status == "approved",
                            )
                        ).all()
                        assert sum(r.amount_minor for r in approved_rows) == lane.approved.get(batch, 0)
                        charged[tid] += lane.approved.get(batch, 0)
                        if lane.approved.get(batch):
                            closed_with_sales += 1
                        else:
                            closed_empty += 1
        finally:  # a failed round leaves no socket behind for the next test to trip over
            for client in clients.values():
                client.close()
    for tid in TIDS:  # the 77s charged nothing: each card is down by exactly the approvals
        assert card_balance(store, PANS[tid]) == OPENING - charged[tid]
    with store.engine.connect() as conn:
        assert ledger_problems(conn) == []
    assert closed_with_sales > 0
    print(f"{ROUNDS} rounds: {closed_with_sales} batches closed with sales, {closed_empty} empty")
