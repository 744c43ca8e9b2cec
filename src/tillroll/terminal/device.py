"""The device's own IO: one terminal per data dir (a lock file), and the one boundary where the
journal's and the disk's failures become :class:`TerminalError`."""

from __future__ import annotations

import fcntl
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from tillroll.owner_only import FILE_MODE, private_dir

P = ParamSpec("P")
R = TypeVar("R")

LOCK_FILE = "terminal.lock"
LOCK_WAIT_S = 5.0
_LOCK_POLL_S = 0.05


class TerminalError(RuntimeError):
    """An IO failure of the device itself (journal, disk), translated at the public boundary."""


def boundary(fn: Callable[P, R]) -> Callable[P, R]:
    """The one place where the device's own IO failures become :class:`TerminalError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise TerminalError(
                f"the journal cannot be read or written ({type(exc).__name__}): check the disk; "
                "pending reversals stay in the journal"
            ) from exc
        except OSError as exc:
            raise TerminalError(f"device IO failed ({type(exc).__name__}): {exc.strerror or exc}") from exc

    return wrapper


class DeviceLock:
    """One Terminal per data dir at a time (two cashier commands at once would each take the
    other's in-flight entry for an interrupted one). Waits at most ``wait_s``."""

    def __init__(self, path: Path, wait_s: float | None = None) -> None:
        private_dir(path.parent)  # the data dir: 0700 from its creation
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.release()
                    raise TerminalError(
                        f"another `tillroll pos` command is using the terminal in {path.parent}: "
                        "wait for it to finish, then try again"
                    ) from None
                time.sleep(_LOCK_POLL_S)  # flock has no timeout of its own

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None
