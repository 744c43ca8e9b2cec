"""Benchmark: CPU cost of the host's request pipeline alone, no sockets.

Builds a fresh database (SQLite by default), signs in `--terminals` terminals through the
pipeline, then answers `--sales` signed sales in groups of `--group` with `handle_batch`, exactly as
the server's database worker does, and prints one JSON object: CPU µs per authorization (the
figure a socket benchmark on a shared two-core machine cannot give cleanly), wall time per group.

    python bench/host_pipeline.py --sales 20000 --group 50 [--db URL] [--pin] [--profile out.pstats]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import tempfile
import time
from pathlib import Path

from tillroll.clock import SystemClock
from tillroll.crypto import encrypt_pin_block, unwrap_working_keys
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.config import HostConfig
from tillroll.host.pipeline import HostPipeline
from tillroll.host.store import open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, pack, sign, unpack

MID = "898100012340001"
PIN = "123456"


def frame(body: bytes) -> bytes:
    return framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, body).encode()[2:]


def answer(reply_frame: bytes | None) -> Message:
    assert reply_frame is not None
    return unpack(framing.parse_payload(reply_frame[2:]).message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sales", type=int, default=20_000)
    parser.add_argument("--group", type=int, default=50)
    parser.add_argument("--terminals", type=int, default=50)
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--pin", action="store_true", help="a PIN block on every sale")
    parser.add_argument("--profile", default=None, help="write a cProfile of the sales to this file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tillroll-pipe-"))
    os.environ.setdefault("TILLROLL_MASTER_KEY_FILE", str(work / "master.key"))
    db = args.db or f"sqlite:///{work / 'host.db'}"
    store = open_store(db)
    add_merchant(store, MID, "BENCH MERCHANT")
    tmks = [add_terminal(store, f"P{i:07d}", MID) for i in range(args.terminals)]
    for i in range(args.terminals):
        add_card(store, f"62220200000{i:08d}", "3012", PIN, 10**12)
    pipeline = HostPipeline(store.engine, store.keystore, SystemClock(), HostConfig())

    sessions = []
    for i, tmk in enumerate(tmks):
        tid = f"P{i:07d}"
        fields = {"11": "000001", "41": tid, "42": MID, "60": "00000001003", "63": "001"}
        signin = pack(Message("0800", fields))
        resp = answer(pipeline.handle(frame(signin)).frame)
        keys = unwrap_working_keys(tmk, bytes.fromhex(resp["62"]))
        sessions.append((tid, keys, resp["60"][2:8]))

    payloads: list[bytes] = []
    for n in range(args.sales):
        i = n % args.terminals
        tid, keys, batch = sessions[i]
        pan = f"62220200000{i:08d}"
        fields = {
            "2": pan, "3": "000000", "4": "000000000100", "11": f"{n // args.terminals + 2:06d}",
            "14": "3012", "22": "021" if args.pin else "022", "25": "00", "41": tid, "42": MID,
            "49": "156", "53": "2600000000000000", "60": f"22{batch}000",
        }  # fmt: skip
        if args.pin:
            fields["26"] = "12"
            fields["52"] = encrypt_pin_block(keys.pik, PIN, pan).hex().upper()
        payloads.append(frame(sign(Message("0200", fields), keys.mak)))

    groups = [payloads[k : k + args.group] for k in range(0, len(payloads), args.group)]
    profiler = cProfile.Profile() if args.profile else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    replies = [pipeline.handle_batch(g) for g in groups]
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    approved = sum(1 for g in replies for r in g if answer(r.frame)["39"] == "00")
    print(
        json.dumps(
            {
                "benchmark": "host_pipeline",
                "database": db.split(":")[0],
                "pin": args.pin,
                "sales": args.sales,
                "group": args.group,
                "approved": approved,
                "cpu_us_per_auth": round(cpu / args.sales * 1e6, 1),
                "wall_us_per_auth": round(wall / args.sales * 1e6, 1),
                "authorizations_per_cpu_s": round(args.sales / cpu, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
