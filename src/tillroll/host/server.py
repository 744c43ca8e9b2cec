"""The acquirer host's asyncio TCP server.

Each connection carries request/response pairs one at a time, in order. A bad frame closes only
its own connection; connections, frame size and idle time are bounded. Requests go to database
worker threads through a bounded queue; a worker takes whatever requests are waiting (up to
`batch_max`) and answers them with one group commit, so the event loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import uvloop

from tillroll.clock import Clock, SystemClock
from tillroll.host.boundary import Answer, FaultHook, GroupRequest, Reply
from tillroll.host.config import HostConfig
from tillroll.host.db_process import DbProcess
from tillroll.host.offenders import OffenderLog, describe
from tillroll.host.pipeline import HostPipeline
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.errors import FramingError
from tillroll.iso8583.messages import Message

log = logging.getLogger("tillroll.host")


@dataclass(frozen=True)
class _Work:
    """A decoded request waiting for the database worker, and where its answer goes."""

    frame: framing.Frame
    msg: Message
    future: asyncio.Future[tuple[GroupRequest, Answer | None]]


@dataclass(slots=True, eq=False)  # eq=False: hashed by identity, kept in a set
class _Peer:
    """A connection as the idle sweep sees it: when it last finished a request, and whether one
    is being answered (then it is not idle, whatever the time)."""

    writer: asyncio.StreamWriter
    last_s: float
    busy: bool = False


class GroupSizes:
    """How many requests each group commit answered (the host's figure of merit under load)."""

    def __init__(self) -> None:
        self.groups = 0
        self.requests = 0
        self.largest = 0

    def note(self, size: int) -> None:  # one worker thread per counter update: no lock needed
        self.groups += 1
        self.requests += size
        self.largest = max(self.largest, size)

    def summary(self, *, commits: bool = True) -> str:
        mean = self.requests / self.groups if self.groups else 0.0
        what = "group commits" if commits else "groups"
        return f"{self.requests} requests in {self.groups} {what} (mean {mean:.1f}, largest {self.largest})"


class HostFailed(RuntimeError):
    """The host cannot serve any more (its database workers keep dying): it stops, non-zero."""


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
        # --db-process: one worker thread, which only gathers groups and hands them over.
        one = store.url.startswith("sqlite") or config.db_process
        self._workers_n = 1 if one else config.db_workers
        self._remote = (
            DbProcess(store.url, config, restarts_max=config.worker_restarts_max)
            if config.db_process
            else None
        )
        self._queue: queue.Queue[_Work | None] = queue.Queue(maxsize=config.queue_max)
        self._workers: dict[int, threading.Thread] = {}
        self._worker_deaths: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._peers: set[_Peer] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._idle_sweep: asyncio.Task[None] | None = None
        self._failure: asyncio.Future[HostFailed] | None = None
        self._closing = False
        # Log throttles count real seconds whatever clock the business logic runs on.
        interval = config.bad_input_log_interval_s
        self.offenders = OffenderLog(log, time.monotonic, interval_s=interval)
        self.groups = GroupSizes()
        self.overload = OffenderLog(log, time.monotonic, interval_s=interval, what="overload")

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        self._failure = self._loop.create_future()
        if self._remote is not None:  # before listening: a database process that cannot start stops the host
            await asyncio.to_thread(self._remote.start)
        for n in range(self._workers_n):
            self._start_worker(n)
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=4096, backlog=1024, reuse_port=self.config.reuse_port
        )
        self._housekeeping = asyncio.create_task(self._flush_logs())
        self._idle_sweep = asyncio.create_task(self._close_idle())
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
        for task in (self._housekeeping, self._idle_sweep):
            if task is not None:
                task.cancel()
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
        if self._remote is not None:
            await asyncio.to_thread(self._remote.close)
        self.offenders.close()
        self.overload.close()
        if self._remote is not None:  # the database process logs the sale lane's figures
            log.info("%s handed to the database process", self.groups.summary(commits=False))
        else:
            log.info("%s; %s", self.groups.summary(), self.pipeline.sales.summary())

    async def _close_idle(self) -> None:
        """Close connections silent for `idle_timeout_s`: one sweep a fraction of that, instead of
        a timer armed and disarmed around every read (the loop's hot path)."""
        idle_s = self.config.idle_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            now = loop.time()
            for peer in [p for p in self._peers if not p.busy and now - p.last_s >= idle_s]:
                peer.writer.close()  # its pending read ends (IncompleteReadError): it returns

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
        """Worker thread: drain waiting requests into one group, answer them with one commit,
        hand the answers back to the loop in one wake-up; signing and framing them is the
        loop's (so this thread is already on the next group's database work)."""
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
            group = [GroupRequest(i, w.frame, w.msg) for i, w in enumerate(batch)]
            self.groups.note(len(group))
            if self._remote is not None:
                # DbProcessFailed leaves (the group closed unanswered): this thread dies, and
                # the worker-death rule restarts it or stops the host.
                self._remote.send(group, functools.partial(self._answered, batch, group))
                continue
            try:
                answers = self.pipeline.answer(group)
            except BaseException as exc:
                # The pipeline contains every request's failure; this is a bug or the thread being
                # torn down. Whether the group committed is unknown: no answers, close them.
                self._answered(batch, group, None)
                if not isinstance(exc, Exception):
                    raise
                log.error("pipeline failed on a batch of %d: %s", len(batch), describe(exc))
                continue
            self._answered(batch, group, answers)

    def _answered(
        self, batch: list[_Work], group: list[GroupRequest], answers: dict[int, Answer] | None
    ) -> None:
        """A group's answers to its connections (None: outcome unknown, no answers: closed)."""
        found = answers or {}
        self._resolve([(w.future, (req, found.get(req.index))) for w, req in zip(batch, group, strict=True)])

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(callback, *args)

    def _resolve(self, results: list[tuple[asyncio.Future[Any], Any]]) -> None:
        """Set a group's futures on the loop: one wake-up for the whole group."""

        def _set() -> None:
            for future, result in results:
                if not future.done():  # a request that timed out was given up already
                    future.set_result(result)

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
        peer = _Peer(writer, loop.time())
        self._peers.add(peer)
        try:
            await self._answer_each(reader, writer, offender, peer, loop)
        finally:
            self._peers.discard(peer)

    async def _answer_each(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        offender: str,
        peer: _Peer,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        config = self.config
        while True:
            try:
                payload = await framing.read_payload(reader, config.frame_max_len)  # idle: `_close_idle`
            except FramingError as exc:
                self.offenders.note(offender, f"closing: {exc}")
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            peer.busy = True
            decoded = self.pipeline.decode(payload)
            if isinstance(decoded, Reply):  # not a request of the profile: no database work
                reply = decoded
            else:
                future: asyncio.Future[tuple[GroupRequest, Answer | None]] = loop.create_future()
                work = _Work(*decoded, future)
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
                # A timer that cancels the future, not a timeout context: nothing made per request
                # but the one timer handle.
                late = loop.call_later(config.request_timeout_s, future.cancel)
                try:
                    req, answer = await future
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the host is closing
                    self.overload.note(
                        offender, f"no answer within {config.request_timeout_s:.1f} s: closing"
                    )
                    return
                finally:
                    late.cancel()
                reply = self.pipeline.finish(req, answer)
            if reply.incident:
                self.offenders.note(offender, reply.incident, reply.error)
            if reply.frame is not None:
                writer.write(reply.frame)
                await writer.drain()
            if reply.close:
                return
            peer.busy = False
            peer.last_s = loop.time()


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


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run` on uvloop's event loop, the host process's (a loop written in C: 4 of 5
    back-to-back runs of bench/host_auth.py answered 2-17 % more sales, docs/performance.md).
    Tests and the demo run the host on the standard loop (`HostServer`); the processes of
    `tillroll host serve` and its `--workers` are the ones on uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def serve(store: HostStore, config: HostConfig, host: str, port: int) -> None:
    """Run the host in the foreground until cancelled or sent SIGTERM (`tillroll host serve`):
    either way the open groups are answered, the workers stopped and the figures logged."""
    service = HostService(store, config)
    address = await service.start(host, port)
    log.info("tillroll host listening on %s:%d", *address)
    loop = asyncio.get_running_loop()
    terminated = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
        loop.add_signal_handler(signal.SIGTERM, terminated.set)
    serving = asyncio.ensure_future(service.serve_forever())
    stopping = asyncio.ensure_future(terminated.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # HostFailed
    finally:
        stopping.cancel()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, HostFailed):
            await serving
        await service.close()
