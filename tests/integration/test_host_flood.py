"""Hostile-traffic test (PROFILE §7): a foreign ISO 8583 client (iso8583sim, another dialect)
and generated hostile frames flood the host's port while real terminals run sales. Not one
legitimate request may be lost or fail, and the host's log stays under 1 MB."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import generated_flood
from hostwire import EXPIRY, MID, TMK

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583 import framing
from tillroll.terminal import HostAddress, Outcome, Terminal, TerminalConfig

TERMINALS = 4
SALES_EACH = 8
OPENING = 1_000_000
LOG_BOUND_BYTES = 1_000_000
FLOOD_FRAMES_MAX = 200_000  # per flooder thread; the flood stops when the sales are done
FLOODERS = 3


def iso8583sim() -> str:
    exe = shutil.which("iso8583sim", path=str(Path(sys.executable).parent)) or shutil.which("iso8583sim")
    if exe is None:
        pytest.fail("iso8583sim is not installed: pip install -e '.[dev]'")
    return exe


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    for n in range(TERMINALS):
        add_terminal(s, f"T000000{n}", MID, TMK)
        add_card(s, f"62220211110000000{n:02d}", EXPIRY, "123456", OPENING)
    yield s
    s.engine.dispose()


@pytest.fixture
def host_log(tmp_path: Path) -> Iterator[Path]:
    """The host's log as an operator's file would hold it (every line the host writes)."""
    path = tmp_path / "host.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("tillroll.host")
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()


class Flooder(threading.Thread):
    """Sends generated hostile frames, reading whatever comes back, reconnecting after a close."""

    def __init__(self, address: tuple[str, int], seed: int, stop: threading.Event) -> None:
        super().__init__(name=f"flooder-{seed}", daemon=True)
        self.address, self.seed, self.stop = address, seed, stop
        self.sent = self.answered = self.closed = 0

    def run(self) -> None:
        frames = generated_flood("T0000000", MID, self.seed)
        sock: socket.socket | None = None
        while not self.stop.is_set() and self.sent < FLOOD_FRAMES_MAX:
            if sock is None:
                sock = socket.create_connection(self.address, timeout=5)
            try:
                sock.sendall(next(frames))
                self.sent += 1
                framing.recv_payload(sock)
                self.answered += 1
            except (ConnectionError, OSError):  # closed by the host, as the profile says
                self.closed += 1
                sock.close()
                sock = None
        if sock is not None:
            sock.close()


def run_sales(term: Terminal, pan: str, outcomes: list[Outcome]) -> None:
    for n in range(SALES_EACH):
        outcomes.append(term.sale(100 + n, pan, EXPIRY).outcome)


def test_a_hostile_flood_loses_no_legitimate_request(
    store: HostStore, host_log: Path, tmp_path: Path
) -> None:
    with HostServer(store, clock=FakeClock(), key_lifetime_s=3600) as host:
        port = str(host.address[1])
        stop = threading.Event()
        foreign = [  # another dialect over our TPDU framing, and with no TPDU at all
            subprocess.Popen(
                [
                    iso8583sim(),
                    "load",
                    "--port",
                    port,
                    "--format",
                    fmt,
                    *extra,
                    "-n",
                    "100000",
                    "-c",
                    "8",
                    "--connections",
                    "4",
                    "-t",
                    "2",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for fmt, extra in (("bcd", ["--tpdu", "6000030000"]), ("ascii-binary", []))
        ]
        flooders = [Flooder(host.address, seed, stop) for seed in range(FLOODERS)]
        try:
            for f in flooders:
                f.start()
            terms = []
            for n in range(TERMINALS):
                config = TerminalConfig(
                    tid=f"T000000{n}",
                    mid=MID,
                    tmk=TMK,
                    host=HostAddress(*host.address),
                    merchant_name="一号便利店",
                    response_timeout_s=10.0,
                    connect_timeout_s=5.0,
                )
                terms.append(Terminal(config, tmp_path / f"pos{n}"))
            outcomes: list[list[Outcome]] = [[] for _ in terms]
            sellers = [
                threading.Thread(target=run_sales, args=(t, f"62220211110000000{n:02d}", outcomes[n]))
                for n, t in enumerate(terms)
            ]
            for s in sellers:
                s.start()
            for s in sellers:
                s.join(timeout=120)
            still_running = [p.poll() is None for p in foreign]
        finally:
            stop.set()
            for f in flooders:
                f.join(timeout=10)
            for p in foreign:
                p.terminate()
                p.wait(timeout=10)
        pending = [t.pending_reversals() for t in terms]
        for t in terms:
            t.close()

    assert outcomes == [[Outcome.APPROVED] * SALES_EACH] * TERMINALS
    assert pending == [[]] * TERMINALS
    for n in range(TERMINALS):
        expected = OPENING - sum(100 + k for k in range(SALES_EACH))
        assert card_balance(store, f"62220211110000000{n:02d}") == expected
    # The flood was real and lasted the whole run.
    assert all(still_running), "iso8583sim stopped before the sales were done"
    assert sum(f.sent for f in flooders) > 200
    assert all(f.answered > 0 and f.closed > 0 for f in flooders)
    text = host_log.read_text(encoding="utf-8")
    assert "bad input from 127.0.0.1" in text
    assert host_log.stat().st_size < LOG_BOUND_BYTES
    assert "Traceback" not in text
