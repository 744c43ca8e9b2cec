"""Benchmark: the automatic actions of a generated day (prints JSON).

    python bench/recon_actions.py --payments 100000 --copies 20 [--db URL]

Generates one day with every fault planted ``copies`` times (not timed), runs the matcher, then
times the automatic actions of what it opened (one transaction each, with its audit row, and the
diagnosis written after) and a diagnosis per opened exception.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date, timedelta

from tillroll.clock import FakeClock
from tillroll.host.store import open_store
from tillroll.recon import generate as g
from tillroll.recon.actions import ActionContext, apply_automatic
from tillroll.recon.diagnose import diagnose
from tillroll.recon.run import run_day
from tillroll.store.tables import recon_exceptions

DAY = date(2026, 12, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-actions-")
    os.environ.setdefault("TILLROLL_MASTER_KEY_FILE", f"{work}/master.key")
    store = open_store(args.db or f"sqlite:///{work}/host.db")
    spec = g.DaySpec(
        DAY, args.payments, faults=g.plant(args.payments, list(g.Fault), seed=1, copies=args.copies)
    )
    g.load(store.engine, spec)
    now = g.DayGenerator(spec).hi + timedelta(hours=3)
    ctx = ActionContext(store=store, clock=FakeClock(now))
    t0 = time.perf_counter()
    result = run_day(store.engine, DAY, now=now)
    t1 = time.perf_counter()
    taken = apply_automatic(ctx, result.opened)
    t2 = time.perf_counter()
    with store.engine.connect() as conn:
        refs = [
            r.rrn or r.order_no
            for r in conn.execute(recon_exceptions.select().where(recon_exceptions.c.id.in_(result.opened)))
            if r.rrn or r.order_no
        ]
        t3 = time.perf_counter()
        for ref in refs:
            diagnose(conn, ref)
        t4 = time.perf_counter()
    outcomes: dict[str, int] = {}
    for r in taken:
        outcomes[f"{r.action.value}:{r.outcome.value}"] = (
            outcomes.get(f"{r.action.value}:{r.outcome.value}", 0) + 1
        )
    print(json.dumps({
        "db": store.engine.dialect.name, "payments": args.payments, "opened": len(result.opened),
        "match_s": round(t1 - t0, 2), "actions": len(taken), "actions_s": round(t2 - t1, 2),
        "per_exception_ms": round(1000 * (t2 - t1) / max(1, len(result.opened)), 1),
        "diagnoses": len(refs), "diagnose_ms": round(1000 * (t4 - t3) / max(1, len(refs)), 1),
        "outcomes": dict(sorted(outcomes.items())),
    }, indent=1))  # fmt: skip
    store.engine.dispose()


if __name__ == "__main__":
    main()
