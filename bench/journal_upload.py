"""Benchmark: the journal upload — entries per second to the back office, and what the upload
after each sale adds to the sale's call.

One process runs the back office (`tillroll web`, uvicorn in a thread, SQLite) and the acquirer
host; a terminal journal is filled with ``--entries`` approved card sales (generation not timed),
then uploaded from the first entry to the last (pages of 50, each answered before the next), and
``--sales`` sales are made by a terminal without and with a back office, timing each call.

    python bench/journal_upload.py --entries 10000 --sales 40
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from tillroll.clock import SystemClock
from tillroll.crypto.keystore import KeyStore
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.store import open_store
from tillroll.terminal import HostAddress, Terminal, TerminalConfig
from tillroll.terminal.journal import Journal, txns
from tillroll.terminal.journal_upload import JournalUploader
from tillroll.web import WebConfig, WebServer, create_app

MID, TID = "898310048990001", "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN, EXPIRY, PIN = "6222021234567890123", "3012", "123456"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(journal: Journal, n: int) -> None:
    start = SystemClock().now() - timedelta(hours=1)
    rows = [
        {
            "kind": "sale", "state": "approved", "stan": f"{i % 999_999 + 1:06d}",
            "batch": f"{i // 999_999 + 1:06d}", "mti": "0200", "request": json.dumps({"49": "156"}),
            "pan_masked": "622202*********0123", "entry_mode": "021", "amount_minor": 100 + i,
            "operator": "001", "created_at": start + timedelta(microseconds=i),
            "updated_at": start + timedelta(microseconds=i), "receipt": "printed", "prints": 1,
            "rrn": f"{i:012d}", "response_code": "00",
        }
        for i in range(n)
    ]  # fmt: skip
    with journal.begin() as conn:
        conn.execute(insert(txns), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--sales", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tillroll-bench-upload-"))
    os.environ["TILLROLL_MASTER_KEY_FILE"] = str(work / "master.key")
    store = open_store(f"sqlite:///{work / 'host.db'}")
    add_merchant(store, MID, "bench shop")
    add_terminal(store, TID, MID, TMK)
    add_card(store, PAN, EXPIRY, PIN, 10**12)
    port = free_port()
    config = WebConfig(port=port)
    out: dict[str, object] = {"entries": args.entries}
    with WebServer(create_app(config, store), port=port), HostServer(store, key_lifetime_s=3600) as host:
        journal = Journal(work / "journal.db", KeyStore(os.urandom(32)))
        fill(journal, args.entries)
        uploader = JournalUploader(
            journal, tid=TID, tmk=TMK, base_url=config.base_url, timeout_s=10, clock=SystemClock()
        )
        started, sent, requests = time.perf_counter(), 0, 0
        while True:
            done = uploader.upload(budget_s=600)
            sent, requests = sent + done.entries, requests + done.uploads
            if done.caught_up or done.failed:
                break
        took_s = time.perf_counter() - started
        out["upload"] = {
            "entries_sent": sent, "requests": requests, "seconds": round(took_s, 2),
            "entries_per_s": round(sent / took_s), "failed": done.failed,
        }  # fmt: skip
        started = time.perf_counter()
        uploader.upload(budget_s=10)
        out["caught_up_request_ms"] = round((time.perf_counter() - started) * 1000, 1)
        journal.close()
        for label, backoffice in (("sale_without_backoffice", None), ("sale_with_upload", config.base_url)):
            terminal_config = TerminalConfig(
                tid=TID, mid=MID, tmk=TMK, host=HostAddress(*host.address), backoffice_url=backoffice
            )
            with Terminal(terminal_config, work / label) as term:
                term.sign_in()
                times = []
                for _ in range(args.sales):
                    started = time.perf_counter()
                    result = term.sale(1000, PAN, EXPIRY, PIN)
                    times.append((time.perf_counter() - started) * 1000)
                    assert result.approved, result.text
            times.sort()
            out[label] = {
                "sales": args.sales,
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
