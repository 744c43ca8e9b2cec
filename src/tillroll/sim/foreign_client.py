"""A foreign client flooding the host's port: the IO half of :mod:`tillroll.sim.foreign_messages`.

A few threads, each on its own TCP connection, send foreign frames one at a time and wait
(bounded) for an answer or a close; a closed connection is opened again. Everything is bounded:
the number of frames, the rate, each connect/read timeout and the whole run's duration. The
counts say what the host did with the traffic (answered, and with which code; closed; silent).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tillroll.iso8583 import framing
from tillroll.iso8583.errors import CodecError, FramingError
from tillroll.iso8583.messages import unpack
from tillroll.sim.foreign_messages import ForeignFrame, foreign_frames


@dataclass(frozen=True)
class FloodLimits:
    frames: int = 1_500  # frames sent in all
    rate_per_s: float = 600.0  # across all connections
    connections: int = 2
    connect_timeout_s: float = 1.0
    answer_timeout_s: float = 1.0  # per frame: an answer or a close within this, else "silent"
    duration_max_s: float = 15.0


@dataclass
class FloodCounts:
    sent: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # by field 39 ("?" when unreadable)
    closed: int = 0  # the host closed the connection after a frame
    silent: int = 0  # neither an answer nor a close within answer_timeout_s
    connect_failed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        codes = ", ".join(f"{n}×{code}" for code, n in sorted(self.answered.items()))
        return (
            f"{self.sent} frames sent; answered {sum(self.answered.values())} ({codes or 'none'}); "
            f"connection closed {self.closed}; silent {self.silent}; connect failed {self.connect_failed}"
        )


class ForeignClient:
    """Run :meth:`start` … :meth:`join`; ``counts`` is final once :meth:`join` returned True."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        tids: Sequence[str],
        mid: str,
        seed: int = 8583,
        limits: FloodLimits | None = None,
    ) -> None:
        self.address = address
        self.limits = limits or FloodLimits()
        self.counts = FloodCounts()
        self._frames: Iterator[ForeignFrame] = foreign_frames(seed, tids, mid)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> ForeignClient:
        self._started_at = time.monotonic()
        for n in range(self.limits.connections):
            t = threading.Thread(target=self._run, name=f"foreign-client-{n}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the flood to end (all frames sent, or stopped); False if it did not in time."""
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not self.running

    def _next(self) -> ForeignFrame | None:
        """The next frame to send, paced to the rate; None when the flood is over."""
        with self._lock:
            elapsed_s = time.monotonic() - self._started_at
            if self._stop.is_set() or self.counts.sent >= self.limits.frames:
                return None
            if elapsed_s > self.limits.duration_max_s:
                return None
            due_s = self.counts.sent / self.limits.rate_per_s - elapsed_s
            self.counts.sent += 1
            item = next(self._frames)
            self.counts.by_kind[item.kind] += 1
        if due_s > 0:
            self._stop.wait(due_s)  # pacing, interruptible by stop()
        return item

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.address, timeout=self.limits.connect_timeout_s)
        except OSError:
            with self._lock:
                self.counts.connect_failed += 1
            self._stop.wait(0.05)  # the host refuses: do not spin
            return None
        sock.settimeout(self.limits.answer_timeout_s)
        return sock

    def _run(self) -> None:
        sock: socket.socket | None = None
        try:
            while (item := self._next()) is not None:
                if sock is None and (sock := self._connect()) is None:
                    continue
                outcome = self._exchange(sock, item.data)
                with self._lock:
                    if outcome == "closed":
                        self.counts.closed += 1
                    elif outcome == "silent":
                        self.counts.silent += 1
                    else:
                        self.counts.answered[outcome] += 1
                if outcome in ("closed", "silent"):
                    sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()

    @staticmethod
    def _exchange(sock: socket.socket, data: bytes) -> str:
        """Send one frame; the answer's field 39, "closed" or "silent"."""
        try:
            sock.sendall(data)
            (length,) = struct.unpack(">H", framing.recv_exactly(sock, 2))
            payload = framing.recv_exactly(sock, length)
        except TimeoutError:
            return "silent"
        except (ConnectionError, OSError):
            return "closed"
        try:
            return unpack(framing.parse_payload(payload).message).get("39") or "?"
        except (CodecError, FramingError, ValueError):
            return "?"
