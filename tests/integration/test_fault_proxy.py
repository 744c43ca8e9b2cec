"""The fault-injecting proxy over real sockets on 127.0.0.1, against a tiny answering server."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tillroll.sim.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.timeout(20)

TIMEOUT_S = 0.3  # how long a client waits for an answer that must not come
HOST_MAX_LEN = 2048


def frame(payload: bytes) -> bytes:
    return struct.pack(">H", len(payload)) + payload


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">H", recv_exactly(sock, 2))
    return recv_exactly(sock, length)


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF (the socket's timeout bounds it)."""
    buf = bytearray()
    while chunk := sock.recv(4096):
        buf += chunk
    return bytes(buf)


def closed_by_peer(sock: socket.socket) -> bool:
    """The peer closed (EOF) or reset the connection, with nothing more to read."""
    try:
        return recv_all(sock) == b""
    except ConnectionResetError:
        return True


def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


class AnswerServer:
    """Answers each frame with ``b"A" + payload`` (or with a per-server sequence number first).

    A bad length prefix (0 or above 2048, as the host's own framing check) is recorded and the
    connection closed, like the acquirer host does.
    """

    def __init__(self, *, numbered: bool = False) -> None:
        self.numbered = numbered
        self.requests: list[bytes] = []
        self.bad_prefixes: list[bytes] = []
        self.connections = 0
        self._seq = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stopping = threading.Event()
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def answer(self, payload: bytes) -> bytes:
        with self._lock:
            self._seq += 1
            seq = self._seq
        return (b"A%04d" % seq if self.numbered else b"A") + payload

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                prefix = conn.recv(2)
                if len(prefix) == 1:
                    prefix += conn.recv(1)
                if len(prefix) < 2:
                    return
                (length,) = struct.unpack(">H", prefix)
                if length == 0 or length > HOST_MAX_LEN:
                    with self._lock:
                        self.bad_prefixes.append(prefix)
                    return
                payload = recv_exactly(conn, length)
                with self._lock:
                    self.requests.append(payload)
                conn.sendall(frame(self.answer(payload)))
        except (OSError, EOFError):
            return
        finally:
            conn.close()

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._acceptor.join(timeout=2)
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout=2)


@pytest.fixture
def upstream() -> Iterator[AnswerServer]:
    server = AnswerServer()
    yield server
    server.stop()


@pytest.fixture
def proxy(upstream: AnswerServer) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.address, idle_timeout_s=5.0) as p:
        yield p


@pytest.fixture
def client(proxy: FaultProxy) -> Iterator[socket.socket]:
    sock = socket.create_connection(proxy.address, timeout=2)
    yield sock
    sock.close()


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(frame(payload))
    return recv_frame(sock)


def expect_no_answer(sock: socket.socket) -> None:
    sock.settimeout(TIMEOUT_S)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(2)


def test_passes_frames_through_both_ways(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer
) -> None:
    for i in range(5):
        assert exchange(client, b"REQ%d" % i) == b"AREQ%d" % i
    assert upstream.requests == [b"REQ%d" % i for i in range(5)]
    stats = proxy.stats
    assert (stats.frames_to_upstream, stats.frames_to_client) == (5, 5)
    assert (stats.connections_accepted, stats.connections_active) == (1, 1)
    assert proxy.events == []


def test_drop_response_host_processes_but_client_times_out(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer
) -> None:
    proxy.inject(Fault.DROP_RESPONSE)
    client.sendall(frame(b"SALE1"))
    expect_no_answer(client)
    assert upstream.requests == [b"SALE1"]
    # The swallowed answer does not leak into the next exchange.
    assert exchange(client, b"SALE2") == b"ASALE2"
    [event] = proxy.events
    assert (event.fault, event.connection_id, event.frame_length) == (Fault.DROP_RESPONSE, 1, 6)
    assert proxy.armed() == {}


