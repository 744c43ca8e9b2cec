"""Benchmark: wallet `pay` → SUCCESS latency over HTTP at N concurrent clients.

Starts `tillroll wallet serve` as its own process on a fresh database (SQLite by default, durable:
WAL with synchronous=FULL), registers a merchant and one user per client, issues every payment
code up front (so the run measures `pay` alone), then `--concurrency` clients each send signed
pays one after another, on their own kept-open HTTP connection, for `--seconds`. Prints one JSON
object. Every answer must be SUCCESS and every user's balance must come out right.

    python bench/wallet_pay.py --concurrency 50 --seconds 10 [--db URL]
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
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

from tillroll.wallet.admin import add_merchant, balance_fen, open_wallet
from tillroll.wallet.codes import Brand, new_code
from tillroll.wallet.sign import new_nonce, signed
from tillroll.wallet.tables import codes, users

MCH_ID = "BENCH01"
KEY = "bench-merchant-key-0123456789abcdef"
FEE = 1250
READY_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def issue_codes(db: str, concurrency: int, per_client: int) -> list[list[str]]:
    engine = open_wallet(db)
    add_merchant(engine, MCH_ID, "压测店", KEY)
    now = datetime.now(UTC).replace(tzinfo=None)
    out: list[list[str]] = []
    with engine.begin() as conn:
        for i in range(concurrency):
            brand = Brand.WX if i % 2 == 0 else Brand.ALI
            conn.execute(users.insert().values(name=f"u{i}", brand=brand, balance_fen=10**12, behaviour="ok"))
            user_id = conn.execute(sa.select(users.c.id).where(users.c.name == f"u{i}")).scalar_one()
            mine = list({new_code(brand) for _ in range(per_client)})
            conn.execute(codes.insert(), [{"code": c, "user_id": user_id, "issued_at": now} for c in mine])
            out.append(mine)
    engine.dispose()
    return out


async def client(
    index: int, base: str, my_codes: list[str], deadline: float, latencies: list[float], errors: list[str]
) -> int:
    paid = 0
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for n, code in enumerate(my_codes):
            if time.perf_counter() >= deadline:
                break
            body = {"mch_id": MCH_ID, "nonce_str": new_nonce(), "auth_code": code}
            body |= {"out_trade_no": f"B{index}-{n}", "total_fee": FEE, "body": "bench"}
            start = time.perf_counter()
            answer = (await http.post("/v1/pay", json=signed(body, KEY))).json()
            latencies.append(time.perf_counter() - start)
            if answer.get("result_code") == "SUCCESS":
                paid += 1
            else:
                errors.append(str(answer.get("err_code") or answer.get("return_msg")))
    return paid


async def drive(
    base: str, all_codes: list[list[str]], seconds: float
) -> tuple[list[float], list[str], list[int]]:
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    paid = await asyncio.gather(
        *(client(i, base, c, deadline, latencies, errors) for i, c in enumerate(all_codes))
    )
    return latencies, errors, list(paid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file); must be empty")
    parser.add_argument("--codes-per-client", type=int, default=2000)
    args = parser.parse_args()
    if args.seconds > 50:
        parser.error("--seconds at most 50 (codes are issued up front and live 60 s)")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{Path(tmp) / 'wallet.db'}"
        all_codes = issue_codes(db, args.concurrency, args.codes_per_client)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tillroll",
                "wallet",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--db",
                db,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + READY_S
            while True:
                try:
                    httpx.post(base + "/v1/query", content=b"{}", timeout=1)
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("wallet serve did not start") from None
                    time.sleep(0.05)
            started = time.perf_counter()
            latencies, errors, paid = asyncio.run(drive(base, all_codes, args.seconds))
            elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=30)
        engine = open_wallet(db)
        wrong = [i for i, n in enumerate(paid) if balance_fen(engine, f"u{i}") != 10**12 - n * FEE]
        engine.dispose()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else latencies * 99
    print(
        json.dumps(
            {
                "benchmark": "wallet_pay",
                "database": "postgresql" if args.db and "postgres" in args.db else "sqlite",
                "concurrency": args.concurrency,
                "seconds": round(elapsed, 2),
                "pays": len(latencies),
                "pays_per_s": round(len(latencies) / elapsed, 1),
                "p50_ms": round(q[49] * 1000, 1),
                "p99_ms": round(q[98] * 1000, 1),
                "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
                "errors": len(errors),
                "error_kinds": sorted(set(errors))[:5],
                "balances_wrong": len(wrong),
                "top_ms": [round(x * 1000) for x in latencies[-8:]],
            }
        )
    )


if __name__ == "__main__":
    main()
