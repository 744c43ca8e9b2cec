"""Benchmark: relay throughput to a local SMTP server on one kept-open connection.

Fills a fresh back-office database (SQLite by default, durable: WAL, synchronous=FULL) with
`--messages` e-mails fanned out from facts, starts the local SMTP server (tillroll.sim.smtp_sink)
as its own process, then times the relay (`Relay.run_once` rounds of `--batch` messages, one
SmtpSender connection) until the outbox is empty, and checks that the server got every message
once. Prints one JSON object.

    python bench/notify_relay.py --messages 5000 [--batch 500] [--db URL]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import func, insert, select

from tillroll.clock import SystemClock
from tillroll.notify.outbox import Channel, MessageKind, MessageState, StoredMessage
from tillroll.notify.relay import Relay, RelayConfig
from tillroll.notify.routing import fan_out
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.store import make_engine, migrate
from tillroll.store.tables import merchants, outbox

MID = "898310048160001"
T = TypeVar("T")
START_TIMEOUT_S = 10.0


def fill(engine_url: str, count: int) -> None:
    engine = make_engine(engine_url)
    migrate(engine)
    now = SystemClock().now()
    with engine.begin() as conn:
        conn.execute(insert(merchants).values(mid=MID, name="测试便利店", created_at=now))
        for n in range(count):
            fact = {"id": f"bench:{n}", "mid": MID, "at": now.isoformat(), "amount_minor": 100 + n,
                    "contact": f"c{n}@example.com", "code_masked": "134567********1234"}  # fmt: skip
            fan_out(conn, MessageKind.PAYMENT_CANCELLED, fact, now)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--db", default=None, help="database URL (default: a new SQLite file)")
    parser.add_argument(
        "--smtp",
        default=None,
        help="HOST:PORT of an SMTP server already running (e.g. Postfix's `smtp-sink`), instead of "
        "starting tillroll's own sink (aiosmtpd); what it received is then not counted",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tillroll-bench-notify-"))
    url = args.db or f"sqlite:///{tmp / 'host.db'}"
    t0 = time.perf_counter()
    fill(url, args.messages)
    fill_s = time.perf_counter() - t0

    sink: subprocess.Popen[str] | None = None
    if args.smtp:
        host, _, port = args.smtp.rpartition(":")
    else:
        sink = subprocess.Popen(
            [sys.executable, "-m", "tillroll.sim.smtp_sink", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, text=True, env={**os.environ},
        )  # fmt: skip
        assert sink.stdout is not None
        line = sink.stdout.readline()  # "listening on HOST:PORT"
        host, _, port = line.strip().rpartition(" ")[2].rpartition(":")
    engine = make_engine(url)
    sender = SmtpSender(SmtpConfig(host, int(port)))
    relay = Relay(engine, outbox, {Channel.EMAIL: sender}, clock=SystemClock(),
                  config=RelayConfig(batch_max=args.batch, lease_s=300.0))  # fmt: skip
    # Where a round's time goes: the database steps are timed apart from the sends.
    db_s = [0.0]

    def timed(step: Callable[..., T]) -> Callable[..., T]:
        def run(*a: object) -> T:
            t = time.perf_counter()
            try:
                return step(*a)
            finally:
                db_s[0] += time.perf_counter() - t

        return run

    relay._claim = timed(relay._claim)  # type: ignore[method-assign]
    relay._mark = timed(relay._mark)  # type: ignore[method-assign]
    rounds = 0
    started = time.perf_counter()
    delivered = 0
    while True:
        report = relay.run_once()
        rounds += 1
        delivered += report.delivered
        if report.claimed == 0:
            break
    elapsed = time.perf_counter() - started
    # Baseline: the same sender and server without the relay (what the SMTP exchange alone costs).
    baseline_count = min(1000, args.messages)
    content = {"subject": "测试 / test", "text": "您在测试便利店的付款¥1.00 …"}
    probe = StoredMessage(
        "baseline", MessageKind.E_RECEIPT, Channel.EMAIL, "b@example.com", content, 1, SystemClock().now()
    )
    t1 = time.perf_counter()
    for n in range(baseline_count):
        sender.send(replace(probe, message_id=f"baseline-{n}"))
    baseline_s = time.perf_counter() - t1
    sender.close()
    with engine.connect() as conn:
        pending = conn.execute(
            select(func.count()).where(outbox.messages.c.state != MessageState.DELIVERED.value)
        ).scalar_one()
    engine.dispose()
    received = {"received": -1, "distinct_message_ids": -1}  # not counted by an outside server
    if sink is not None:
        sink.terminate()  # SIGTERM: it prints what it received and exits
        out, _ = sink.communicate(timeout=START_TIMEOUT_S)
        received = json.loads(out.strip().splitlines()[-1])
    print(json.dumps({
        "benchmark": "notify_relay",
        "db": "postgresql" if url.startswith("postgres") else "sqlite",
        "messages": args.messages,
        "batch_max": args.batch,
        "rounds": rounds,
        "fill_s": round(fill_s, 2),
        "relay_s": round(elapsed, 3),
        "messages_per_s": round(delivered / elapsed, 1),
        "db_s": round(db_s[0], 3),
        "delivered": delivered,
        "not_delivered": pending,
        "smtp_alone_per_s": round(baseline_count / baseline_s, 1),
        "smtp_server": args.smtp or "tillroll.sim.smtp_sink (aiosmtpd)",
        "smtp_received": received["received"] - baseline_count if sink else None,
        "smtp_distinct_message_ids": received["distinct_message_ids"] - baseline_count if sink else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "smtp_connections": 1,
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
