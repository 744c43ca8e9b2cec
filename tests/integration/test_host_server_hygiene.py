"""The server's own bounds: refused connections leave nothing behind, a request that is not
answered in time closes its connection, a database worker that dies is restarted, and a host
whose workers keep dying stops (closes its port) instead of accepting and answering nothing."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from hostile import frame
from hostwire import MID, TID, TMK, WireClient

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import add_merchant, add_terminal
from tillroll.host.config import HostConfig
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.messages import Message, pack

ECHO_STAN = "000777"


class WorkerKilled(BaseException):
    """Not an Exception: nothing in the pipeline may contain it, so the worker thread ends."""


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    yield s
    s.engine.dispose()


def echo(address: tuple[str, int], stan: str = "000001") -> str:
    client = WireClient(address)
    try:
        msg = Message("0820", {"11": stan, "41": TID, "42": MID, "60": "00000001301"})
        return client.send(msg, mac=False).code
    finally:
        client.close()


def closed_unanswered(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def run_on_host_loop(host: HostServer, coro_fn: object) -> object:
    assert host._loop is not None
    return asyncio.run_coroutine_threadsafe(coro_fn(), host._loop).result(timeout=10)  # type: ignore[operator]


def test_connections_over_the_bound_are_refused_and_leave_no_task_behind(store: HostStore) -> None:
    with HostServer(store, clock=FakeClock(), config=HostConfig(connections_max=2)) as host:
        service = host._service
        assert service is not None
        kept = [WireClient(host.address) for _ in range(2)]
        for n, client in enumerate(kept):
            assert client.send(Message("0820", {"11": f"00000{n + 1}", "41": TID, "42": MID,
                                                "60": "00000001301"}), mac=False).code == "00"  # fmt: skip
        refused = [socket.create_connection(host.address, timeout=5) for _ in range(20)]
        for sock in refused:
            assert closed_unanswered(sock)
            sock.close()

        async def serving_tasks() -> int:
            async def settled() -> None:  # the refused connections' tasks finish their close
                while (
                    service._connections != 2
                    or sum("_serve" in repr(t.get_coro()) for t in asyncio.all_tasks()) != 2
                ):
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(settled(), timeout=5)
            return len(service._tasks)

        assert run_on_host_loop(host, serving_tasks) == 2
        for client in kept:
            client.close()
        assert echo(host.address) == "00"


def test_a_request_not_answered_in_time_closes_its_connection(store: HostStore) -> None:
    release = threading.Event()

    def stall(point: str, msg: Message) -> None:
        if point == "before_commit" and msg.get("11") == ECHO_STAN:
            release.wait(timeout=10)

    config = HostConfig(request_timeout_s=0.5)
    with HostServer(store, clock=FakeClock(), config=config, fault_hook=stall) as host:
        sock = socket.create_connection(host.address, timeout=5)
        sock.sendall(
            frame(pack(Message("0820", {"11": ECHO_STAN, "41": TID, "42": MID, "60": "00000001301"})))
        )
        assert closed_unanswered(sock)  # after 0.5 s, long before the socket's own 5 s
        sock.close()
        release.set()
        assert echo(host.address) == "00"


def test_a_database_worker_that_dies_is_restarted(store: HostStore, caplog: pytest.LogCaptureFixture) -> None:
    kills = [1]

    def kill_once(point: str, msg: Message) -> None:
        if point == "before_commit" and msg.get("11") == ECHO_STAN and kills:
            kills.pop()
            raise WorkerKilled

    with HostServer(store, clock=FakeClock(), fault_hook=kill_once) as host:
        sock = socket.create_connection(host.address, timeout=5)
        sock.sendall(
            frame(pack(Message("0820", {"11": ECHO_STAN, "41": TID, "42": MID, "60": "00000001301"})))
        )
        assert closed_unanswered(sock)  # its group's outcome is unknown: no answer
        sock.close()
        assert echo(host.address) == "00"  # a new worker answers
        assert host.failure is None
    assert any("database worker 0 died: WorkerKilled" in r.getMessage() for r in caplog.records)


def test_a_host_whose_workers_keep_dying_stops_and_closes_its_port(store: HostStore) -> None:
    def kill(point: str, msg: Message) -> None:
        if point == "before_commit" and msg.get("11") == ECHO_STAN:
            raise WorkerKilled

    config = HostConfig(worker_restarts_max=1)
    host = HostServer(store, clock=FakeClock(), config=config, fault_hook=kill).start()
    try:
        for _ in range(2):
            sock = socket.create_connection(host.address, timeout=5)
            sock.sendall(frame(pack(Message("0820", {"11": ECHO_STAN, "41": TID, "42": MID,
                                                     "60": "00000001301"}))))  # fmt: skip
            assert closed_unanswered(sock)
            sock.close()
        assert host._thread is not None
        host._thread.join(timeout=10)  # the host gave up by itself
        assert not host._thread.is_alive()
        assert host.failure is not None and "worker deaths" in str(host.failure)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(host.address, timeout=2).close()
    finally:
        host.stop()
