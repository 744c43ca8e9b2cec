"""`tillroll host serve --db-process`: the groups' database work in a second process.

The serving process decodes and signs; the database process decides, books and commits. What the
terminal sees must not change: the same answers, the same replays, a bad frame among good ones
answered on its own; and when the database process dies, the groups it held are closed unanswered
(their outcome is unknown), a new one takes the next group, and no money is lost or made.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostprocs import HostProcess, sqlite_host_db, start_host
from hostwire import CARD_BALANCE_MINOR, PAN, WireClient
from typer.testing import CliRunner

from tillroll.host.admin import card_balance
from tillroll.host.boundary import Answer, GroupRequest
from tillroll.host.cli import app, usable_cores
from tillroll.host.db_process import (
    LENGTH,
    LINK_MESSAGE_MAX_BYTES,
    LinkLost,
    RemoteError,
    decode_answers,
    decode_group,
    encode_answers,
    encode_group,
    recv_message,
    send_message,
)
from tillroll.host.report import ledger_problems
from tillroll.host.store import open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message

LISTENING = r"tillroll host listening on ([\d.]+):(\d+)$"
DB_READY = r"database process (\d+) ready"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return sqlite_host_db(tmp_path, monkeypatch)


@pytest.fixture
def served(db: str) -> Iterator[tuple[HostProcess, tuple[str, int]]]:
    host = start_host(["serve", "--db-process", "--listen", "127.0.0.1:0", "--db", db], dict(os.environ))
    try:
        m = host.wait_for(LISTENING)
    except BaseException:
        host.stop()
        raise
    yield host, (m.group(1), int(m.group(2)))
    host.stop()


def ledger_clean(db: str) -> list[str]:
    store = open_store(db, migrate_schema=False)
    try:
        with store.engine.connect() as conn:
            return ledger_problems(conn)
    finally:
        store.engine.dispose()


def test_sales_refusals_and_replays_are_the_in_process_hosts(
    served: tuple[HostProcess, tuple[str, int]], db: str
) -> None:
    _host, address = served
    client = WireClient(address)
    try:
        assert client.sign_in().code == "00"
        sale = client.sale_message(1_234, pin=None)
        first = client.send(sale)
        assert first.code == "00" and first.mac_ok
        assert first.message["2"] == PAN  # echoed in full to the terminal, masked only at rest
        assert {"37", "38", "12", "13", "15"} <= first.message.fields.keys()
        again = client.send(sale)  # the same request again: the stored answer, not a second debit
        assert again.message.fields == first.message.fields
        over = client.send(client.sale_message(CARD_BALANCE_MINOR * 10, pin=None))
        assert over.code == "51"
        wrong_pin = client.send(client.sale_message(100, pin="000000"))
        assert wrong_pin.code == "55"
    finally:
        client.close()
    assert card_balance(db, PAN) == CARD_BALANCE_MINOR - 1_234
    assert ledger_clean(db) == []


def test_a_bad_frame_among_good_ones_is_answered_alone(
    served: tuple[HostProcess, tuple[str, int]], db: str
) -> None:
    _host, address = served
    good = WireClient(address)
    bad = socket.create_connection(address, timeout=5)
    try:
        assert good.sign_in().code == "00"
        # A response MTI sent as a request: 30, decided in the serving process, no database work.
        body = bytes.fromhex("0810") + bytes(8)
        bad.sendall(framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, body).encode())
        codes = [good.send(good.sale_message(100 + k, pin=None)).code for k in range(3)]
        assert codes == ["00"] * 3
        bad.settimeout(5)
        assert bad.recv(2048) == b""  # MTI without a TID: closed (PROFILE §7)
    finally:
        good.close()
        bad.close()
    assert card_balance(db, PAN) == CARD_BALANCE_MINOR - (100 + 101 + 102)


def test_a_killed_database_process_is_replaced_and_no_money_is_lost(
    served: tuple[HostProcess, tuple[str, int]], db: str
) -> None:
    host, address = served
    first_pid = int(host.wait_for(DB_READY).group(1))
    client = WireClient(address)
    try:
        assert client.sign_in().code == "00"
        assert client.send(client.sale_message(500, pin=None)).code == "00"
        seen = len(host.lines)
        os.kill(first_pid, signal.SIGKILL)
        host.wait_for(r"database process link lost", after=seen)
        # The connection that had no request in flight still works, on the new process.
        answers = [client.send(client.sale_message(200 + k, pin=None)).code for k in range(3)]
        assert answers == ["00"] * 3
        second_pid = int(host.wait_for(DB_READY, after=seen).group(1))
        assert second_pid != first_pid
    finally:
        client.close()
    assert card_balance(db, PAN) == CARD_BALANCE_MINOR - 500 - sum(200 + k for k in range(3))
    assert ledger_clean(db) == []


def test_many_terminals_at_once_every_sale_booked_once(
    db: str, served: tuple[HostProcess, tuple[str, int]]
) -> None:
    """Groups of several requests travel to the database process (two in flight): each sale is
    answered once, and the card's balance is the sum of what was approved."""
    _host, address = served
    clients = [WireClient(address) for _ in range(6)]
    # One terminal, one card: six connections sharing one session signed in once.
    assert clients[0].sign_in().code == "00"
    for c in clients[1:]:
        c.keys, c.batch = clients[0].keys, clients[0].batch
    lock = threading.Lock()
    stans = iter(range(100, 1_000))
    approved: list[int] = []

    def sell(c: WireClient) -> None:
        for k in range(8):
            with lock:
                c.stan = next(stans)
            amount = 10 + k
            if c.send(c.sale_message(amount, pin=None)).code == "00":
                with lock:
                    approved.append(amount)

    threads = [threading.Thread(target=sell, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    assert len(approved) == 48
    assert card_balance(db, PAN) == CARD_BALANCE_MINOR - sum(approved)
    assert ledger_clean(db) == []


def test_the_money_trail_through_the_database_process(
    served: tuple[HostProcess, tuple[str, int]], db: str
) -> None:
    """Void, refund, reversal and settlement are the general steps, run in the database process:
    each answered as by one process, the ledger sound, the batch closed by the settlement."""
    _host, address = served
    client = WireClient(address)
    try:
        assert client.sign_in().code == "00"
        sale1 = client.sale_message(10_000, pin=None)
        ans1 = client.send(sale1)
        sale2 = client.sale_message(5_000, pin=None)
        ans2 = client.send(sale2)
        sale3 = client.sale_message(700, pin=None)
        assert [a.code for a in (ans1, ans2, client.send(sale3))] == ["00", "00", "00"]
        assert client.send(client.void_message(sale2, ans2.message)).code == "00"
        assert client.send(client.refund_message(sale1, ans1.message, 1_000)).code == "00"
        assert client.send(client.reversal_of(sale3)).code == "00"  # its answer "lost": reversed
        settled = client.send(client.settle_message(10_000, 1, 1_000, 1))
        assert settled.code == "00" and settled.mac_ok
        assert settled.message["48"][:31] == f"{10_000:012d}001{1_000:012d}0011"
        assert client.send(client.sale_message(100, pin=None)).code == "77"  # the batch is closed
    finally:
        client.close()
    assert card_balance(db, PAN) == CARD_BALANCE_MINOR - 10_000 + 1_000
    assert ledger_clean(db) == []


def test_a_database_process_whose_serving_process_is_killed_stops_by_itself(
    served: tuple[HostProcess, tuple[str, int]],
) -> None:
    host, _address = served
    db_pid = int(host.wait_for(DB_READY).group(1))
    host.proc.kill()
    host.proc.wait(timeout=10)
    try:
        fd = os.pidfd_open(db_pid)
    except ProcessLookupError:
        return  # gone (and reaped) already
    try:
        readable, _, _ = select.select([fd], [], [], 20.0)
    finally:
        os.close(fd)
    assert readable, "the database process kept running without its serving process"


@pytest.mark.skipif(usable_cores() < 2, reason="the default takes a second core")
def test_on_sqlite_with_two_cores_the_database_process_is_the_default(db: str) -> None:
    for flags, second in (([], True), (["--one-process"], False)):
        host = start_host(["serve", *flags, "--listen", "127.0.0.1:0", "--db", db], dict(os.environ))
        try:
            m = host.wait_for(LISTENING)
            client = WireClient((m.group(1), int(m.group(2))))
            try:
                assert client.sign_in().code == "00"
                assert client.send(client.sale_message(100, pin=None)).code == "00"
            finally:
                client.close()
        finally:
            host.stop()
        started = [line for line in host.lines if re.search(DB_READY, line)]
        assert bool(started) is second, (flags, host.lines)
    assert ledger_clean(db) == []


def test_workers_and_db_process_go_one_at_a_time(db: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--db-process", "--workers", "2", "--db", db])
    assert result.exit_code != 0
    assert "--workers and --db-process go one at a time" in result.output


# --- the link ------------------------------------------------------------------------------------


def test_a_group_and_its_answers_cross_the_link_whole() -> None:
    group = [
        GroupRequest(
            0,
            framing.Frame(b"\x60\x00\x01\x00\x00", b"\x60\x31\x00", b"\x02\x00raw"),
            Message("0200", {"11": "000001"}),
        ),
        GroupRequest(
            3,
            framing.Frame(b"\x60\x00\x01\x00\x00", b"\x60\x31\x00", b"\x04\x00raw"),
            Message("0400", {"11": "000002"}),
        ),
    ]
    a, b = socket.socketpair()
    with a, b:
        send_message(a, ("group", 7, encode_group(group)))
        kind, gid, items = recv_message(b)
        assert (kind, gid) == ("group", 7)
        there = decode_group(items)
        assert [(r.index, r.frame, r.msg) for r in there] == [(r.index, r.frame, r.msg) for r in group]
        there[1].failed("request rolled back, answering 96", ValueError("boom"))
        answers = {
            0: Answer(Message("0210", {"39": "00"}), b"k" * 16),
            3: Answer(Message("0410", {"39": "96"}), None, True),
        }
        send_message(b, ("answers", 7, encode_answers(there, answers)))
        _, _, back = recv_message(a)
    found = decode_answers(group, back)
    assert found[0] == answers[0] and found[3] == answers[3]
    assert group[0].incident is None and group[1].incident == "request rolled back, answering 96"
    assert isinstance(group[1].error, RemoteError) and "boom" in str(group[1].error)


def test_a_request_without_an_answer_stays_without_one() -> None:
    group = [GroupRequest(0, framing.Frame(b"t", b"h", b"m"), Message("0200", {}))]
    assert decode_answers(group, encode_answers(group, {})) == {}
    with pytest.raises(LinkLost, match="2 answers for a group of 1"):
        decode_answers(group, encode_answers(group, {}) * 2)


def test_the_link_refuses_what_is_not_one_of_its_messages() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(LENGTH.pack(LINK_MESSAGE_MAX_BYTES + 1))
        with pytest.raises(LinkLost, match="at most"):
            recv_message(b)
    a, b = socket.socketpair()
    with a, b:
        send_message(a, ())  # an empty tuple
        with pytest.raises(LinkLost, match="not a tuple"):
            recv_message(b)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(LENGTH.pack(10) + b"abc")
        a.close()
        with pytest.raises(LinkLost, match="closed"):
            recv_message(b)
