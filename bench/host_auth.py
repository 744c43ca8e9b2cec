"""Benchmark: authorizations per second and latency of the acquirer host over TCP.

Starts `tillroll host serve` as its own process on a fresh database (SQLite by default, durable:
WAL with synchronous=FULL), registers signed-in terminals, then drives sales from `--concurrency`
connections for `--seconds`, and prints one JSON object.

    python bench/host_auth.py --concurrency 50 --seconds 20 [--db URL] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tillroll.crypto import encrypt_pin_block, unwrap_working_keys
from tillroll.crypto.keys import WorkingKeys
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.store import open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack

MID = "898100012340001"
PIN = "123456"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bytes:
    writer.write(framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, body).encode())
    await writer.drain()
    payload = await framing.read_payload(reader)
    return framing.parse_payload(payload).message


async def terminal(
    index: int,
    tmk: bytes,
    port: int,
    deadline: float,
    use_pin: bool,
    latencies: list[float],
    errors: list[str],
) -> None:
    tid = f"B{index:07d}"
    pan = f"62220200000{index:08d}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stan = 0

    def next_stan() -> str:
        nonlocal stan
        stan += 1
        return f"{stan:06d}"

    raw = await exchange(
        reader,
        writer,
        pack(Message("0800", {"11": next_stan(), "41": tid, "42": MID, "60": "00000001003", "63": "001"})),
    )
    resp = unpack(raw)
    keys: WorkingKeys = unwrap_working_keys(tmk, bytes.fromhex(resp["62"]))
    batch = resp["60"][2:8]
    while time.perf_counter() < deadline:
        fields = {
            "2": pan, "3": "000000", "4": "000000000100", "11": next_stan(), "14": "3012",
            "22": "021" if use_pin else "022", "25": "00", "41": tid, "42": MID, "49": "156",
            "53": "2600000000000000", "60": f"22{batch}000",
        }  # fmt: skip
        if use_pin:
            fields["26"] = "12"
            fields["52"] = encrypt_pin_block(keys.pik, PIN, pan).hex().upper()
        body = sign(Message("0200", fields), keys.mak)
        t0 = time.perf_counter()
        raw = await exchange(reader, writer, body)
        latencies.append(time.perf_counter() - t0)
        answer = unpack(raw)
        if answer["39"] != "00" or not mac_matches(raw, keys.mak):
            errors.append(answer["39"])
    writer.close()


async def drive(
    tmks: list[bytes], port: int, seconds: float, use_pin: bool
) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(terminal(i, tmk, port, deadline, use_pin, latencies, errors) for i, tmk in enumerate(tmks))
    )
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--pin", action="store_true", help="send a PIN block with every sale")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tillroll-bench-"))
    env = dict(os.environ, TILLROLL_MASTER_KEY_FILE=str(work / "master.key"))
    os.environ.update(env)
    db = args.db or f"sqlite:///{work / 'host.db'}"
    store = open_store(db)
    add_merchant(store, MID, "BENCH MERCHANT")
    tmks = []
    for i in range(args.concurrency):
        tmks.append(add_terminal(store, f"B{i:07d}", MID))
        add_card(store, f"62220200000{i:08d}", "3012", PIN, 10**11)
    store.engine.dispose()

    port = free_port()
    host = subprocess.Popen(
        [sys.executable, "-m", "tillroll", "host", "serve", "--listen", f"127.0.0.1:{port}", "--db", db],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        latencies, errors, elapsed = asyncio.run(drive(tmks, port, args.seconds, args.pin))
    finally:
        host.terminate()
        host.wait(timeout=10)
    latencies.sort()
    n = len(latencies)
    print(
        json.dumps(
            {
                "benchmark": "host_auth",
                "database": db.split(":")[0],
                "concurrency": args.concurrency,
                "pin": args.pin,
                "seconds": round(elapsed, 2),
                "authorizations": n,
                "errors": len(errors),
                "authorizations_per_s": round(n / elapsed, 1),
                "p50_ms": round(statistics.median(latencies) * 1000, 2) if n else None,
                "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
