"""The acquirer host's asyncio TCP server.

Each connection carries request/response pairs one at a time, in order. A bad frame closes only
its own connection; connections, frame size and idle time are bounded. Requests go to database
worker threads through a bounded queue; a worker takes whatever requests are waiting (up to
`batch_max`) and answers them with one group commit, so the event loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from tillroll.clock import Clock, SystemClock
from tillroll.host.config import HostConfig
from tillroll.host.pipeline import FaultHook, HostPipeline, Reply
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.errors import FramingError

log = logging.getLogger("tillroll.host")


@dataclass(frozen=True)
class _Work:
    payload: bytes
    future: asyncio.Future[Reply]


class HostService:
    """The server proper: runs inside an event loop."""

    def __init__(
        self,
        store: HostStore,
        config: HostConfig,
        clock: Clock | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        self.config = config
        self.pipeline = HostPipeline(
            store.engine, store.keystore, clock or SystemClock(), config, fault_hook=fault_hook
        )
        # SQLite has one writer at a time: more workers would only queue on its lock.
        self._workers_n = 1 if store.url.startswith("sqlite") else config.db_workers
        self._queue: queue.Queue[_Work | None] = queue.Queue(maxsize=config.queue_max)
        self._workers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        for n in range(self._workers_n):
            worker = threading.Thread(target=self._work, name=f"host-db-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._server = await asyncio.start_server(self._serve, host, port, limit=4096, backlog=1024)
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=10)

    def _work(self) -> None:
        """Worker thread: drain waiting requests into one batch, answer them, repeat."""
        batch_max = self.config.batch_max
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                replies = self.pipeline.handle_batch([w.payload for w in batch])
            except Exception as exc:  # a bug: fail these requests, keep serving
                log.exception("pipeline failed on a batch of %d", len(batch))
                for w in batch:
                    self._resolve(w.future, exc)
                continue
            for w, reply in zip(batch, replies, strict=True):
                self._resolve(w.future, reply)

    def _resolve(self, future: asyncio.Future[Reply], outcome: Reply | BaseException) -> None:
        def _set() -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(_set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        if self._connections >= self.config.connections_max:
            writer.close()
            return
        self._connections += 1
        peer = writer.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    payload = await asyncio.wait_for(
                        framing.read_payload(reader, self.config.frame_max_len),
                        timeout=self.config.idle_timeout_s,
                    )
                except FramingError as exc:
                    log.warning("closing %s: %s", peer, exc)
                    return
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                future: asyncio.Future[Reply] = loop.create_future()
                work = _Work(payload, future)
                try:
                    self._queue.put_nowait(work)
                except queue.Full:  # overloaded: wait a bounded time, then give this connection up
                    try:
                        await asyncio.to_thread(self._queue.put, work, True, self.config.queue_wait_s)
                    except queue.Full:
                        log.warning(
                            "request queue full for %.1f s: closing %s", self.config.queue_wait_s, peer
                        )
                        return
                reply = await future
                if reply.frame is not None:
                    writer.write(reply.frame)
                    await writer.drain()
                if reply.close:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        except Exception:  # a bug must not take the other connections down
            log.exception("connection %s failed", peer)
        finally:
            self._connections -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1)


class HostServer:
    """The host in a background thread: for tests, the demo and benchmarks."""

    def __init__(
        self,
        db_url: str | HostStore | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        key_lifetime_s: int = 86_400,
        *,
        clock: Clock | None = None,
        config: HostConfig | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        self.fault_hook = fault_hook  # tests and the demo: make the store fail mid-request
        self.store = db_url if isinstance(db_url, HostStore) else open_store(db_url)
        self.config = config or HostConfig(key_lifetime_s=key_lifetime_s)
        self.clock = clock
        self._listen = listen
        self._loop: asyncio.AbstractEventLoop | None = None
        self._service: HostService | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.address: tuple[str, int] = listen

    def start(self) -> HostServer:
        self._thread = threading.Thread(target=self._run, name="tillroll-host", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("host did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"host failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        service = HostService(self.store, self.config, self.clock, self.fault_hook)
        self._service = service
        try:
            self.address = await service.start(*self._listen)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await service.close()

    def stop(self) -> None:
        loop, thread, stopping = self._loop, self._thread, self._stopping
        if loop is None or thread is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> HostServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve(store: HostStore, config: HostConfig, host: str, port: int) -> None:
    """Run the host in the foreground until cancelled (`tillroll host serve`)."""
    service = HostService(store, config)
    address = await service.start(host, port)
    log.info("tillroll host listening on %s:%d", *address)
    try:
        await service.serve_forever()
    finally:
        await service.close()
