"""`tillroll host serve --workers N`: N host processes on one port, one database.

The parent serves nothing itself: it migrates, starts the children, starts again one that dies,
gives up when they keep dying, and stops them all on SIGTERM. A child whose parent is killed
stops by itself. The children's races on one database are tests/integration/test_host_race_pg.py;
here the database is a SQLite file (the process handling does not depend on it).
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import sys
from pathlib import Path

import pytest
from hostprocs import HostProcess, sqlite_host_db, start_host
from hostwire import PAN, WireClient
from typer.testing import CliRunner

from tillroll.host.admin import card_balance
from tillroll.host.cli import app
from tillroll.host.config import HostConfig
from tillroll.host.workers import DEATHS_WINDOW_S, RestartBudget, Supervisor, WorkerPlan

EXIT_TIMEOUT_S = 20.0
READY = r"tillroll host listening on ([\d.]+):(\d+) \(sqlite, {n} workers?\)"


def exited_within(pid: int, timeout_s: float) -> bool:
    """Whether process `pid` ends within the time (waits on a pidfd: no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(fd)


def worker_pids(host: HostProcess, n: int) -> dict[int, int]:
    pids = {}
    for line in host.lines:
        m = re.match(r"worker (\d+): pid (\d+) listening", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))  # the latest start of each
    assert len(pids) == n, host.lines
    return pids


def sell(address: tuple[str, int], client: WireClient, amount: int) -> str:
    """One sale over a new connection (the kernel picks the worker that takes it)."""
    client.close()
    client.address = address
    return client.send(client.sale_message(amount, pin=None)).code


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return sqlite_host_db(tmp_path, monkeypatch)


def serve_workers(db: str, n: int) -> tuple[HostProcess, tuple[str, int]]:
    host = start_host(
        ["serve", "--workers", str(n), "--listen", "127.0.0.1:0", "--db", db],
        dict(os.environ),
        watch="stdout",
    )
    try:
        m = host.wait_for(READY.format(n=n))
    except BaseException:
        host.stop()
        raise
    return host, (m.group(1), int(m.group(2)))


def test_a_worker_that_dies_is_started_again_and_sigterm_stops_them_all(db: str) -> None:
    host, address = serve_workers(db, 2)
    client = WireClient(address)
    try:
        assert client.sign_in().code == "00"
        assert sell(address, client, 100) == "00"
        before = worker_pids(host, 2)
        seen = len(host.lines)
        os.kill(before[1], signal.SIGKILL)
        host.wait_for(rf"worker 1 \(pid {before[1]}\) killed by SIGKILL: starting it again", after=seen)
        host.wait_for(r"worker 1: pid \d+ listening", after=seen)
        after = worker_pids(host, 2)
        assert after[1] != before[1] and after[2] == before[2]
        # Whichever worker takes each connection, the terminal's session is the database's.
        assert [sell(address, client, 200 + k) for k in range(4)] == ["00"] * 4
    finally:
        client.close()
        code = host.stop(timeout_s=EXIT_TIMEOUT_S)  # SIGTERM: forwarded to every worker
    assert code == 0, host.lines
    assert host.lines[-1].strip() == "stopped"
    assert all(exited_within(pid, 0) for pid in after.values())
    assert card_balance(db, PAN) == 100_000 - 100 - sum(200 + k for k in range(4))


def test_a_worker_whose_parent_is_killed_stops_by_itself(db: str) -> None:
    host, _ = serve_workers(db, 1)
    try:
        (child,) = worker_pids(host, 1).values()
        host.proc.kill()
        host.proc.wait(timeout=EXIT_TIMEOUT_S)
        assert exited_within(child, EXIT_TIMEOUT_S), "the orphaned worker kept serving"
    finally:
        host.stop()


def test_workers_that_keep_dying_make_the_parent_give_up(tmp_path: Path) -> None:
    """The parent's side only: children that die at once (no host start-up to wait for)."""
    plan = WorkerPlan(1, "127.0.0.1", 0, f"sqlite:///{tmp_path / 'h.db'}", HostConfig())
    said: list[str] = []

    def dies_at_once(plan: WorkerPlan, host: str, port: int, fd: int) -> list[str]:
        return [sys.executable, "-S", "-c", "raise SystemExit(3)"]

    code = asyncio.run(Supervisor(plan, said.append, command=dies_at_once).run())
    assert code == 2
    restarts = [line for line in said if line.endswith("exited with status 3: starting it again")]
    assert len(restarts) == 5  # worker_restarts_max
    assert said[-1].endswith("6 deaths within 60 s: stopping every worker")
    assert not any("listening" in line for line in said)


@pytest.mark.parametrize("n", ["0", "65", "-1"])
def test_the_number_of_workers_is_within_1_to_64(n: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--workers", n, "--db", f"sqlite:///{tmp_path / 'h.db'}"])
    assert result.exit_code == 2
    assert f"--workers must be within 1..64 host processes, not {n}" in result.output
    assert not (tmp_path / "h.db").exists()  # refused before anything was opened


def test_restarts_are_bounded_within_a_minute() -> None:
    budget = RestartBudget(restarts_max=5)
    assert [budget.allows(t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [True] * 5
    assert not budget.allows(5.0)  # a sixth death within the minute: give up
    later = RestartBudget(restarts_max=5)
    assert all(later.allows(t * DEATHS_WINDOW_S / 5) for t in range(20))  # one every 12 s: forever
