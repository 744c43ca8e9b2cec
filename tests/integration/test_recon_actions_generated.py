"""The contract between the matcher and the exception service, on SQLite and PostgreSQL: a
generated day with every fault planted, reconciled with the automatic actions hung on the run.
Every exception gets exactly the actions its evidence planned; each outcome is done or queued, or
failed with a reason in both languages (no wallet configured, no contact, no address); the charge
the terminal never saw is reversed at the host; every action has its recon_actions and audit rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from tillroll import ledger
from tillroll.clock import FakeClock
from tillroll.console import audit
from tillroll.host.store import HostStore, open_store
from tillroll.recon import generate as g
from tillroll.recon.actions import ActionContext, ActionResult, apply_automatic
from tillroll.recon.model import ActionOutcome
from tillroll.recon.run import run_day
from tillroll.store.tables import audit_log, recon_actions, recon_exceptions, transactions

DAY = date(2026, 12, 1)


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    yield s
    s.engine.dispose()


def test_every_planned_action_is_taken_with_an_outcome_in_words(store: HostStore) -> None:
    spec = g.DaySpec(DAY, 2000, faults=g.plant(2000, list(g.Fault), seed=7))
    g.load(store.engine, spec)
    now = g.DayGenerator(spec).hi + timedelta(hours=3)
    ctx = ActionContext(store=store, clock=FakeClock(now), base_url="http://shop.example")
    taken: list[ActionResult] = []

    result = run_day(store.engine, DAY, now=now, after=lambda ids: taken.extend(apply_automatic(ctx, ids)))

    assert result.opened
    with store.engine.connect() as conn:
        rows = {r["id"]: r for r in conn.execute(select(recon_exceptions)).mappings()}
        planned = {i: json.loads(r["evidence"])["planned"] for i, r in rows.items()}
        by_exception: dict[int, list[str]] = {}
        for r in taken:
            by_exception.setdefault(r.exception_id, []).append(r.action.value)
        for i in result.opened:
            steps = planned[i]
            got = by_exception.get(i, [])
            # a reversal that resolves the exception ends its plan; otherwise every step is taken
            assert got == steps or (got and got[-1] == "reverse"), (rows[i]["class"], steps, got)
        for r in taken:
            assert r.outcome is not ActionOutcome.FAILED or (r.detail_zh and r.detail_en), r
        assert conn.execute(select(func.count()).select_from(recon_actions)).scalar_one() == len(taken)
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == len(taken)
        assert audit.verify(conn).ok
        # each exception about a payment carries its diagnosis, in both languages
        for i in result.opened:
            row = conn.execute(select(recon_exceptions).where(recon_exceptions.c.id == i)).mappings().one()
            if row["rrn"] or row["order_no"]:
                words = json.loads(row["diagnosis"])
                assert words["zh"] and words["en"], row["key"]
        never_saw = [i for i, f in spec.faults.items() if f is g.Fault.CARD_NEVER_SAW]
        (sale_rrn,) = [g.rrn(i) for i in never_saw]
        sale = conn.execute(select(transactions).where(transactions.c.rrn == sale_rrn)).mappings().one()
        assert sale["status"] == "reversed"
        reversed_exc = [
            r for r in rows.values() if r["rrn"] == sale_rrn and r["class"] == "charged_no_receipt"
        ]
        assert [r["state"] for r in reversed_exc] == ["resolved"]
    kinds = {(rows[r.exception_id]["class"], r.action.value, r.outcome.value) for r in taken}
    assert ("charged_no_receipt", "reverse", "done") in kinds
    assert ("charged_no_receipt", "reprint", "queued") in kinds
    assert ("refund_stuck", "retry_refund", "queued") in kinds  # the card rail: a terminal command
    assert ("refund_stuck", "retry_refund", "failed") in kinds  # the wallet rail: no wallet configured here
    assert ("notified_not_final", "send_notice", "queued") in kinds  # to the contact the e-receipt went to
    assert ("signin_failures", "alert", "failed") in kinds  # the generated merchants have no address
    # a rerun of the day opens nothing and takes no action twice
    again: list[ActionResult] = []
    rerun = run_day(store.engine, DAY, now=now, after=lambda ids: again.extend(apply_automatic(ctx, ids)))
    assert rerun.opened == [] and again == []
    with store.engine.connect() as conn:
        assert ledger.imbalance(conn) == {} or not any(ledger.imbalance(conn).values())
