"""The TCP host link: framing, connection reuse, timeouts, the backup line (local sockets only)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tillroll.iso8583 import framing
from tillroll.terminal.config import (
    ConfigError,
    HostAddress,
    TerminalConfig,
    load_config,
    parse_tmk,
    save_config,
)
from tillroll.terminal.hostlink import LinkStatus, TcpHostLink

BODY = bytes.fromhex("0800") + bytes(8)  # an MTI and an empty bitmap: the link does not parse it


class EchoHost:
    """Answers every frame with the same payload (addresses swapped), or stays silent."""

    def __init__(self, *, silent: bool = False, close_after: int | None = None) -> None:
        self.silent = silent
        self.close_after = close_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.connections = 0
        self.frames = 0
        self.closed = threading.Event()  # set each time the host has closed a connection
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                served = 0
                try:
                    while True:
                        payload = framing.recv_payload(conn)
                        self.frames += 1
                        served += 1
                        if self.silent:
                            continue
                        frame = framing.parse_payload(payload)
                        reply = framing.Frame(framing.reply_tpdu(frame.tpdu), frame.header, frame.message)
                        conn.sendall(reply.encode())
                        if self.close_after is not None and served >= self.close_after:
                            break
                except (OSError, ConnectionError):
                    pass
            self.closed.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoHost]:
    h = EchoHost()
    yield h
    h.close()


def closed_port() -> tuple[str, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1", int(s.getsockname()[1])


def test_one_connection_carries_many_pairs(echo: EchoHost) -> None:
    link = TcpHostLink(echo.address, response_timeout_s=2)
    for _ in range(3):
        res = link.exchange(BODY)
        assert res.status is LinkStatus.ANSWERED and res.frame is not None and res.frame.message == BODY
    assert echo.connections == 1
    link.close()


def test_a_connection_the_host_closed_is_replaced_before_use() -> None:
    h = EchoHost(close_after=1)
    try:
        link = TcpHostLink(h.address, response_timeout_s=2)
        assert link.exchange(BODY).status is LinkStatus.ANSWERED
        assert h.closed.wait(timeout=5)  # the host's close has gone out
        assert link.exchange(BODY).status is LinkStatus.ANSWERED
        assert h.connections == 2
        link.close()
    finally:
        h.close()


def test_no_response_in_time_is_no_answer() -> None:
    h = EchoHost(silent=True)
    try:
        link = TcpHostLink(h.address, response_timeout_s=0.3)
        res = link.exchange(BODY)
        assert res.status is LinkStatus.NO_ANSWER and res.detail == "TimeoutError"
        link.close()
    finally:
        h.close()


def test_unreachable_primary_uses_the_backup_line(echo: EchoHost) -> None:
    link = TcpHostLink(closed_port(), echo.address, connect_timeout_s=1, response_timeout_s=2)
    res = link.exchange(BODY)
    assert res.status is LinkStatus.ANSWERED and res.line == "{}:{}".format(*echo.address)
    link.close()


def test_no_line_at_all_is_not_sent() -> None:
    link = TcpHostLink(closed_port(), closed_port(), connect_timeout_s=1)
    assert link.exchange(BODY).status is LinkStatus.NOT_SENT


def test_a_bad_length_prefix_is_no_answer() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            framing.recv_payload(conn)
            conn.sendall(struct.pack(">H", 5) + b"12345")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    link = TcpHostLink(listener.getsockname()[:2], response_timeout_s=2)
    assert link.exchange(BODY).status is LinkStatus.NO_ANSWER
    link.close()
    t.join(timeout=5)
    listener.close()


# --- configuration ---------------------------------------------------------------------------


def test_config_round_trip_keeps_the_tmk_sealed(tmp_path: Path) -> None:
    tmk = parse_tmk("70F2A84CCBC2AE8625CBB0F2C22AB923")
    cfg = TerminalConfig(
        tid="10000001",
        mid="898310048990001",
        tmk=tmk,
        host=HostAddress.parse("127.0.0.1:5000"),
        backup_host=HostAddress.parse("127.0.0.2:5001"),
        printer_url="tcp://127.0.0.1:9100",
    )
    path = save_config(tmp_path, cfg)
    text = path.read_text().lower()
    assert tmk.hex() not in text and "tmk_sealed" in text
    assert (tmp_path / "device.key").stat().st_mode & 0o777 == 0o600
    back = load_config(tmp_path)
    assert back == cfg and back.tmk == tmk


@pytest.mark.parametrize("text", ["localhost", "localhost:", ":5000", "h:0", "h:65536", "h:port"])
def test_host_address_must_be_host_colon_port(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        HostAddress.parse(text)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"tid": "1234567"}, "terminal id"),
        ({"mid": "x"}, "merchant id"),
        ({"response_timeout_s": 0}, "response_timeout_s"),
        ({"reversal_retries_max": 0}, "reversal_retries_max"),
        ({"sign_in_margin_s": 86_400}, "sign_in_margin_s"),
        ({"operator": "1"}, "operator"),
    ],
)
def test_config_is_validated(changes: dict[str, object], says: str) -> None:
    base: dict[str, object] = {
        "tid": "10000001",
        "mid": "898310048990001",
        "tmk": bytes(16),
        "host": HostAddress("127.0.0.1", 5000),
    }
    base.update(changes)
    with pytest.raises(ConfigError, match=says):
        TerminalConfig(**base)  # type: ignore[arg-type]


def test_tmk_must_be_32_hex_digits() -> None:
    with pytest.raises(ConfigError, match="32 hex digits"):
        parse_tmk("ABC")
