"""The serving process's side of `--db-process` (`DbProcess`) against real processes that run the
link's other end (`serve_db_process`) over a pipeline doing no database work (dbproc_fake.py):
groups and answers matched, a group in flight when the process dies closed unanswered, a new
process for the next group, and a bound on how often one is started."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tillroll.host.boundary import Answer, GroupRequest
from tillroll.host.config import HostConfig
from tillroll.host.db_process import (
    LENGTH,
    READY,
    DbProcess,
    DbProcessFailed,
    LinkLost,
    encode_group,
    recv_message,
    send_message,
)
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message

FAKE = str(Path(__file__).with_name("dbproc_fake.py"))
WAIT_S = 20.0


def fake(mode: str) -> Callable[[HostConfig, int], list[str]]:
    return lambda _config, fd: [sys.executable, FAKE, str(fd), mode]


def group_of(*stans: str) -> list[GroupRequest]:
    frame = framing.Frame(b"\x60\x00\x01\x00\x00", b"\x60\x31\x00", b"raw")
    return [GroupRequest(i, frame, Message("0200", {"11": stan})) for i, stan in enumerate(stans)]


class Outcome:
    """What `done` was called with, and an event to wait on."""

    def __init__(self) -> None:
        self.answers: dict[int, Answer] | None = None
        self.called = threading.Event()

    def __call__(self, answers: dict[int, Answer] | None) -> None:
        self.answers = answers
        self.called.set()

    def wait(self) -> dict[int, Answer] | None:
        assert self.called.wait(WAIT_S), "the group never came back"
        return self.answers


def test_groups_in_flight_come_back_each_with_its_own_answers() -> None:
    remote = DbProcess("sqlite://", HostConfig(), argv=fake("approve"), in_flight_max=3)
    try:
        remote.start()
        outcomes = [Outcome() for _ in range(6)]
        for k, outcome in enumerate(outcomes):
            remote.send(group_of(f"{k}01", f"{k}02"), outcome)
        for k, outcome in enumerate(outcomes):
            answers = outcome.wait()
            assert answers is not None
            assert [answers[i].message["11"] for i in (0, 1)] == [f"{k}01", f"{k}02"]
    finally:
        remote.close()


def test_a_group_in_flight_when_the_process_dies_has_no_answers_and_the_next_starts_a_new_one() -> None:
    remote = DbProcess("sqlite://", HostConfig(), argv=fake("hang"), restarts_max=1)
    try:
        remote.start()
        first_pid = remote.pid
        assert first_pid is not None
        lost = Outcome()
        remote.send(group_of("000001"), lost)
        os.kill(first_pid, signal.SIGKILL)
        assert lost.wait() is None  # outcome unknown: the connection is closed, the terminal reverses
        also_lost = Outcome()
        remote.send(group_of("000002"), also_lost)  # a second process (restarts_max=1 allows it)
        assert remote.starts == 2 and remote.pid not in (None, first_pid)
        second_pid = remote.pid
        assert second_pid is not None
        os.kill(second_pid, signal.SIGKILL)
        assert also_lost.wait() is None
        refused = Outcome()
        with pytest.raises(DbProcessFailed, match="started 2 times within a minute"):
            remote.send(group_of("000003"), refused)
        assert refused.wait() is None
    finally:
        remote.close()


def test_a_process_that_never_gets_ready_is_a_clear_failure() -> None:
    remote = DbProcess("sqlite://", HostConfig(), argv=lambda _c, _fd: [sys.executable, "-c", "pass"])
    with pytest.raises(DbProcessFailed, match="did not get ready"):
        remote.start()
    remote.close()


def test_closing_lets_the_process_answer_what_it_holds_then_it_exits() -> None:
    remote = DbProcess("sqlite://", HostConfig(), argv=fake("approve"))
    remote.start()
    pid = remote.pid
    assert pid is not None
    outcome = Outcome()
    remote.send(group_of("000009"), outcome)
    remote.close()
    answers = outcome.wait()
    assert answers is not None and answers[0].message["39"] == "00"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: closed and waited for


def test_a_database_process_that_answers_nothing_is_killed_and_replaced() -> None:
    """Hung, not dead: once every slot has waited `stuck_after_s`, the process is killed, its
    groups closed unanswered, and the next group goes to a new one."""
    remote = DbProcess(
        "sqlite://", HostConfig(), argv=fake("hang"), in_flight_max=1, stuck_after_s=0.5, stop_timeout_s=1.0
    )
    try:
        remote.start()
        first_pid = remote.pid
        held, waiting = Outcome(), Outcome()
        remote.send(group_of("000001"), held)
        remote.send(group_of("000002"), waiting)  # blocks 0.5 s on the one slot, then kills
        assert held.wait() is None
        assert remote.starts == 2 and remote.pid not in (None, first_pid)
    finally:
        remote.close()  # the second one hangs too: killed after stop_timeout_s
    assert waiting.wait() is None


@pytest.mark.parametrize(
    "foreign",
    [
        pytest.param(lambda: pickle.dumps(("hello", 2, [])), id="a message that is not a group"),
        pytest.param(lambda: b"\x80\x05not a pickle at all", id="bytes that are not a pickle"),
    ],
)
def test_the_database_process_answers_what_it_has_then_stops_at_a_foreign_message(
    foreign: Callable[[], bytes],
) -> None:
    """The database process's reading thread meets what the serving process never sends: the
    group before it is still answered, then the process ends by itself (status 0)."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, FAKE, str(theirs.fileno()), "approve"], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    try:
        ours.settimeout(WAIT_S)
        assert recv_message(ours) == READY
        send_message(ours, ("group", 1, encode_group(group_of("000031"))))
        body = foreign()
        ours.sendall(LENGTH.pack(len(body)) + body)
        kind, gid, items = recv_message(ours)
        assert (kind, gid) == ("answers", 1) and items[0][0][1]["39"] == "00"
        assert proc.wait(timeout=WAIT_S) == 0
        with pytest.raises(LinkLost):
            recv_message(ours)  # nothing more: the link closed
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
