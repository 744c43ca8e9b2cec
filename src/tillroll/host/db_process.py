"""`tillroll host serve --db-process`: the groups' database work in a process of its own.

One host process is one GIL: its event loop (reading, decoding, signing, writing ~250 µs of CPU
a sale) and its database thread (~400 µs) take turns on one core while the machine's other core
idles (docs/performance.md). With `--db-process` the host starts a second interpreter, the
database process, and hands it each group over a socket pair: the event loop's process decodes
and signs, the database process decides, books and commits — two cores. The durable contract
does not move: the database process runs the same `HostPipeline.answer` (one transaction, one
commit, every request all-or-nothing) and the answer leaves the host only after its commit.

The link carries length-prefixed pickles of plain tuples (never objects of the other side's
choosing: both ends are this host, the socket pair is no one else's). Front to database:
`("group", gid, [(index, tpdu, header, message, mti, fields), …])`; back:
`("answers", gid, [(answer, incident, error), …])` with `answer` = `(mti, fields, mak,
must_sign_in)` or None, or `("failed", gid, text)` when the pipeline itself raised (a bug). Up
to `in_flight_max` groups travel at once, so the database process finds the next groups waiting
when it commits one, and answers all of them with one commit.

When the database process dies or the link breaks, the groups in flight have an unknown outcome
(they may have committed): their connections are closed unanswered, as for a failed COMMIT
(PROFILE §7: the terminal reverses). The next group starts a new database process; more than
`restarts_max` starts within a minute raise `DbProcessFailed`, which stops the host through its
worker-death rule rather than leave a port open that answers nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tillroll.host.boundary import Answer, GroupRequest
from tillroll.host.config import HostConfig
from tillroll.host.offenders import describe
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message

log = logging.getLogger("tillroll.host")

READY = ("ready",)
LENGTH = struct.Struct(">I")
LINK_MESSAGE_MAX_BYTES = 64 * 1024 * 1024  # a group of batch_max requests is ~100 KiB
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
STARTS_WINDOW_S = 60.0

GroupDone = Callable[[dict[int, Answer] | None], None]


class LinkLost(ConnectionError):
    """The other end of the link closed it, or sent what is not a message of the link."""


class DbProcessFailed(RuntimeError):
    """The database process keeps dying: the host cannot answer."""


class RemoteError(Exception):
    """What went wrong with a request in the database process (its text only crosses)."""


# --- the link: length-prefixed pickles ------------------------------------------------------


def send_message(sock: socket.socket, message: tuple[Any, ...]) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(LENGTH.pack(len(body)) + body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise LinkLost("the link closed")
        got += k
    return bytes(buf)


def recv_message(sock: socket.socket) -> tuple[Any, ...]:
    (length,) = LENGTH.unpack(_recv_exactly(sock, LENGTH.size))
    if length > LINK_MESSAGE_MAX_BYTES:
        raise LinkLost(f"a link message of {length} bytes (at most {LINK_MESSAGE_MAX_BYTES})")
    message = pickle.loads(_recv_exactly(sock, length))
    if not isinstance(message, tuple) or not message:
        raise LinkLost("a link message that is not a tuple")
    return message


# --- what crosses: a group out, its answers back ------------------------------------------------

GroupItem = tuple[int, bytes, bytes, bytes, str, dict[str, str]]
AnswerItem = tuple[tuple[str, dict[str, str], bytes | None, bool] | None, str | None, str | None]


def encode_group(group: Sequence[GroupRequest]) -> list[GroupItem]:
    return [
        (r.index, r.frame.tpdu, r.frame.header, r.frame.message, r.msg.mti, dict(r.msg.fields)) for r in group
    ]


def decode_group(items: Sequence[GroupItem]) -> list[GroupRequest]:
    return [
        GroupRequest(index, framing.Frame(tpdu, header, message), Message(mti, fields))
        for index, tpdu, header, message, mti, fields in items
    ]


def encode_answers(group: Sequence[GroupRequest], answers: dict[int, Answer]) -> list[AnswerItem]:
    out: list[AnswerItem] = []
    for req in group:
        answer = answers.get(req.index)
        wire = (
            None
            if answer is None
            else (answer.message.mti, dict(answer.message.fields), answer.mak, answer.must_sign_in)
        )
        out.append((wire, req.incident, None if req.error is None else describe(req.error)))
    return out


def decode_answers(group: Sequence[GroupRequest], items: Sequence[AnswerItem]) -> dict[int, Answer]:
    """The answers by request index; each request's incident and error noted on it."""
    if len(items) != len(group):
        raise LinkLost(f"{len(items)} answers for a group of {len(group)}")
    answers: dict[int, Answer] = {}
    for req, (wire, incident, error) in zip(group, items, strict=True):
        if incident is not None or error is not None:
            req.failed(incident or "", None if error is None else RemoteError(error))
        if wire is not None:
            mti, fields, mak, must_sign_in = wire
            answers[req.index] = Answer(Message(mti, fields), mak, must_sign_in)
    return answers


