"""Benchmark: reconciliation of one generated business day of N payments with planted faults.

Generates the day (not timed: every source's rows, bulk inserted with executemany, into a fresh
database — SQLite by default, as the store opens it: WAL, synchronous=FULL), then times
``run_day`` (the whole run: staging, every rule, the upsert, the summary) and checks that exactly
the planted exceptions were found. Prints one JSON object: ``run_s`` is wall time, ``run_cpu_s``
the run's own CPU time (with SQLite all the work is in this process: on a shared, loaded machine
it is the figure that does not depend on the other processes), ``load_avg_1m`` the machine's load.
``steps_s`` is the fastest run's wall time per step (``beside:``: the second connection's thread).

    python bench/recon.py --payments 1000000 [--db URL] [--keep PATH] [--runs 1] [--one-connection]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import func, select

from tillroll.recon.generate import DaySpec, Fault, expected, load, plant
from tillroll.recon.run import ReconConfig, run_day
from tillroll.store import make_engine, migrate
from tillroll.store.tables import journal_entries, recon_exceptions, transactions, wallet_statement_rows

DAY = date(2026, 12, 1)
AFTER = datetime(2026, 12, 1, 18, 0)  # 02:00 the next day in Beijing: the day is over and aged


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--payments", type=int, default=100_000)
    ap.add_argument("--db", help="database URL (default: a new SQLite file in a temporary folder)")
    ap.add_argument("--keep", type=Path, help="SQLite file to keep (reused if it exists: no generation)")
    ap.add_argument("--runs", type=int, default=1, help="runs of the same day (a rerun updates, opens none)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument(
        "--one-connection",
        action="store_true",
        help="SQLite: the wallet rail on the run's own connection too (as on PostgreSQL), not beside it",
    )
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = args.keep or Path(tmp.name) / "recon.db"
    url = args.db or f"sqlite:///{path}"
    reuse = args.db is None and args.keep is not None and args.keep.exists()
    engine = make_engine(url)
    migrate(engine)
    copies = max(1, args.payments // 50_000)  # one of each fault per 50,000 payments
    spec = DaySpec(DAY, args.payments, plant(args.payments, list(Fault), seed=args.seed, copies=copies))
    started = time.perf_counter()
    if not reuse:
        load(engine, spec)
    generated_s = time.perf_counter() - started
    with engine.connect() as conn:
        rows = {
            "journal_entries": conn.execute(select(func.count()).select_from(journal_entries)).scalar_one(),
            "transactions": conn.execute(select(func.count()).select_from(transactions)).scalar_one(),
            "statement_rows": conn.execute(
                select(func.count()).select_from(wallet_statement_rows)
            ).scalar_one(),
        }
    config = ReconConfig(beside=not args.one_connection)
    times, cpu, steps = [], [], []
    result = None
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        result = run_day(engine, DAY, now=AFTER, config=config)
        times.append(round(time.perf_counter() - t0, 3))
        cpu.append(round(time.process_time() - c0, 3))  # SQLite works in this process (both threads)
        steps.append(result.steps_s)
    assert result is not None
    with engine.connect() as conn:
        got = {(c, k) for c, k in conn.execute(select(recon_exceptions.c["class"], recon_exceptions.c.key))}
    want = {(e.cls.value, e.key) for e in expected(spec)}
    engine.dispose()
    out = {
        "payments": args.payments,
        "dialect": url.split(":", 1)[0],
        "one_connection": args.one_connection or not url.startswith("sqlite"),
        "rows": rows,
        "generated_s": round(generated_s, 1) if not reuse else None,
        "run_s": times,
        "run_cpu_s": cpu,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "payments_per_s": round(args.payments / min(times)),
        "planted": len(want),
        "found": len(got),
        "all_found_exactly": got == want,
        "classes": result.found,
        "pending": result.summary["pending"],
        "steps_s": steps[times.index(min(times))],  # of the fastest run ("beside:": the second thread)
    }
    print(json.dumps(out, sort_keys=True))
    tmp.cleanup()
    return 0 if got == want else 1


if __name__ == "__main__":
    sys.exit(main())
