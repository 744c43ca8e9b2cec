"""A frame-aware, fault-injecting TCP proxy for the card rail (PROFILE §1 framing).

Sits between a POS terminal and the acquirer host::

    terminal ──> FaultProxy.address ──> upstream (the host)

It reads whole frames (2-byte big-endian length + payload) from each side and forwards them, so
a fault can target "the next request" or "the response to the next request". It runs its own
asyncio loop in a background thread, so synchronous test code and the synchronous terminal can
drive it; every public method is thread-safe.

How faults match
----------------
``inject(fault, count=n)`` arms ``fault`` for the next ``n`` matching frames (``count=-1``: until
``clear()``). Injecting a fault that is already armed replaces its count and delay. Faults are
matched when a *request* frame arrives from a client, in this order:

- request side, at most one: ``STALL``, ``DROP_REQUEST``, ``DUPLICATE_REQUEST``;
- response side, at most one, and only if the request is forwarded: ``DROP_RESPONSE``,
  ``CUT_MID_FRAME``, ``CORRUPT_RESPONSE``, ``DELAY_RESPONSE``. The fault is bound to the response
  to *that* request (responses come back in order on a connection, PROFILE §1), so a response
  already in flight on another connection never steals it. A response that arrives with no
  request outstanding takes any armed response fault at that moment.

``REFUSE`` is matched by connection attempts instead: the next ``count`` new connections are
accepted by the kernel and reset at once by the proxy (RST, ``SO_LINGER`` 0) before any byte is
forwarded — so ``connect()`` may succeed, but the first ``recv`` raises ``ConnectionResetError``
(or sees EOF) and nothing reaches the host. ``down()``/``up()`` is ``REFUSE`` with ``count=-1``.
Connections already open are untouched unless ``down(close_existing=True)``.

What each fault does
--------------------
- ``DROP_REQUEST``: the request is swallowed; the host never sees it; the connection stays open.
- ``DROP_RESPONSE``: the request is forwarded; the host's response is swallowed.
- ``DELAY_RESPONSE``: the response is held ``delay_s`` seconds, then forwarded (later responses on
  that connection queue behind it).
- ``CUT_MID_FRAME``: the response's length prefix and the first half of its payload are
  forwarded, then both sides are closed (the client sees a truncated frame, then EOF).
- ``DUPLICATE_REQUEST``: the request is sent to the host twice, back to back; the first response
  is forwarded, the second discarded after comparing it byte for byte with the first
  (``stats.replays_identical`` / ``stats.replays_differing``).
- ``STALL``: the request is swallowed and the connection goes silent: everything the client
  sends is read and discarded, nothing is forwarded either way, and the connection stays open
  until the client closes it (or, like every connection, ``idle_timeout_s`` passes with nothing
  from the client, or ``stop()``).
- ``CORRUPT_RESPONSE``: every bit of the response's last byte is flipped (XOR 0xFF) — that byte
  is inside the MAC, field 64 — and the frame is forwarded.

Bounds and bad frames
---------------------
At most ``max_connections`` proxied connections at once (more are reset at once and counted in
``stats.connections_rejected``); a connection with no bytes from either side for
``idle_timeout_s`` is closed (a delayed response restarts that clock when it is due); at most
256 requests may await an answer on one connection; connecting upstream is bounded by
``connect_timeout_s`` (a failure closes the client's connection).

A length prefix of 0 or above ``max_frame_len`` (default 4096) is a bad frame. It is **passed
through raw, then the connection is closed**: the prefix and whatever follows it within a short
grace period (at most ``max_frame_len`` bytes) are written to the other side, then both sides
are closed. The host's own framing validation therefore sees the bad prefix. Lengths between
the host's limit (2048) and ``max_frame_len`` are forwarded as ordinary frames, for the host to
reject. ``stop()`` closes every socket and joins the thread within ``stop_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import math
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

from tillroll.clock import Clock, SystemClock

__all__ = ["DEFAULT_MAX_FRAME_LEN", "Fault", "FaultEvent", "FaultProxy", "ProxyStats"]

DEFAULT_MAX_FRAME_LEN = 4096
MAX_EVENTS = 10_000
BAD_FRAME_GRACE_S = 0.05
CLOSE_TIMEOUT_S = 1.0
READ_CHUNK = 4096
MAX_PENDING = 256  # requests awaiting an answer on one connection (the profile allows one)


class Fault(enum.Enum):
    DROP_RESPONSE = "drop_response"
    DROP_REQUEST = "drop_request"
    DELAY_RESPONSE = "delay_response"
    CUT_MID_FRAME = "cut_mid_frame"
    DUPLICATE_REQUEST = "duplicate_request"
    STALL = "stall"
    CORRUPT_RESPONSE = "corrupt_response"
    REFUSE = "refuse"


REQUEST_FAULTS = (Fault.STALL, Fault.DROP_REQUEST, Fault.DUPLICATE_REQUEST)
RESPONSE_FAULTS = (Fault.DROP_RESPONSE, Fault.CUT_MID_FRAME, Fault.CORRUPT_RESPONSE, Fault.DELAY_RESPONSE)


@dataclass(frozen=True)
class FaultEvent:
    """One fault actually applied: to a frame (its payload length) or to a connection attempt."""

    fault: Fault
    connection_id: int
    frame_length: int | None
    at: datetime
    at_monotonic: float
    detail: str = ""


@dataclass(frozen=True)
class ProxyStats:
    connections_accepted: int = 0  # proxied (REFUSEd and rejected ones not included)
    connections_active: int = 0
    connections_refused: int = 0  # by REFUSE / down()
    connections_rejected: int = 0  # over max_connections
    upstream_connect_failures: int = 0
    idle_closed: int = 0
    frames_to_upstream: int = 0  # whole frames written to the host (a duplicate counts twice)
    frames_to_client: int = 0  # whole frames written to clients (a cut frame does not count)
    bad_frames: int = 0  # bad length prefixes passed through raw
    replays_identical: int = 0
    replays_differing: int = 0


@dataclass
class _Arm:
    remaining: int  # -1: until clear()
    delay_s: float


@dataclass
class _Pending:
    """What to do with the response to one forwarded request."""

    fault: Fault | None = None
    delay_s: float = 0.0
    replay_of: _Pending | None = None  # set on the discarded second response of a duplicate
    response: bytes | None = None


@dataclass
class _Conn:
    conn_id: int
    creader: asyncio.StreamReader
    cwriter: asyncio.StreamWriter
    ureader: asyncio.StreamReader | None = None
    uwriter: asyncio.StreamWriter | None = None
    stalled: bool = False
    last_activity: float = 0.0
    pending: deque[_Pending] = field(default_factory=deque)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class _Outcome(enum.Enum):
    EOF = "eof"
    CLOSED = "closed"  # reset, cut, bad frame: tear the connection down


class FaultProxy:
    """The proxy in a background thread. See the module docstring for the fault semantics."""

    def __init__(
        self,
        upstream: tuple[str, int],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = 64,
        idle_timeout_s: float = 30.0,
        max_frame_len: int = DEFAULT_MAX_FRAME_LEN,
        connect_timeout_s: float = 5.0,
        stop_timeout_s: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not (idle_timeout_s > 0 and math.isfinite(idle_timeout_s)):
            raise ValueError("idle_timeout_s must be a positive number of seconds")
        if not 1 <= max_frame_len <= 0xFFFF:
            raise ValueError("max_frame_len must be in 1..65535")
        if not (connect_timeout_s > 0 and stop_timeout_s > 0):
            raise ValueError("timeouts must be positive")
        self._upstream = upstream
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._max_frame_len = max_frame_len
        self._connect_timeout_s = connect_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._clock: Clock = clock or SystemClock()

        self._lock = threading.Lock()
        self._arms: dict[Fault, _Arm] = {}
        self._events: deque[FaultEvent] = deque(maxlen=MAX_EVENTS)
        self._stats: dict[str, int] = {f.name: 0 for f in dataclasses.fields(ProxyStats)}
        self._next_conn_id = 0

        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._address: tuple[str, int] | None = None
        # Loop-thread only:
        self._conns: dict[int, _Conn] = {}
        self._handlers: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("fault proxy already started")
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name="tillroll-fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=self._stop_timeout_s):
            self.stop()
            raise TimeoutError("fault proxy did not start in time")
        if self._startup_error is not None:
            err = self._startup_error
            self._thread.join(timeout=self._stop_timeout_s)
            self._thread = None
            raise err

    def stop(self) -> None:
        """Close the listener and every connection, then join the thread (bounded). Idempotent."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if thread is threading.current_thread():
            raise RuntimeError("stop() called from the proxy's own thread")
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout=self._stop_timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"fault proxy thread did not stop within {self._stop_timeout_s} s")
        self._thread = None
        self._loop = None
        self._stop_event = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect."""
        if self._address is None:
            raise RuntimeError("fault proxy not started")
        return self._address

    # ---------------------------------------------------------------- control

    def inject(self, fault: Fault, *, count: int = 1, delay_s: float = 0.0) -> None:
        """Arm ``fault`` for the next ``count`` matching frames (REFUSE: connection attempts).

        ``count=-1`` keeps it armed until ``clear()``; re-injecting replaces count and delay.
        """
        if count != -1 and count < 1:
            raise ValueError("count must be positive, or -1 for 'until clear()'")
        if not (delay_s >= 0 and math.isfinite(delay_s)):
            raise ValueError("delay_s must be a finite, non-negative number of seconds")
        with self._lock:
            self._arms[fault] = _Arm(count, delay_s)

    def clear(self) -> None:
        """Disarm every fault, REFUSE included. Stalled connections stay stalled."""
        with self._lock:
            self._arms.clear()

    def down(self, *, close_existing: bool = False) -> None:
        """Line down: refuse new connections until ``up()``; optionally close the open ones."""
        self.inject(Fault.REFUSE, count=-1)
        if close_existing:
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._close_all_connections)

    def up(self) -> None:
        """Line up again: disarm REFUSE."""
        with self._lock:
            self._arms.pop(Fault.REFUSE, None)

    def armed(self) -> dict[Fault, int]:
        """The faults still armed and their remaining counts (-1: until clear())."""
        with self._lock:
            return {f: a.remaining for f, a in self._arms.items()}

    @property
    def events(self) -> list[FaultEvent]:
        """The faults applied so far, oldest first (the last 10 000)."""
        with self._lock:
            return list(self._events)

    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(**self._stats)

    # ---------------------------------------------------------------- bookkeeping (any thread)

    def _take(self, candidates: tuple[Fault, ...]) -> tuple[Fault, _Arm] | None:
        with self._lock:
            for fault in candidates:
                arm = self._arms.get(fault)
                if arm is None:
                    continue
                if arm.remaining > 0:
                    arm.remaining -= 1
                    if arm.remaining == 0:
                        del self._arms[fault]
                return fault, _Arm(arm.remaining, arm.delay_s)
        return None

    def _record(self, fault: Fault, conn_id: int, frame_length: int | None, detail: str = "") -> None:
        event = FaultEvent(fault, conn_id, frame_length, self._clock.now(), self._clock.monotonic(), detail)
        with self._lock:
            self._events.append(event)

    def _count(self, name: str, delta: int = 1) -> None:
        with self._lock:
            self._stats[name] += delta

    # ---------------------------------------------------------------- loop thread

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                raise

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._handle, self._host, self._port, reuse_address=True)
        try:
            sockname = server.sockets[0].getsockname()
            self._address = (str(sockname[0]), int(sockname[1]))
            self._ready.set()
            await self._stop_event.wait()
        finally:
            server.close()
            await self._shutdown_connections()
            await server.wait_closed()

    async def _shutdown_connections(self) -> None:
        self._close_all_connections()
        handlers = set(self._handlers)
        if handlers:
            _, late = await asyncio.wait(handlers, timeout=self._stop_timeout_s / 2)
            for conn in list(self._conns.values()):  # last resort: abort the sockets
                for writer in (conn.cwriter, conn.uwriter):
                    if writer is not None:
                        writer.transport.abort()
            if late:
                await asyncio.wait(late, timeout=CLOSE_TIMEOUT_S)

    def _close_all_connections(self) -> None:
        for conn in self._conns.values():
            conn.stop.set()

    def _touch(self, conn: _Conn) -> None:
        conn.last_activity = asyncio.get_running_loop().time()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle_inner(creader, cwriter)
        finally:
            self._handlers.discard(task)

    async def _handle_inner(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        with self._lock:
            self._next_conn_id += 1
            conn_id = self._next_conn_id
        taken = self._take((Fault.REFUSE,))
        if taken is not None:
            self._record(Fault.REFUSE, conn_id, None, "connection reset at once")
            self._count("connections_refused")
            await _reset(cwriter)
            return
        if len(self._conns) >= self._max_connections:
            self._count("connections_rejected")
            await _reset(cwriter)
            return
        conn = _Conn(conn_id, creader, cwriter)
        self._touch(conn)
        self._conns[conn_id] = conn
        self._count("connections_accepted")
        self._count("connections_active")
        try:
            try:
                conn.ureader, conn.uwriter = await asyncio.wait_for(
                    asyncio.open_connection(*self._upstream), self._connect_timeout_s
                )
            except (OSError, TimeoutError):
                self._count("upstream_connect_failures")
                return
            await self._serve(conn)
        finally:
            del self._conns[conn_id]
            self._count("connections_active", -1)
            await _close(conn.cwriter)
            if conn.uwriter is not None:
                await _close(conn.uwriter)

    async def _serve(self, conn: _Conn) -> None:
        c2u = asyncio.create_task(self._pump_client(conn))
        u2c = asyncio.create_task(self._pump_upstream(conn))
        watch = asyncio.create_task(self._watch(conn))
        pending: set[asyncio.Task[_Outcome]] = {c2u, u2c, watch}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if u2c in done or watch in done:
                    return
                if c2u in done:
                    if c2u.result() is _Outcome.EOF and not conn.stalled and conn.uwriter is not None:
                        # The client half-closed: pass it on and let the host's answers drain.
                        if conn.uwriter.can_write_eof():
                            with contextlib.suppress(OSError):
                                conn.uwriter.write_eof()
                        continue
                    return
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _watch(self, conn: _Conn) -> _Outcome:
        """Ends the connection on stop() or after idle_timeout_s with no bytes."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = conn.last_activity + self._idle_timeout_s - loop.time()
            if remaining <= 0:
                self._count("idle_closed")
                return _Outcome.CLOSED
            try:
                await asyncio.wait_for(conn.stop.wait(), remaining)
            except TimeoutError:
                continue
            return _Outcome.CLOSED

    async def _read_frame(
        self, conn: _Conn, reader: asyncio.StreamReader, *, touch: bool = True
    ) -> tuple[bytes, bytes] | _Outcome:
        """(prefix, payload) of one frame, or EOF; a bad length returns (prefix + raw bytes, b"")."""
        try:
            prefix = await reader.readexactly(2)
            if touch:
                self._touch(conn)
            (length,) = struct.unpack(">H", prefix)
            if length == 0 or length > self._max_frame_len:
                raw = b""
                with contextlib.suppress(TimeoutError, OSError):
                    raw = await asyncio.wait_for(reader.read(self._max_frame_len), BAD_FRAME_GRACE_S)
                return prefix + raw, b""
            payload = await reader.readexactly(length)
            if touch:
                self._touch(conn)
            return prefix, payload
        except asyncio.IncompleteReadError as exc:
            return _Outcome.EOF if not exc.partial else _Outcome.CLOSED
        except OSError:
            return _Outcome.CLOSED

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        try:
            writer.write(data)
            await writer.drain()
        except OSError:
            return False
        return True

    async def _pump_client(self, conn: _Conn) -> _Outcome:
        """Client -> host: whole request frames, with the request-side faults applied."""
        assert conn.uwriter is not None
        while True:
            if conn.stalled:
                try:
                    chunk = await conn.creader.read(READ_CHUNK)
                except OSError:
                    return _Outcome.CLOSED
                if not chunk:
                    return _Outcome.CLOSED
                self._touch(conn)
                continue
            got = await self._read_frame(conn, conn.creader)
            if isinstance(got, _Outcome):
                return got
            prefix, payload = got
            if not payload:  # bad length: pass it through raw, then close
                self._count("bad_frames")
                await self._write(conn.uwriter, prefix)
                return _Outcome.CLOSED
            if len(conn.pending) >= MAX_PENDING:
                return _Outcome.CLOSED
            frame = prefix + payload
            req = self._take(REQUEST_FAULTS)
            if req is not None and req[0] is Fault.STALL:
                conn.stalled = True
                self._record(Fault.STALL, conn.conn_id, len(payload), "request swallowed, connection silent")
                continue
            if req is not None and req[0] is Fault.DROP_REQUEST:
                self._record(Fault.DROP_REQUEST, conn.conn_id, len(payload), "request swallowed")
                continue
            first = _Pending()
            resp = self._take(RESPONSE_FAULTS)
            if resp is not None:
                first.fault, first.delay_s = resp[0], resp[1].delay_s
            conn.pending.append(first)
            copies = 1
            if req is not None and req[0] is Fault.DUPLICATE_REQUEST:
                conn.pending.append(_Pending(replay_of=first))
                copies = 2
                self._record(Fault.DUPLICATE_REQUEST, conn.conn_id, len(payload), "request sent twice")
            self._count("frames_to_upstream", copies)  # before the bytes can be seen
            if not await self._write(conn.uwriter, frame * copies):
                return _Outcome.CLOSED

    async def _pump_upstream(self, conn: _Conn) -> _Outcome:
        """Host -> client: whole response frames, with the response-side faults applied."""
        assert conn.ureader is not None
        while True:
            got = await self._read_frame(conn, conn.ureader, touch=not conn.stalled)
            if isinstance(got, _Outcome):
                if conn.stalled:  # a stalled connection stays open until the client gives up
                    await conn.stop.wait()
                return got
            prefix, payload = got
            if conn.stalled:
                continue
            if not payload:  # bad length from the host: pass it through raw, then close
                self._count("bad_frames")
                await self._write(conn.cwriter, prefix)
                return _Outcome.CLOSED
            if conn.pending:
                pend = conn.pending.popleft()
            else:
                pend = _Pending()
                resp = self._take(RESPONSE_FAULTS)
                if resp is not None:
                    pend.fault, pend.delay_s = resp[0], resp[1].delay_s
            if pend.replay_of is not None:
                original = pend.replay_of.response
                same = original == payload
                self._count("replays_identical" if same else "replays_differing")
                continue
            pend.response = payload
            out = prefix + payload
            if pend.fault is Fault.DROP_RESPONSE:
                self._record(Fault.DROP_RESPONSE, conn.conn_id, len(payload), "response swallowed")
                continue
            if pend.fault is Fault.CUT_MID_FRAME:
                cut = prefix + payload[: len(payload) // 2]
                self._record(
                    Fault.CUT_MID_FRAME,
                    conn.conn_id,
                    len(payload),
                    f"forwarded {len(cut)} of {len(out)} bytes, then closed",
                )
                await self._write(conn.cwriter, cut)
                return _Outcome.CLOSED
            if pend.fault is Fault.CORRUPT_RESPONSE:
                out = out[:-1] + bytes([out[-1] ^ 0xFF])
                self._record(Fault.CORRUPT_RESPONSE, conn.conn_id, len(payload), "last byte XOR 0xFF")
            if pend.fault is Fault.DELAY_RESPONSE:
                self._record(Fault.DELAY_RESPONSE, conn.conn_id, len(payload), f"held {pend.delay_s:.3f} s")
                if pend.delay_s > 0:
                    # The idle clock starts again when the held response is due.
                    conn.last_activity = asyncio.get_running_loop().time() + pend.delay_s
                    await asyncio.sleep(pend.delay_s)
            self._count("frames_to_client")
            if not await self._write(conn.cwriter, out):
                return _Outcome.CLOSED


async def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a freshly accepted connection with an RST, so the client fails at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)
