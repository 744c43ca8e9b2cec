"""The terminal's line to the acquirer host: framed request/response pairs over TCP.

- One TCP connection carries many request/response pairs, one at a time (PROFILE §1). Before a
  kept connection is reused it is checked: a connection the host closed is replaced first.
- Every socket operation has a timeout: connecting is bounded by ``connect_timeout_s``, the whole
  wait for a response by ``response_timeout_s`` (one deadline, however the bytes trickle in).
- Primary and backup addresses: when connecting fails on the active line the other is tried, and
  the one that answers becomes the active line. A failure *after* the request was written is
  reported as :attr:`LinkStatus.NO_ANSWER` — the engine reverses it; the link never re-sends a
  request on its own.

The socket factory is injected (``socket.create_connection`` by default) so tests can fake it.
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tillroll.iso8583.errors import FramingError
from tillroll.iso8583.framing import (
    FRAME_MAX_LEN,
    TERMINAL_HEADER,
    TERMINAL_TPDU,
    Frame,
    check_length,
    parse_payload,
)

SocketFactory = Callable[[tuple[str, int], float], socket.socket]


class LinkStatus(enum.Enum):
    ANSWERED = "answered"
    NOT_SENT = "not_sent"  # no line could be opened: nothing left the device
    NO_ANSWER = "no_answer"  # the request may have reached the host; no (whole) answer came


@dataclass(frozen=True)
class LinkResult:
    status: LinkStatus
    frame: Frame | None = None
    line: str = ""  # which address, for the journal and messages
    detail: str = ""


class HostLink(Protocol):
    def exchange(self, message: bytes) -> LinkResult:
        """Send one packed ISO 8583 message (framed with the terminal's TPDU and header) and wait
        for the response frame."""
        ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """Called from another thread: end the exchange in progress at once (it answers
        NO_ANSWER) and send nothing more."""
        ...


def _recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no response in time")
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"the host closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _peer_closed(sock: socket.socket) -> bool:
    """True when a kept connection is no longer usable (EOF, reset, or stray bytes waiting)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)  # EOF, an error, or unsolicited bytes: none of them is reusable


class TcpHostLink:
    def __init__(
        self,
        primary: tuple[str, int],
        backup: tuple[str, int] | None = None,
        *,
        connect_timeout_s: float = 5.0,
        response_timeout_s: float = 30.0,
        socket_factory: SocketFactory | None = None,
        tpdu: bytes = TERMINAL_TPDU,
        header: bytes = TERMINAL_HEADER,
    ) -> None:
        self._lines = [primary] + ([backup] if backup else [])
        self._active = 0
        self._sock: socket.socket | None = None
        self._connect_timeout_s = connect_timeout_s
        self._response_timeout_s = response_timeout_s
        self._factory: SocketFactory = socket_factory or socket.create_connection
        self._tpdu = tpdu
        self._header = header
        self._aborted = threading.Event()

    @property
    def active_line(self) -> str:
        host, port = self._lines[self._active]
        return f"{host}:{port}"

    def _switch(self) -> None:
        """Prefer the other line for the next connection."""
        self._active = (self._active + 1) % len(self._lines)

    def _connect(self) -> socket.socket | None:
        for _ in range(len(self._lines)):
            try:
                sock = self._factory(self._lines[self._active], self._connect_timeout_s)
            except OSError:
                self._switch()
                continue
            sock.settimeout(self._connect_timeout_s)
            return sock
        return None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def abort(self) -> None:
        """From another thread: end the exchange in progress now and refuse new ones.

        The exchange in progress returns NO_ANSWER (what it sent is the engine's to reverse, as
        after any lost answer); a connect in progress ends at its own timeout. Used to stop
        `pos run` at once whatever it was doing."""
        self._aborted.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in the other thread

    def exchange(self, message: bytes) -> LinkResult:
        if self._aborted.is_set():
            return LinkResult(LinkStatus.NOT_SENT, detail="stopping: nothing sent")
        if self._sock is not None and _peer_closed(self._sock):
            self.close()
        if self._sock is None:
            self._sock = self._connect()
            if self._sock is None:
                return LinkResult(LinkStatus.NOT_SENT, detail="no line could be opened")
            if self._aborted.is_set():  # stopped while connecting: send nothing
                self.close()
                return LinkResult(LinkStatus.NOT_SENT, detail="stopping: nothing sent")
        sock = self._sock
        line = self.active_line
        data = Frame(self._tpdu, self._header, message).encode()
        try:
            sock.settimeout(self._connect_timeout_s)
            sock.sendall(data)
            deadline = time.monotonic() + self._response_timeout_s
            (length,) = struct.unpack(">H", _recv_exactly(sock, 2, deadline))
            check_length(length, FRAME_MAX_LEN)
            frame = parse_payload(_recv_exactly(sock, length, deadline))
        except (OSError, FramingError) as exc:
            # Timeouts, resets, EOF, garbage: the connection is done; the next one prefers the
            # other line (a request already written is the engine's to reverse, never re-sent).
            self.close()
            self._switch()
            return LinkResult(LinkStatus.NO_ANSWER, line=line, detail=type(exc).__name__)
        return LinkResult(LinkStatus.ANSWERED, frame=frame, line=line)
