"""Benchmark: the console's pages over a large history of journal copies.

Fills a fresh back-office database (SQLite by default) with `--entries` card entries spread over
14 days at 40 terminals of two merchants (one in ten failed), logs in as the first merchant's
admin through the form, and times each page (`--repeat` GETs over HTTP, the app served by
WebServer). Generation is not timed. Prints one JSON object (milliseconds).

    python bench/console_pages.py --entries 200000 [--repeat 5] [--db URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

from tillroll.clock import FakeClock
from tillroll.console.users import Role, add_user
from tillroll.host.admin import add_merchant, add_terminal
from tillroll.host.store import open_store
from tillroll.store.tables import journal_entries
from tillroll.web import WebConfig, WebServer, create_app

MIDS = ("898310048990001", "898310048990002")
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
NOW = datetime(2026, 12, 2, 15, 0, 0)
PASSWORD = "correct horse battery"
PAGES = (
    "/console/today",
    "/console/analytics",
    "/console/payments?date=2026-12-01",
    "/console/payments?rrn=000000012345",
    "/console/payments?last4=0123",
    "/console/terminals",
)


def fill(url: str, entries: int) -> tuple[Any, float]:
    store = open_store(url)
    tids = [f"{1 + m}000{i:04d}" for m in range(2) for i in range(20)]
    for mid in MIDS:
        add_merchant(store, mid, f"merchant {mid[-1]}")
    for i, tid in enumerate(tids):
        add_terminal(store, tid, MIDS[i // 20], TMK)
    span = 14 * 86400
    started = time.monotonic()
    with store.engine.begin() as conn:
        batch: list[dict[str, Any]] = []
        for n in range(entries):
            at = NOW - timedelta(seconds=n * span // entries)
            batch.append(
                {
                    "tid": tids[n % len(tids)],
                    "entry_key": f"card:{n}",
                    "rail": "card",
                    "kind": "sale",
                    "state": "unknown" if n % 10 == 0 else "approved",
                    "batch": "000001",
                    "stan": f"{n % 999_999:06d}",
                    "rrn": f"{n:012d}",
                    "amount_minor": 100 + n % 5000,
                    "card_masked": f"622202*********{n % 10_000:04d}",
                    "receipt": "printed",
                    "created_at": at,
                    "updated_at": at,
                    "received_at": at,
                }
            )
            if len(batch) == 20_000:
                conn.execute(insert(journal_entries), batch)
                batch = []
        if batch:
            conn.execute(insert(journal_entries), batch)
    add_user(store.engine, "admin", PASSWORD, Role.MERCHANT_ADMIN, MIDS[0], now=NOW)
    return store, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", default=None, help="an empty database URL (default: a new SQLite file)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="console-bench-"))
    os.environ.setdefault("TILLROLL_MASTER_KEY_FILE", str(work / "master.key"))
    store, fill_s = fill(args.db or f"sqlite:///{work / 'host.db'}", args.entries)
    app = create_app(WebConfig(port=0), store, clock=FakeClock(NOW))
    result: dict[str, Any] = {"entries": args.entries, "fill_s": round(fill_s, 1), "pages_ms": {}}
    with WebServer(app) as server, httpx.Client(timeout=120) as client:
        form = client.get(f"{server.url}/console/login").text
        token = form.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        login = {"username": "admin", "password": PASSWORD, "csrf_token": token}
        if client.post(f"{server.url}/console/login", data=login).status_code != 303:
            raise SystemExit("log-in failed")
        for path in PAGES:
            times = []
            for _ in range(args.repeat):
                started = time.monotonic()
                answer = client.get(server.url + path)
                times.append(time.monotonic() - started)
                if answer.status_code != 200:
                    raise SystemExit(f"{path}: HTTP {answer.status_code}")
            result["pages_ms"][path] = {
                "median": round(statistics.median(times) * 1000, 1),
                "max": round(max(times) * 1000, 1),
            }
    store.engine.dispose()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