def test_drop_request_host_never_sees_it(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer
) -> None:
    proxy.inject(Fault.DROP_REQUEST)
    client.sendall(frame(b"SALE1"))
    expect_no_answer(client)
    assert upstream.request_count() == 0
    assert exchange(client, b"SALE2") == b"ASALE2"
    assert upstream.requests == [b"SALE2"]
    assert [(e.fault, e.frame_length) for e in proxy.events] == [(Fault.DROP_REQUEST, 5)]


def test_delay_response_arrives_late_but_intact(proxy: FaultProxy, client: socket.socket) -> None:
    proxy.inject(Fault.DELAY_RESPONSE, delay_s=0.4)
    start = time.monotonic()
    assert exchange(client, b"SALE") == b"ASALE"
    assert time.monotonic() - start >= 0.35
    start = time.monotonic()
    assert exchange(client, b"SALE") == b"ASALE"
    assert time.monotonic() - start < 0.3
    assert [e.fault for e in proxy.events] == [Fault.DELAY_RESPONSE]


def test_cut_mid_frame_gives_truncated_frame_then_eof(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer
) -> None:
    payload = b"0123456789ABCDEFGHI"  # the answer is 20 bytes
    proxy.inject(Fault.CUT_MID_FRAME)
    client.sendall(frame(payload))
    got = recv_all(client)
    full = frame(b"A" + payload)
    assert got == full[: 2 + 10]
    assert upstream.requests == [payload]
    wait_until(lambda: proxy.stats.connections_active == 0)
    [event] = proxy.events
    assert (event.fault, event.frame_length) == (Fault.CUT_MID_FRAME, 20)


def test_duplicate_request_reaches_host_twice_client_gets_one_answer(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer
) -> None:
    proxy.inject(Fault.DUPLICATE_REQUEST)
    assert exchange(client, b"SALE1") == b"ASALE1"
    wait_until(lambda: upstream.request_count() == 2)
    assert upstream.requests == [b"SALE1", b"SALE1"]
    # The replay's answer was discarded, not handed to the next request.
    assert exchange(client, b"SALE2") == b"ASALE2"
    stats = proxy.stats
    assert (stats.frames_to_upstream, stats.frames_to_client) == (3, 2)
    assert (stats.replays_identical, stats.replays_differing) == (1, 0)
    assert [(e.fault, e.frame_length) for e in proxy.events] == [(Fault.DUPLICATE_REQUEST, 5)]


def test_duplicate_request_flags_a_host_that_answers_a_replay_differently() -> None:
    server = AnswerServer(numbered=True)
    try:
        with FaultProxy(server.address) as proxy, socket.create_connection(proxy.address, timeout=2) as c:
            proxy.inject(Fault.DUPLICATE_REQUEST)
            assert exchange(c, b"SALE") == b"A0001SALE"
            assert exchange(c, b"NEXT") == b"A0003NEXT"
            assert (proxy.stats.replays_identical, proxy.stats.replays_differing) == (0, 1)
    finally:
        server.stop()


def test_stall_swallows_everything_and_keeps_the_connection_open(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer
) -> None:
    proxy.inject(Fault.STALL)
    client.sendall(frame(b"SALE1"))
    expect_no_answer(client)  # a timeout, not EOF: the line is open but silent
    client.sendall(frame(b"SALE2"))
    expect_no_answer(client)
    assert upstream.request_count() == 0
    assert proxy.stats.connections_active == 1
    client.close()  # the client gives up
    wait_until(lambda: proxy.stats.connections_active == 0)
    # Only that connection stalls.
    with socket.create_connection(proxy.address, timeout=2) as c2:
        assert exchange(c2, b"SALE3") == b"ASALE3"
    assert [e.fault for e in proxy.events] == [Fault.STALL]


def test_corrupt_response_flips_the_last_byte(proxy: FaultProxy, client: socket.socket) -> None:
    proxy.inject(Fault.CORRUPT_RESPONSE)
    mac = bytes(range(1, 9))
    got = exchange(client, b"SALE" + mac)
    expected = b"ASALE" + mac
    assert len(got) == len(expected)
    assert got[:-1] == expected[:-1]
    assert got[-1] == expected[-1] ^ 0xFF
    assert exchange(client, b"SALE" + mac) == expected


