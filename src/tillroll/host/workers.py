"""`tillroll host serve --workers N`: N host processes on one port, sharing one database.

The parent migrates the database once, reserves the port (a socket bound with SO_REUSEPORT that
never listens, so that port 0 means one port for all of them and nobody else takes it between
two restarts), then starts N fresh interpreters — `python -m tillroll.host serve --worker-fd FD`,
never a fork of a process holding an engine. Each child is a whole host (its `HostService`, its
database workers, its connection pool) listening on the port with SO_REUSEPORT; the kernel
spreads the connections over them. The database's uniqueness constraints and row locks, not
process memory, keep every guarantee (one authorization per request, a reversal against its
original, sign-in against settlement): that is PostgreSQL's job. On SQLite the children share
its single writer lock — allowed, but they queue on it.

A child says "ready" on a socket pair once it listens, and stops when the parent's end closes
(the parent died). The parent forwards SIGTERM and SIGINT (a second one kills), restarts a child
that ends unexpectedly, gives up — every child stopped, exit status 2 — when more than
`worker_restarts_max` children die within a minute, and exits once all of them have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tillroll.host.config import ConfigError, HostConfig
from tillroll.host.server import HostFailed, HostService
from tillroll.host.store import HostStore

log = logging.getLogger("tillroll.host")

WORKERS_MAX = 64
DEATHS_WINDOW_S = 60.0
READY_TIMEOUT_S = 60.0  # a child that does not listen by then is killed (and counts as a death)
STOP_TIMEOUT_S = 30.0  # after SIGTERM, children still running then are killed
READY = b"ready\n"
EXIT_GAVE_UP = 2
EXIT_UNCLEAN_STOP = 1


class ListenError(OSError):
    """The address cannot be had (taken by a process that does not share it, or not ours)."""


def check_workers(n: int) -> int:
    if not 1 <= n <= WORKERS_MAX:
        raise ConfigError(f"--workers must be within 1..{WORKERS_MAX} host processes, not {n}")
    return n


@dataclass(frozen=True)
class WorkerPlan:
    """What the parent runs: `workers` children serving `host:port` on `db_url`."""

    workers: int
    host: str
    port: int
    db_url: str
    config: HostConfig

    def __post_init__(self) -> None:
        check_workers(self.workers)

    @property
    def backend(self) -> str:
        return self.db_url.split("://")[0]


@dataclass
class RestartBudget:
    """Restart a dead child unless more than `restarts_max` died within `window_s`."""

    restarts_max: int
    window_s: float = DEATHS_WINDOW_S
    deaths: list[float] = field(default_factory=list)

    def allows(self, now: float) -> bool:
        """Count one death at `now`; False: too many, stop restarting."""
        self.deaths = [t for t in self.deaths if now - t < self.window_s]
        self.deaths.append(now)
        return len(self.deaths) <= self.restarts_max


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to the address with SO_REUSEPORT, never listening: it fixes the port
    (port 0: a free one) and keeps it ours while children come and go."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def child_argv(plan: WorkerPlan, host: str, port: int, fd: int) -> list[str]:
    """A fresh interpreter running one host process; the database URL goes by environment
    (`TILLROLL_DB`), so that a password in it is not in every process listing."""
    return [
        sys.executable, "-m", "tillroll.host", "serve", "--listen", f"{host}:{port}",
        "--key-lifetime-s", str(plan.config.key_lifetime_s), "--tz", plan.config.merchant_tz,
        "--worker-fd", str(fd),
    ]  # fmt: skip


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


@dataclass
class _Child:
    index: int
    proc: asyncio.subprocess.Process
    control: asyncio.StreamWriter  # closing it tells the child that its parent is gone
    watch: asyncio.Task[None] | None = None
    ready: bool = False


class Supervisor:
    """The parent of `--workers N`: starts, watches, restarts and stops the children."""

    def __init__(
        self,
        plan: WorkerPlan,
        say: Callable[[str], None],
        env: dict[str, str] | None = None,
        *,
        command: Callable[[WorkerPlan, str, int, int], list[str]] = child_argv,
    ) -> None:
        self.plan = plan
        self.say = say
        self.command = command  # tests: a child that dies at once, without a host's start-up
        self.env = dict(os.environ if env is None else env, TILLROLL_DB=plan.db_url)
        self.budget = RestartBudget(plan.config.worker_restarts_max)
        self.address: tuple[str, int] = (plan.host, plan.port)
        self._children: dict[int, _Child] = {}
        self._events: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
        self._stopping = False
        self._gave_up = False
        self._unclean = False
        self._announced = False
        self._kill_timer: asyncio.TimerHandle | None = None

    async def run(self) -> int:
        """Serve until signalled (0; 1 if a child had to be killed) or until children keep
        dying (2)."""
        loop = asyncio.get_running_loop()
        try:
            reserved = reserve_port(self.plan.host, self.plan.port)
        except OSError as exc:
            where = f"{self.plan.host}:{self.plan.port}"
            raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        self.address = reserved.getsockname()[:2]
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled)
        try:
            for index in range(1, self.plan.workers + 1):
                if self._stopping:
                    break
                await self._start(index)
            while self._children:
                what, index, returncode = await self._events.get()
                if what == "ready":
                    self._ready(index)
                else:
                    await self._exited(index, returncode)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            self._kill_all()  # only if an error left one running
            reserved.close()
        if self._gave_up:
            return EXIT_GAVE_UP
        return EXIT_UNCLEAN_STOP if self._unclean else 0

    async def _start(self, index: int) -> None:
        host, port = self.address
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(self.plan, host, port, theirs.fileno()),
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a Ctrl-C reaches the parent only, which forwards it once
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        child = _Child(index, proc, writer)
        self._children[index] = child
        child.watch = asyncio.create_task(self._watch(child, reader))
        if self._stopping:  # a stop came while it was being started
            self._terminate(child)

    async def _watch(self, child: _Child, reader: asyncio.StreamReader) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), READY_TIMEOUT_S)
        except (OSError, ValueError):  # the child went before a whole line: it was not ready
            line = b""
        except TimeoutError:
            pid, limit = child.proc.pid, READY_TIMEOUT_S
            self.say(f"worker {child.index} (pid {pid}) not listening after {limit:.0f} s: killing it")
            line = b""
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        if line == READY:
            self._events.put_nowait(("ready", child.index, 0))
        returncode = await child.proc.wait()
        self._events.put_nowait(("exited", child.index, returncode))

    def _ready(self, index: int) -> None:
        child = self._children.get(index)
        if child is None:
            return
        child.ready = True
        host, port = self.address
        self.say(f"worker {index}: pid {child.proc.pid} listening on {host}:{port}")
        if (
            not self._announced
            and len(self._children) == self.plan.workers
            and all(c.ready for c in self._children.values())
        ):
            self._announced = True
            n = self.plan.workers
            workers = f"{n} worker{'' if n == 1 else 's'}"
            self.say(f"tillroll host listening on {host}:{port} ({self.plan.backend}, {workers})")

    async def _exited(self, index: int, returncode: int) -> None:
        child = self._children.pop(index)
        child.control.close()
        how = describe_exit(returncode)
        if self._stopping:
            if returncode not in (0, -signal.SIGTERM):
                self._unclean = True
                self.say(f"worker {index} (pid {child.proc.pid}) {how} while stopping")
            return
        if not self.budget.allows(time.monotonic()):
            deaths = len(self.budget.deaths)
            self.say(
                f"worker {index} (pid {child.proc.pid}) {how}; {deaths} deaths within "
                f"{self.budget.window_s:.0f} s: stopping every worker"
            )
            self._gave_up = True
            self._stop()
            return
        self.say(f"worker {index} (pid {child.proc.pid}) {how}: starting it again")
        await self._start(index)

    def _signalled(self) -> None:
        if self._stopping:
            self._kill_all()  # a second signal: no more waiting
        else:
            self._stop()

    def _stop(self) -> None:
        self._stopping = True
        for child in self._children.values():
            self._terminate(child)
        if self._kill_timer is None:
            self._kill_timer = asyncio.get_running_loop().call_later(STOP_TIMEOUT_S, self._kill_all)

    def _terminate(self, child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)

    def _kill_all(self) -> None:
        for child in self._children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()


async def supervise(plan: WorkerPlan, say: Callable[[str], None]) -> int:
    """Run `plan.workers` host processes until signalled; the exit status."""
    return await Supervisor(plan, say).run()


# --- the child -----------------------------------------------------------------------------


async def serve_worker(store: HostStore, config: HostConfig, host: str, port: int, control_fd: int) -> None:
    """One child of `--workers`: serve on the shared port until SIGTERM/SIGINT or until the
    parent goes away; raises HostFailed when this host can no longer answer."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=control_fd))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = HostService(store, config)
    try:
        address = await service.start(host, port)
        log.info("tillroll host worker listening on %s:%d", *address)
        writer.write(READY)
        await writer.drain()
        stopping = asyncio.ensure_future(stop.wait())
        orphaned = asyncio.ensure_future(reader.read())  # EOF: the parent has gone
        waiters: set[asyncio.Future[Any]] = {stopping, orphaned, service.failed}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if orphaned.done() and not stop.is_set():
            log.warning("the parent process has gone: stopping")
        stopping.cancel()
        orphaned.cancel()
        if service.failed.done():
            failure: HostFailed = service.failed.result()
            raise failure
    finally:
        await service.close()
        writer.close()
