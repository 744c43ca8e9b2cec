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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tillroll.clock import Clock, SystemClock
from tillroll.host.boundary import FaultHook, Reply
from tillroll.host.config import HostConfig
from tillroll.host.offenders import OffenderLog, describe
from tillroll.host.pipeline import HostPipeline
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.errors import FramingError

log = logging.getLogger("tillroll.host")


@dataclass(frozen=True)
class _Work:
    payload: bytes
    future: asyncio.Future[Reply]


class HostFailed(RuntimeError):
    """The host cannot serve any more (its database workers keep dying): it stops, non-zero."""


_NO_ANSWER = Reply(None, close=True)
WORKER_DEATHS_WINDOW_S = 60.0


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
        self._workers: dict[int, threading.Thread] = {}
        self._worker_deaths: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._failure: asyncio.Future[HostFailed] | None = None
        self._closing = False
        # Log throttles count real seconds whatever clock the business logic runs on.
        interval = config.bad_input_log_interval_s
        self.offenders = OffenderLog(log, time.monotonic, interval_s=interval)
        self.overload = OffenderLog(log, time.monotonic, interval_s=interval, what="overload")

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        self._failure = self._loop.create_future()
        for n in range(self._workers_n):
            self._start_worker(n)
        self._server = await asyncio.start_server(self._serve, host, port, limit=4096, backlog=1024)
        self._housekeeping = asyncio.create_task(self._flush_logs())
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def failed(self) -> asyncio.Future[HostFailed]:
        """Resolves when the host has given up (see `HostFailed`)."""
        assert self._failure is not None, "start() first"
        return self._failure

    async def serve_forever(self) -> None:
        """Serve until cancelled; raises HostFailed when the host can no longer answer."""
        assert self._server is not None
        async with self._server:
            serving = asyncio.ensure_future(self._server.serve_forever())
            waiters: set[asyncio.Future[Any]] = {serving, self.failed}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if self.failed.done():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
                raise self.failed.result()
            await serving

    async def close(self) -> None:
        self._closing = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        for _ in self._workers:
            self._queue.put(None)
        for worker in list(self._workers.values()):
            await asyncio.to_thread(worker.join, 10)
        self.offenders.close()
        self.overload.close()

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(self.config.bad_input_log_interval_s)
            self.offenders.flush()
            self.overload.flush()

    # --- database workers ------------------------------------------------------------------

    def _start_worker(self, n: int) -> None:
        worker = threading.Thread(target=self._work_guarded, args=(n,), name=f"host-db-{n}", daemon=True)
        self._workers[n] = worker
        worker.start()

    def _work_guarded(self, n: int) -> None:
        try:
            self._work()
        except BaseException as exc:  # the thread is ending: have the loop restart it
            log.error("database worker %d died: %s", n, describe(exc))
            self._call_soon(self._worker_died, n)

    def _worker_died(self, n: int) -> None:
        """On the loop: restart the worker, or give up when workers keep dying."""
        if self._closing or self._failure is None or self._failure.done():
            return
        now = time.monotonic()
        self._worker_deaths = [t for t in self._worker_deaths if now - t < WORKER_DEATHS_WINDOW_S]
        self._worker_deaths.append(now)
        if len(self._worker_deaths) > self.config.worker_restarts_max:
            deaths = len(self._worker_deaths)
            log.critical("%d database worker deaths within %.0f s: stopping", deaths, WORKER_DEATHS_WINDOW_S)
            if self._server is not None:
                self._server.close()  # no open port that answers nothing
            for task in list(self._tasks):
                task.cancel()
            self._failure.set_result(HostFailed(f"{deaths} database worker deaths within a minute"))
            return
        self._start_worker(n)

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
            except BaseException as exc:
                # The pipeline contains every request's failure; this is a bug or the thread being
                # torn down. Whether the group committed is unknown: no answers, close them.
                for w in batch:
                    self._resolve(w.future, _NO_ANSWER)
                if not isinstance(exc, Exception):
                    raise
                log.error("pipeline failed on a batch of %d: %s", len(batch), describe(exc))
                continue
            for w, reply in zip(batch, replies, strict=True):
                self._resolve(w.future, reply)

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(callback, *args)

    def _resolve(self, future: asyncio.Future[Reply], reply: Reply) -> None:
        def _set() -> None:
            if not future.done():  # a request that timed out was given up already
                future.set_result(reply)

        self._call_soon(_set)

    # --- connections -----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        offender = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown peer"
        if self._connections >= self.config.connections_max:
            self.overload.note(offender, f"connection refused: {self._connections} open already")
            await _close(writer)
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._connections += 1
        try:
            await self._requests(reader, writer, offender)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # a bug must not take the other connections down
            self.offenders.note(offender, f"connection failed: {describe(exc)}", exc)
        finally:
            self._connections -= 1
            if task is not None:
                self._tasks.discard(task)
            await _close(writer)

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, offender: str
    ) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        while True:
            try:
                payload = await asyncio.wait_for(
                    framing.read_payload(reader, config.frame_max_len), timeout=config.idle_timeout_s
                )
            except FramingError as exc:
                self.offenders.note(offender, f"closing: {exc}")
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            future: asyncio.Future[Reply] = loop.create_future()
            work = _Work(payload, future)
            try:
                self._queue.put_nowait(work)
            except queue.Full:  # overloaded: wait a bounded time, then give this connection up
                try:
                    await asyncio.to_thread(self._queue.put, work, True, config.queue_wait_s)
                except queue.Full:
                    self.overload.note(
                        offender, f"request queue full for {config.queue_wait_s:.1f} s: closing"
                    )
                    return
            try:
                reply = await asyncio.wait_for(future, timeout=config.request_timeout_s)
            except TimeoutError:
                self.overload.note(offender, f"no answer within {config.request_timeout_s:.1f} s: closing")
                return
            if reply.incident:
                self.offenders.note(offender, reply.incident, reply.error)
            if reply.frame is not None:
                writer.write(reply.frame)
                await writer.drain()
            if reply.close:
                return


async def _close(writer: asyncio.StreamWriter) -> None:
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
        self.failure: HostFailed | None = None  # set when the host gave up serving
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
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {stopping, service.failed}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if service.failed.done():
                self.failure = service.failed.result()
        finally:
            stopping.cancel()
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
