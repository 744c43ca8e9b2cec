"""Benchmark: end-of-day settlement and the settlement report for one day's transactions.

Seeds `--transactions` approved sales (default 100,000) spread over `--terminals` terminals
(at most 999 a batch, PROFILE §3 field 48 counts are n3) straight into the host's tables,
then times, over real TCP against a running host: every terminal's sign-in and settlement
(0500/0510, balanced), then `settlement_report` for the day. Prints one JSON object.

    python bench/settlement.py [--transactions 100000] [--terminals 200] [--db URL]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert

from tillroll.crypto import unwrap_working_keys
from tillroll.host import HostServer
from tillroll.host.admin import add_merchant, add_terminal
from tillroll.host.report import settlement_report
from tillroll.host.store import open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack
from tillroll.store.tables import transactions

MID = "898100012340001"


def exchange(sock: socket.socket, body: bytes) -> bytes:
    sock.sendall(framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, body).encode())
    return framing.parse_payload(framing.recv_payload(sock)).message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--terminals", type=int, default=200)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    per_terminal = -(-args.transactions // args.terminals)
    if per_terminal > 999:
        parser.error("more than 999 transactions a terminal: raise --terminals")

    work = Path(tempfile.mkdtemp(prefix="tillroll-bench-"))
    os.environ["TILLROLL_MASTER_KEY_FILE"] = str(work / "master.key")
    store = open_store(args.db or f"sqlite:///{work / 'host.db'}")
    add_merchant(store, MID, "BENCH MERCHANT")
    tmks = {f"S{i:07d}": add_terminal(store, f"S{i:07d}", MID) for i in range(args.terminals)}

    t0 = time.perf_counter()
    now = datetime.now()
    rows = []
    n = 0
    for tid in tmks:
        for stan in range(1, per_terminal + 1):
            if n == args.transactions:
                break
            n += 1
            rows.append(
                {
                    "rrn": f"{n:012d}", "tid": tid, "mid": MID, "batch": "000001", "stan": f"{stan:06d}",
                    "kind": "sale", "status": "approved", "response_code": "00",
                    "amount_minor": 100 + n % 5000,
                    "currency": "156", "pan_masked": "622202*********0123", "auth_code": "123456",
                    "issuer_ref": None, "original_id": None, "local_date": now.strftime("%m%d"),
                    "created_at": now, "updated_at": now,
                }
            )  # fmt: skip
    with store.engine.begin() as conn:
        for i in range(0, len(rows), 10_000):
            conn.execute(insert(transactions), rows[i : i + 10_000])
    seed_s = time.perf_counter() - t0
    expected: dict[str, tuple[int, int]] = {}
    for r in rows:
        total, count = expected.get(r["tid"], (0, 0))
        expected[r["tid"]] = (total + r["amount_minor"], count + 1)

    with HostServer(store) as host:
        t1 = time.perf_counter()
        balanced = 0
        with socket.create_connection(host.address, timeout=30) as sock:
            for tid, tmk in tmks.items():
                sign_in = Message(
                    "0800", {"11": "000001", "41": tid, "42": MID, "60": "00000001003", "63": "001"}
                )
                keys = unwrap_working_keys(tmk, bytes.fromhex(unpack(exchange(sock, pack(sign_in)))["62"]))
                total, count = expected.get(tid, (0, 0))
                field48 = f"{total:012d}{count:03d}{0:012d}{0:03d}0" + "0" * 31
                settle = Message(
                    "0500",
                    {
                        "11": "000002",
                        "41": tid,
                        "42": MID,
                        "48": field48,
                        "49": "156",
                        "60": "00000001201",
                        "63": "001",
                    },
                )
                raw = exchange(sock, sign(settle, keys.mak))
                answer = unpack(raw)
                assert answer["39"] == "00" and mac_matches(raw, keys.mak)
                balanced += answer["48"][30] == "1"
        settle_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    with store.engine.connect() as conn:
        report = settlement_report(conn, now.date())
    report_s = time.perf_counter() - t2
    print(
        json.dumps(
            {
                "benchmark": "settlement",
                "database": store.url.split(":")[0],
                "transactions": n,
                "terminals": args.terminals,
                "balanced_batches": balanced,
                "seed_s": round(seed_s, 2),
                "settle_all_terminals_s": round(settle_s, 2),
                "report_s": round(report_s, 3),
                "report_rows": len(report),
                "report_gross_minor": sum(r.gross_minor for r in report),
            }
        )
    )


if __name__ == "__main__":
    main()
