"""`tillroll host serve` as real processes, for tests that need more than one host process.

A reader thread keeps every line one stream of the process writes; `wait_for` waits on it (a
condition with a deadline, no polling) until a line matches.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from hostwire import host_store

START_TIMEOUT_S = 30.0  # two interpreters importing at once on a shared two-core machine


@dataclass
class HostProcess:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    closed: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, *, after: int = 0, timeout_s: float = START_TIMEOUT_S) -> re.Match[str]:
        """The first line from line `after` on that matches `pattern`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = after
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    why = "ended" if self.closed else f"wrote nothing like it within {timeout_s:.0f} s"
                    raise AssertionError(f"waiting for {pattern!r}: the host {why}:\n{''.join(self.lines)}")
                self._cond.wait(left)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout_s: float = 15.0) -> int:
        self.terminate()
        try:
            code = self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
            if self._reader is not None:
                self._reader.join(timeout=5)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        return code


def start_host(
    args: Sequence[str], env: dict[str, str], *, watch: str = "stderr", module: str = "tillroll.host"
) -> HostProcess:
    """`python -m tillroll.host ARGS…` (the host's commands without the rest of the command
    line: a third of the start-up; `module="tillroll"` with ARGS starting "host" for the whole
    one); `watch`: the stream whose lines are kept (the other is discarded): stderr has the
    host's log, stdout what `--workers` reports."""
    out = subprocess.PIPE if watch == "stdout" else subprocess.DEVNULL
    err = subprocess.PIPE if watch == "stderr" else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        text=True,
    )
    host = HostProcess(proc)
    stream = proc.stdout if watch == "stdout" else proc.stderr
    assert stream is not None
    host._reader = threading.Thread(target=host._read, args=(stream,), daemon=True)
    host._reader.start()
    return host


def sqlite_host_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite host database with the test merchant, terminal and card, for `host serve`
    processes: its master key in a file named by the environment they inherit."""
    monkeypatch.setenv("TILLROLL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    url = f"sqlite:///{tmp_path / 'host.db'}"
    with host_store(url):
        pass
    return url


def serve_many(n: int, db_url: str, env: dict[str, str]) -> list[tuple[HostProcess, tuple[str, int]]]:
    """`n` separate `host serve` processes, each on a free port of its own, started together;
    each with the address it logged once listening."""
    hosts = [start_host(["serve", "--listen", "127.0.0.1:0", "--db", db_url], env) for _ in range(n)]
    try:
        found = [host.wait_for(r"listening on ([\d.]+):(\d+)$") for host in hosts]
    except BaseException:
        stop_all(hosts)
        raise
    return [(host, (m.group(1), int(m.group(2)))) for host, m in zip(hosts, found, strict=True)]


def stop_all(hosts: Sequence[HostProcess]) -> None:
    """SIGTERM to every one first, then wait for each: they stop side by side."""
    for host in hosts:
        host.terminate()
    for host in hosts:
        host.stop()