# --- the host's side -----------------------------------------------------------------------------


def db_process_argv(config: HostConfig, fd: int) -> list[str]:
    """A fresh interpreter for the database process; the database URL goes by environment
    (`TILLROLL_DB`), so that a password in it is not in every process listing."""
    return [
        sys.executable, "-m", "tillroll.host", "db-process", "--link-fd", str(fd),
        "--key-lifetime-s", str(config.key_lifetime_s), "--tz", config.merchant_tz,
    ]  # fmt: skip


class DbProcess:
    """The database process as the host's worker thread sees it: `send` a group with what to do
    with its answers (None: no answers, outcome unknown); a receiving thread calls that."""

    def __init__(
        self,
        db_url: str,
        config: HostConfig,
        *,
        in_flight_max: int = 4,
        restarts_max: int = 5,
        stuck_after_s: float | None = None,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        argv: Callable[[HostConfig, int], list[str]] = db_process_argv,
    ) -> None:
        self._db_url = db_url
        # A database process that answers nothing for this long is killed (its groups' outcome
        # is then unknown, as at any death): hung, it would otherwise hold every slot forever.
        self._stuck_after_s = config.request_timeout_s if stuck_after_s is None else stuck_after_s
        self._stop_timeout_s = stop_timeout_s
        self._config = config
        self._argv = argv
        self._restarts_max = restarts_max
        self._slots = threading.BoundedSemaphore(in_flight_max)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._link: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._in_flight: dict[int, tuple[list[GroupRequest], GroupDone]] = {}
        self._starts: list[float] = []
        self._closed = False
        self.groups_sent = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        with self._lock:
            if self._link is None:
                self._start()

    def send(self, group: list[GroupRequest], done: GroupDone) -> None:
        """Hand a group over; blocks while `in_flight_max` groups are on their way already.
        Raises DbProcessFailed (after calling `done(None)`) when the process cannot be had."""
        while not self._slots.acquire(timeout=self._stuck_after_s):
            self._kill_stuck()
        try:
            with self._lock:
                if self._closed:
                    raise DbProcessFailed("the database process is stopped")
                if self._link is None:
                    self._start()
                link = self._link
                assert link is not None
                gid = next(self._ids)
                self._in_flight[gid] = (group, done)
        except BaseException:
            self._slots.release()
            done(None)
            raise
        try:
            send_message(link, ("group", gid, encode_group(group)))
            self.groups_sent += 1
        except OSError as exc:
            self._lost(link, f"sending a group failed: {describe(exc)}")

    def close(self) -> None:
        """Close the link (the database process ends after the group it is on) and wait."""
        with self._lock:
            self._closed = True
            link, proc = self._link, self._proc
        if link is not None:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_WR)
        if proc is not None:
            try:
                proc.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the database process did not stop within %.0f s: killing it", self._stop_timeout_s
                )
                proc.kill()
                proc.wait()
        if link is not None:
            self._lost(link, "the host is stopping")

    # --- inside -------------------------------------------------------------------------------

    def _kill_stuck(self) -> None:
        """Every slot has been taken for `stuck_after_s`: the process answers nothing. Killing it
        ends its link, and the receiving thread closes the groups it held."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            log.error(
                "database process %d answered nothing for %.0f s: killing it", proc.pid, self._stuck_after_s
            )
            proc.kill()

    def _start(self) -> None:
        """Under the lock: a new database process and its link, ready."""
        now = time.monotonic()
        self._starts = [t for t in self._starts if now - t < STARTS_WINDOW_S]
        if len(self._starts) > self._restarts_max:
            raise DbProcessFailed(
                f"the database process was started {len(self._starts)} times within a minute"
            )
        self._starts.append(now)
        ours, theirs = socket.socketpair()
        try:
            env = dict(os.environ, TILLROLL_DB=self._db_url)
            proc = subprocess.Popen(
                self._argv(self._config, theirs.fileno()), pass_fds=(theirs.fileno(),), env=env
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(READY_TIMEOUT_S)
        try:
            hello = recv_message(ours)
            if hello != READY:
                raise LinkLost(f"the database process said {hello[0]!r} instead of ready")
        except (OSError, LinkLost, pickle.UnpicklingError) as exc:
            ours.close()
            proc.kill()
            proc.wait()
            raise DbProcessFailed(f"the database process did not get ready: {describe(exc)}") from None
        ours.settimeout(None)
        self._link, self._proc = ours, proc
        self.starts += 1
        log.info("database process %d ready", proc.pid)
        threading.Thread(target=self._receive, args=(ours,), name="host-db-link", daemon=True).start()

    def _receive(self, link: socket.socket) -> None:
        while True:
            try:
                kind, gid, payload = recv_message(link)
                with self._lock:
                    group, done = self._in_flight.pop(gid)
            except (OSError, LinkLost, ValueError, KeyError, pickle.UnpicklingError) as exc:
                self._lost(link, describe(exc))
                return
            self._slots.release()
            if kind == "answers":
                try:
                    answers: dict[int, Answer] | None = decode_answers(group, payload)
                except LinkLost as exc:
                    self._lost(link, describe(exc))
                    done(None)
                    return
            else:
                log.error("the database process failed on a group of %d: %s", len(group), payload)
                answers = None
            done(answers)

    def _lost(self, link: socket.socket, why: str) -> None:
        """The link is gone: every group still on it has an unknown outcome."""
        with self._lock:
            if self._link is not link:
                return  # a later process's link is the current one; this one was handled
            proc, self._link, self._proc = self._proc, None, None
            pending, self._in_flight = list(self._in_flight.values()), {}
            closing = self._closed
        with contextlib.suppress(OSError):
            link.close()
        if proc is not None and proc.poll() is None and not closing:
            proc.kill()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self._stop_timeout_s)
        if pending or not closing:
            log.error(
                "database process link lost (%s): %d groups in flight closed unanswered", why, len(pending)
            )
        for _group, done in pending:
            self._slots.release()
            done(None)


# --- the database process ------------------------------------------------------------------------


def serve_db_process(pipeline: Any, link_fd: int, *, merge_max: int = 256) -> None:
    """The database process: answer groups from the link until it closes. The groups waiting
    when one is done are answered together, one transaction and one commit for all of them (up
    to `merge_max` requests): while the database process commits, the serving process keeps
    sending what arrives, and the next commit takes all of it. A reading thread receives and
    unpickles the groups meanwhile: SQLite's work and the commit's fsync leave the interpreter
    free for it."""
    # Ctrl-C reaches the whole process group: the host closes the link, which ends this one after
    # the groups in hand (an interrupt here would leave their outcome unknown for nothing).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    link = socket.socket(fileno=link_fd)
    send_message(link, READY)
    arrived: queue.SimpleQueue[tuple[int, list[GroupRequest]] | None] = queue.SimpleQueue()
    threading.Thread(target=_read_groups, args=(link, arrived), name="db-link-reader", daemon=True).start()
    groups = requests = commits = 0
    try:
        while True:
            waiting, ended = _waiting_groups(arrived, merge_max)
            if waiting:
                try:
                    _answer_together(pipeline, link, waiting)
                except OSError as exc:  # committed, but the serving process has gone
                    log.warning(
                        "database process: the serving process has gone (%s): stopping", describe(exc)
                    )
                    return
                commits += 1
                groups += len(waiting)
                requests += sum(len(group) for _, group in waiting)
            if ended:
                return
    finally:
        link.close()
        log.info(
            "database process: %d requests in %d groups, %d commits; %s",
            requests, groups, commits, pipeline.sales.summary(),
        )  # fmt: skip


def _read_groups(
    link: socket.socket, arrived: queue.SimpleQueue[tuple[int, list[GroupRequest]] | None]
) -> None:
    """The reading thread: each group as it arrives, then None once the link has ended (or sent
    what is not a group)."""
    try:
        while True:
            kind, gid, items = recv_message(link)
            if kind != "group":
                log.error("database process: a link message %r is not a group: stopping", kind)
                return
            arrived.put((gid, decode_group(items)))
    except (OSError, LinkLost, ValueError, pickle.UnpicklingError):
        return
    finally:
        arrived.put(None)


def _waiting_groups(
    arrived: queue.SimpleQueue[tuple[int, list[GroupRequest]] | None], merge_max: int
) -> tuple[list[tuple[int, list[GroupRequest]]], bool]:
    """The next group (waiting for it), and every other one already there; whether the link has
    ended after them."""
    found: list[tuple[int, list[GroupRequest]]] = []
    size = 0
    while size < merge_max:
        try:
            item = arrived.get(block=not found)
        except queue.Empty:
            return found, False
        if item is None:
            return found, True
        found.append(item)
        size += len(item[1])
    return found, False


def _answer_together(
    pipeline: Any, link: socket.socket, waiting: list[tuple[int, list[GroupRequest]]]
) -> None:
    """One `answer` for the requests of every waiting group, then each group's answers back."""
    merged: list[GroupRequest] = []
    for _, group in waiting:
        for req in group:
            req.index = len(merged)  # unique across the merged groups; the link is positional
            merged.append(req)
    try:
        answers = pipeline.answer(merged)
    except Exception as exc:  # the pipeline contains every request's failure: a bug
        for gid, _group in waiting:
            send_message(link, ("failed", gid, describe(exc)))
        return
    for gid, group in waiting:
        send_message(link, ("answers", gid, encode_answers(group, answers)))