def refused(address: tuple[str, int]) -> bool:
    """True when a connection attempt is refused or reset before any answer."""
    try:
        with socket.create_connection(address, timeout=2) as s:
            try:
                s.sendall(frame(b"PING"))
                return s.recv(16) == b""
            except ConnectionError:
                return True
    except ConnectionError:
        return True


def test_refuse_resets_the_next_connection_attempts_only(proxy: FaultProxy, upstream: AnswerServer) -> None:
    proxy.inject(Fault.REFUSE, count=2)
    assert refused(proxy.address)
    assert refused(proxy.address)
    assert not refused(proxy.address)
    assert upstream.request_count() == 1  # only the third PING got through
    assert proxy.stats.connections_refused == 2
    events = proxy.events
    assert [(e.fault, e.frame_length) for e in events] == [(Fault.REFUSE, None)] * 2
    assert events[0].connection_id != events[1].connection_id


def test_down_refuses_until_up(proxy: FaultProxy, upstream: AnswerServer) -> None:
    proxy.down()
    for _ in range(3):
        assert refused(proxy.address)
    assert upstream.connections == 0
    proxy.up()
    with socket.create_connection(proxy.address, timeout=2) as c:
        assert exchange(c, b"SALE") == b"ASALE"


def test_down_can_close_existing_connections(proxy: FaultProxy, client: socket.socket) -> None:
    assert exchange(client, b"SALE") == b"ASALE"
    proxy.down(close_existing=True)
    assert recv_all(client) == b""
    assert refused(proxy.address)
    proxy.clear()  # clear() also brings the line up
    assert not refused(proxy.address)


def test_count_and_until_clear(proxy: FaultProxy, client: socket.socket, upstream: AnswerServer) -> None:
    proxy.inject(Fault.CORRUPT_RESPONSE, count=2)
    assert exchange(client, b"R1") != b"AR1"
    assert exchange(client, b"R2") != b"AR2"
    assert exchange(client, b"R3") == b"AR3"
    proxy.inject(Fault.CORRUPT_RESPONSE, count=-1)
    for i in range(4):
        assert exchange(client, b"X%d" % i) != b"AX%d" % i
    assert proxy.armed() == {Fault.CORRUPT_RESPONSE: -1}
    proxy.clear()
    assert exchange(client, b"R4") == b"AR4"
    assert len(proxy.events) == 6


def test_request_and_response_faults_combine(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer
) -> None:
    proxy.inject(Fault.DUPLICATE_REQUEST)
    proxy.inject(Fault.DROP_RESPONSE)
    client.sendall(frame(b"SALE"))
    expect_no_answer(client)
    assert upstream.requests == [b"SALE", b"SALE"]
    assert exchange(client, b"NEXT") == b"ANEXT"
    assert {e.fault for e in proxy.events} == {Fault.DUPLICATE_REQUEST, Fault.DROP_RESPONSE}


@pytest.mark.parametrize("prefix", [b"\x00\x00", struct.pack(">H", 4097)])
def test_bad_length_is_passed_through_raw_then_closed(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer, prefix: bytes
) -> None:
    client.sendall(prefix + b"junk")
    assert recv_all(client) == b""
    wait_until(lambda: len(upstream.bad_prefixes) == 1)
    assert upstream.bad_prefixes == [prefix]
    assert proxy.stats.bad_frames == 1


def test_length_above_the_hosts_limit_but_within_the_proxys_is_forwarded(
    proxy: FaultProxy, client: socket.socket, upstream: AnswerServer
) -> None:
    client.sendall(frame(b"x" * 3000))
    assert recv_all(client) == b""  # the host closed it; the proxy followed
    wait_until(lambda: len(upstream.bad_prefixes) == 1)
    assert proxy.stats.bad_frames == 0


def test_client_half_close_still_gets_its_answer(proxy: FaultProxy, client: socket.socket) -> None:
    client.sendall(frame(b"SALE"))
    client.shutdown(socket.SHUT_WR)
    assert recv_all(client) == frame(b"ASALE")


