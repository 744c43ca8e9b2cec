"""Fields 12/13, the stored original date and report days are the merchant's local time
(PROFILE §7), whatever the host process's TZ."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hostwire import EXPIRY, MID, PAN, PIN, TID, TMK, WireClient
from sqlalchemy import select

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.config import ConfigError, HostConfig
from tillroll.host.report import settlement_report
from tillroll.host.store import HostStore, open_store
from tillroll.store.tables import transactions

BEIJING = ZoneInfo("Asia/Shanghai")
# 16:30:15 UTC on 29 November is 00:30:15 on 30 November in Beijing: date and time both move.
INSTANT_UTC = datetime(2026, 11, 29, 16, 30, 15)


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    add_card(s, PAN, EXPIRY, PIN, 100_000)
    yield s
    s.engine.dispose()


def test_responses_and_records_use_beijing_time(store: HostStore) -> None:
    with HostServer(store, clock=FakeClock(INSTANT_UTC), key_lifetime_s=3600) as host:
        client = WireClient(host.address)
        try:
            sign_in = client.sign_in()
            sale = client.send(client.sale_message(1_000))
            settle = client.send(client.settle_message(1_000, 1, 0, 0))
        finally:
            client.close()
    assert (sign_in.message["12"], sign_in.message["13"]) == ("003015", "1130")
    assert sale.code == "00"
    assert (sale.message["12"], sale.message["13"], sale.message["15"]) == ("003015", "1130", "1130")
    assert settle.message["15"] == "1130"
    with store.engine.connect() as conn:
        local_date, created_at = conn.execute(
            select(transactions.c.local_date, transactions.c.created_at)
        ).one()
        assert local_date == "1130" and created_at == INSTANT_UTC  # the instant itself is UTC
        # The batch settled at 00:30 Beijing belongs to the Beijing day 30 November.
        (row,) = settlement_report(conn, date(2026, 11, 30))
        assert row.gross_minor == 1_000
        assert settlement_report(conn, date(2026, 11, 29)) == []


def test_another_merchant_zone_is_honoured_and_a_bad_one_refused(store: HostStore) -> None:
    config = HostConfig(key_lifetime_s=3600, merchant_tz="Europe/London")
    with HostServer(store, clock=FakeClock(INSTANT_UTC), config=config) as host:
        client = WireClient(host.address)
        try:
            assert client.sign_in().message["12"] == "163015"
        finally:
            client.close()
    with pytest.raises(ConfigError, match="Asia/Shanghai"):
        HostConfig(merchant_tz="Beijing")


def _read_address(proc: subprocess.Popen[str], timeout_s: float) -> tuple[tuple[str, int], threading.Thread]:
    """The address `tillroll host serve` logs once it listens (a reader thread: bounded wait),
    and the thread, which ends when the process closes its stderr."""
    found: list[tuple[str, int]] = []
    seen: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            m = re.search(r"listening on ([\d.]+):(\d+)", line)
            if m and not found:
                found.append((m.group(1), int(m.group(2))))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not ready.wait(timeout_s) or not found:
        raise AssertionError(f"host did not start within {timeout_s} s: {''.join(seen)}")
    return found[0], reader


def test_host_serve_under_tz_utc_answers_beijing_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'host.db'}"
    s = open_store(url)
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    s.engine.dispose()
    env = {**os.environ, "TZ": "UTC"}
    env.pop("TILLROLL_MERCHANT_TZ", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillroll", "host", "serve", "--listen", "127.0.0.1:0", "--db", url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader: threading.Thread | None = None
    try:
        address, reader = _read_address(proc, timeout_s=20)
        client = WireClient(address)
        try:
            before = datetime.now(BEIJING).replace(tzinfo=None, microsecond=0)
            ans = client.sign_in()
            after = datetime.now(BEIJING).replace(tzinfo=None, microsecond=0) + timedelta(seconds=1)
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if reader is not None:
            reader.join(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
    assert ans.code == "00"
    stamped = datetime.strptime(f"{before.year}{ans.message['13']}{ans.message['12']}", "%Y%m%d%H%M%S")
    if stamped < before - timedelta(days=180):  # New Year's Eve in Beijing during the test
        stamped = stamped.replace(year=before.year + 1)
    assert before <= stamped <= after, (stamped, before, after)
