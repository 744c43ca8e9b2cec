"""Hostile traffic at the host (PROFILE §7): one request's failure is its own.

Bad frames get 30 or a close and never reach the issuer; an exception in one request's steps
rolls back that request alone while the rest of its group commits; a COMMIT whose outcome is
unknown is answered by nobody. Real TCP, both databases.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from hostile import (
    frame,
    resign,
    with_foreign_field,
    with_mti,
    with_nibble,
    with_nibbles,
    with_secondary_bitmap,
)
from hostwire import EXPIRY, MID, TMK, Answer, WireClient
from sqlalchemy import Connection, func, select

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, has_mac, pack, sign, unpack
from tillroll.issuer import bank
from tillroll.store.tables import requests
from tillroll.terminal import HostAddress, Outcome, Terminal, TerminalConfig

OPENING = 1_000_000
GATE_STAN = "999999"


def pan_of(n: int) -> str:
    return f"62220200{n:011d}"


def tid_of(n: int) -> str:
    return f"H{n:07d}"


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    yield s
    s.engine.dispose()


def register(store: HostStore, count: int) -> list[WireClient]:
    """`count` terminals, each with its own card; returns unconnected clients for them."""
    clients = []
    for n in range(count):
        add_terminal(store, tid_of(n), MID, TMK)
        add_card(store, pan_of(n), EXPIRY, "123456", OPENING)
        clients.append(WireClient(("127.0.0.1", 0), tid=tid_of(n)))
    return clients


@pytest.fixture
def host(store: HostStore) -> Iterator[HostServer]:
    with HostServer(store, clock=FakeClock(), key_lifetime_s=3600) as server:
        yield server


class Gate:
    """Holds every database worker on a gate request until `want` requests are queued behind it,
    so that they are answered in the same group commits (deterministically, not by timing)."""

    def __init__(self, host: HostServer, want: int) -> None:
        assert host._service is not None
        self.service = host._service
        self.queue: queue.Queue[object] = host._service._queue  # type: ignore[assignment]
        self.want = want
        self.entered = threading.Semaphore(0)
        self.open = False
        self.fail: tuple[str, str] | None = None  # (TID, STAN) of a request that raises in its steps
        self.socks: list[socket.socket] = []

    def __call__(self, point: str, msg: Message) -> None:
        if point != "before_commit":
            return
        if (msg.get("41"), msg.get("11")) == self.fail:
            raise RuntimeError("injected: a handler bug hit by this request only")
        if msg.get("11") != GATE_STAN:
            return
        self.entered.release()
        # Waits on the queue's own condition (notified at every put). Once open, every gate
        # opens: a gate still waiting would swallow the notifications meant for a worker's get().
        with self.queue.not_empty:
            self.queue.not_empty.wait_for(lambda: self.open or len(self.queue.queue) >= self.want, timeout=20)
            self.open = True
            self.queue.not_empty.notify_all()

    def close_behind_workers(self, address: tuple[str, int]) -> None:
        """One gate request per database worker, each held inside its worker."""
        self.service.pipeline.fault_hook = self
        gate = Message("0820", {"11": GATE_STAN, "41": "GATE0001", "42": MID, "60": "00000001301"})
        for _ in range(self.service._workers_n):
            sock = socket.create_connection(address, timeout=20)
            sock.sendall(frame(pack(gate)))
            assert self.entered.acquire(timeout=10), "the gate request did not reach a worker"
            self.socks.append(sock)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def concurrently(jobs: list[object], run: object) -> list[Answer | None]:
    def attempt(job: object) -> Answer | None:
        try:
            return run(job)  # type: ignore[operator, no-any-return]
        except (ConnectionError, OSError):
            return None  # closed unanswered

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(attempt, jobs))


def test_a_non_decimal_amount_is_refused_while_100_concurrent_sales_are_approved(
    host: HostServer, store: HostStore
) -> None:
    clients = register(store, 101)
    for c in clients:
        c.address = host.address
        assert c.sign_in().code == "00"
    bad_client, good = clients[0], clients[1:]
    assert bad_client.keys is not None
    raw = sign(bad_client.sale_message(1000, pan=pan_of(0), pin=None), bad_client.keys.mak)
    bad = resign(with_nibbles(raw, 4, "0000000010AB"), bad_client.keys.mak)  # MAC-valid

    # The bad frame is answered on the event loop (decoding touches no state) and never joins a
    # group; the 100 good sales are held until they are all queued, then answered together.
    gate = Gate(host, want=100)
    gate.close_behind_workers(host.address)
    try:
        jobs: list[object] = [("bad", bad_client, bad)] + [
            ("good", c, c.sale_message(100 + n, pan=pan_of(n + 1), pin=None)) for n, c in enumerate(good)
        ]

        def run(job: object) -> Answer:
            kind, client, msg = job  # type: ignore[misc]
            return client.exchange_raw(msg) if kind == "bad" else client.send(msg)  # type: ignore[no-any-return]

        answers = concurrently(jobs, run)
    finally:
        gate.close()
    bad_answer, good_answers = answers[0], answers[1:]
    assert bad_answer is not None and bad_answer.code == "30" and not has_mac(bad_answer.raw)
    assert [a.code if a else "closed" for a in good_answers] == ["00"] * 100
    assert all(a is not None and a.mac_ok for a in good_answers)
    with store.engine.connect() as conn:
        balances = [bank.card_balance(conn, pan_of(n)) for n in range(101)]
    assert balances == [OPENING] + [OPENING - (100 + n) for n in range(100)]
    for c in clients:
        c.close()


def _stored(store: HostStore, tid: str, stan: str) -> int:
    with store.engine.connect() as conn:
        query = select(func.count()).where(requests.c.tid == tid, requests.c.stan == stan)
        return int(conn.execute(query).scalar_one())


def test_an_exception_in_one_request_rolls_back_only_its_savepoint(
    host: HostServer, store: HostStore
) -> None:
    clients = register(store, 10)
    for c in clients:
        c.address = host.address
        c.sign_in()
    sales = [c.sale_message(500, pan=pan_of(n), pin=None) for n, c in enumerate(clients)]
    victim = 4
    gate = Gate(host, want=10)
    gate.fail = (tid_of(victim), sales[victim]["11"])
    gate.close_behind_workers(host.address)
    try:
        answers = concurrently(list(zip(clients, sales, strict=True)), lambda job: job[0].send(job[1]))
    finally:
        gate.close()
    codes = [a.code if a else "closed" for a in answers]
    assert codes == ["00"] * victim + ["96"] + ["00"] * (9 - victim)
    assert answers[victim] is not None and answers[victim].mac_ok  # the MAC had verified: signed
    assert card_balance(store, pan_of(victim)) == OPENING
    assert _stored(store, tid_of(victim), sales[victim]["11"]) == 0  # its savepoint left nothing
    # 96 meant "nothing was done": the same request again is processed afresh and approved.
    gate.fail = None
    again = clients[victim].send(sales[victim])
    assert again.code == "00"
    assert card_balance(store, pan_of(victim)) == OPENING - 500
    for c in clients:
        c.close()


def test_a_response_mti_sent_as_a_request_yields_no_keys_and_changes_no_session(
    host: HostServer, store: HostStore
) -> None:
    (client,) = register(store, 1)
    client.address = host.address
    client.sign_in()
    fake = Message("0810", {"11": client.next_stan(), "41": client.tid, "42": MID, "60": "00000001003"})
    ans = client.send(fake, mac=False)
    assert ans.code == "30" and ans.message.mti == "0810"
    assert "62" not in ans.message and not has_mac(ans.raw)
    # The session (and its MAK) is the one from the real sign-in.
    sale = client.send(client.sale_message(700, pan=pan_of(0), pin=None))
    assert sale.code == "00" and sale.mac_ok
    client.close()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def test_undefined_fields_secondary_bitmaps_bad_digits_and_foreign_mtis_are_format_errors(
    host: HostServer, store: HostStore
) -> None:
    (client,) = register(store, 1)
    client.address = host.address
    client.sign_in()
    assert client.keys is not None
    mak = client.keys.mak
    sale = sign(client.sale_message(100, pan=pan_of(0), pin=None), mak)
    track = client.sale_message(100, pan=pan_of(0), pin=None).with_fields(f2=None, f35=f"{pan_of(0)}=3012")
    track_sale = sign(track, mak)
    # TID readable (everything before field 41 is the profile's): 30, and the connection serves on.
    readable = {
        "field 43": with_foreign_field(sale, 43, b"SOMEWHERE IN ANOTHER DIALECT"),
        "secondary bitmap": with_secondary_bitmap(sale),
        "STAN A-F": resign(with_nibbles(sale, 11, "00000A"), mak),
        "track 2 nibble E": resign(with_nibble(track_sale, 35, 3, "E"), mak),
        "0210 sent as a request": with_mti(sale, "0210"),
    }
    for name, body in readable.items():
        ans = client.exchange_raw(body)
        assert ans.code == "30", name
        assert not has_mac(ans.raw), name
    # An 0100 of another profile: 30 in an 0110.
    sock = socket.create_connection(host.address, timeout=5)
    sock.sendall(frame(with_mti(sale, "0100")))
    reply = unpack(framing.parse_payload(framing.recv_payload(sock)).message, mtis=frozenset({"0110"}))
    assert reply["39"] == "30" and reply["41"] == client.tid
    sock.close()
    # Unreadable TID (an undefined field before 41, an MTI that is not digits): closed.
    for name, body in {
        "field 7": with_foreign_field(sale, 7, b"\x12\x15\x14\x30\x22"),
        "MTI 0A00": with_mti(sale, "0A00"),
    }.items():
        sock = socket.create_connection(host.address, timeout=5)
        sock.sendall(frame(body))
        assert _closed(sock), name
        sock.close()
    # None of it reached the issuer; the terminal's next sale is approved.
    assert card_balance(store, pan_of(0)) == OPENING
    assert client.send(client.sale_message(100, pan=pan_of(0), pin=None)).code == "00"
    client.close()


def _break_commit(store: HostStore, admin_url: str) -> object:
    """A commit hook that really loses the database connection at COMMIT, once.

    PostgreSQL: the group's backend is terminated from another connection (pg_terminate_backend
    waits until it is gone), so COMMIT meets a dead connection. SQLite has no server to lose:
    the hook raises the driver's own error there, as a failing disk would at COMMIT.
    """
    armed = threading.Event()
    armed.set()

    def hook(conn: Connection) -> None:
        if not armed.is_set():
            return
        armed.clear()
        if conn.dialect.name == "postgresql":
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            admin = sa.create_engine(admin_url, poolclass=sa.pool.NullPool)
            with admin.connect() as other:
                gone = other.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
                assert gone.scalar_one() is True
            admin.dispose()
        else:
            import sqlite3

            raise sa.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))

    return hook


def test_a_connection_lost_at_commit_leaves_no_answer_and_the_terminal_reverses(
    host: HostServer, store: HostStore, db_url: str, tmp_path: Path
) -> None:
    register(store, 1)
    config = TerminalConfig(
        tid=tid_of(0),
        mid=MID,
        tmk=TMK,
        host=HostAddress(*host.address),
        merchant_name="一号便利店",
        response_timeout_s=5.0,
        connect_timeout_s=2.0,
    )
    with Terminal(config, tmp_path / "pos") as term:
        assert term.sign_in().outcome is Outcome.DONE
        assert host._service is not None
        host._service.pipeline.commit_hook = _break_commit(store, db_url)  # type: ignore[assignment]
        res = term.sale(2500, pan_of(0), EXPIRY)
        # No 96 ("declined, nothing done"): no answer, so the terminal reversed the sale.
        assert res.outcome is Outcome.REVERSED, res
        assert term.pending_reversals() == []
    assert card_balance(store, pan_of(0)) == OPENING
    with store.engine.connect() as conn:
        reversals = conn.execute(select(func.count()).where(requests.c.mti == "0400")).scalar_one()
    assert reversals == 1


def test_the_commit_failure_answers_nobody_at_the_wire(
    host: HostServer, store: HostStore, db_url: str
) -> None:
    (client,) = register(store, 1)
    client.address = host.address
    client.sign_in()
    assert host._service is not None
    host._service.pipeline.commit_hook = _break_commit(store, db_url)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        client.send(client.sale_message(100, pan=pan_of(0), pin=None))
    client.close()
    client.sign_in()
    assert client.send(client.sale_message(100, pan=pan_of(0), pin=None)).code == "00"
    client.close()


def test_frames_are_answered_in_the_profile_or_closed(host: HostServer, store: HostStore) -> None:
    """The answer to a foreign message is a frame of this profile: TPDU swapped, header kept."""
    (client,) = register(store, 1)
    client.address = host.address
    sock = socket.create_connection(host.address, timeout=5)
    body = with_foreign_field(pack(Message("0200", {"11": "000001", "41": client.tid})), 59, b"\x00" * 4)
    sock.sendall(frame(body, tpdu=bytes.fromhex("6000120034")))
    reply = framing.parse_payload(framing.recv_payload(sock))
    assert reply.tpdu == bytes.fromhex("6000340012")
    assert unpack(reply.message)["39"] == "30"
    sock.close()