def test_many_concurrent_connections(proxy: FaultProxy, upstream: AnswerServer) -> None:
    def session(n: int) -> list[bytes]:
        with socket.create_connection(proxy.address, timeout=5) as c:
            return [exchange(c, b"T%02dR%d" % (n, i)) for i in range(5)]

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(session, range(48)))
    for n, answers in enumerate(results):
        assert answers == [b"AT%02dR%d" % (n, i) for i in range(5)]
    stats = proxy.stats
    assert (stats.connections_accepted, stats.frames_to_upstream, stats.frames_to_client) == (48, 240, 240)
    assert upstream.request_count() == 240
    wait_until(lambda: proxy.stats.connections_active == 0)


def test_max_connections_resets_the_extra_ones(upstream: AnswerServer) -> None:
    with (
        FaultProxy(upstream.address, max_connections=2) as proxy,
        socket.create_connection(proxy.address, timeout=2) as a,
        socket.create_connection(proxy.address, timeout=2) as b,
    ):
        assert exchange(a, b"A") == b"AA"
        assert exchange(b, b"B") == b"AB"
        assert refused(proxy.address)
        assert proxy.stats.connections_rejected == 1
        a.close()
        wait_until(lambda: proxy.stats.connections_active == 1)
        assert not refused(proxy.address)


def test_idle_connections_are_closed(upstream: AnswerServer) -> None:
    with (
        FaultProxy(upstream.address, idle_timeout_s=0.3) as proxy,
        socket.create_connection(proxy.address, timeout=2) as c,
    ):
        assert exchange(c, b"SALE") == b"ASALE"
        start = time.monotonic()
        assert recv_all(c) == b""
        assert 0.2 <= time.monotonic() - start < 1.5
        assert proxy.stats.idle_closed == 1


def test_upstream_unreachable_closes_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead = placeholder.getsockname()[:2]
    with FaultProxy(dead) as proxy, socket.create_connection(proxy.address, timeout=2) as c:
        c.sendall(frame(b"SALE"))
        assert closed_by_peer(c)
        wait_until(lambda: proxy.stats.upstream_connect_failures == 1)


def test_stop_is_prompt_and_closes_everything(upstream: AnswerServer) -> None:
    proxy = FaultProxy(upstream.address)
    proxy.start()
    address = proxy.address
    stalled = socket.create_connection(address, timeout=2)
    delayed = socket.create_connection(address, timeout=2)
    idle = socket.create_connection(address, timeout=2)
    try:
        proxy.inject(Fault.STALL)
        stalled.sendall(frame(b"S1"))
        wait_until(lambda: len(proxy.events) == 1)
        proxy.inject(Fault.DELAY_RESPONSE, delay_s=30)
        delayed.sendall(frame(b"S2"))
        wait_until(lambda: len(proxy.events) == 2)
        wait_until(lambda: proxy.stats.connections_active == 3)
        start = time.monotonic()
        proxy.stop()
        assert time.monotonic() - start < 2.0
        for sock in (stalled, delayed, idle):
            assert closed_by_peer(sock)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=2).close()
        proxy.stop()  # idempotent
    finally:
        for sock in (stalled, delayed, idle):
            sock.close()


def test_inject_rejects_nonsense(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.inject(Fault.DROP_REQUEST, count=0)
    with pytest.raises(ValueError):
        proxy.inject(Fault.DELAY_RESPONSE, delay_s=-1)
    with pytest.raises(ValueError):
        proxy.inject(Fault.DELAY_RESPONSE, delay_s=float("inf"))
    assert proxy.armed() == {}


def test_address_needs_start(upstream: AnswerServer) -> None:
    proxy = FaultProxy(upstream.address)
    with pytest.raises(RuntimeError):
        _ = proxy.address
    proxy.stop()  # harmless before start


def test_start_fails_loudly_on_a_busy_port(upstream: AnswerServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        proxy = FaultProxy(upstream.address, port=busy.getsockname()[1])
        with pytest.raises(OSError):
            proxy.start()
        proxy.stop()
