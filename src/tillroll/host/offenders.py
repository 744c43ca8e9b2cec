"""Warnings about bad input, aggregated: one line per offender per interval, with a count.

A flood of foreign or broken frames must not fill the disk or drown the lines that matter: the
first problem from an offender (a peer address) is logged at once, the ones after it within
`interval_s` are only counted, and one summary line carries the count when the interval is over
(at the next problem, or at `flush`). Offenders tracked at once are bounded; past the bound they
share one entry. No tracebacks per frame: a problem is a short text; the first exception from
each place in the code (bounded) is logged with its traceback once, so a bug can still be found.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from tillroll.pan import mask_pan

REASON_MAX_CHARS = 240
OFFENDERS_MAX = 1024
TRACEBACK_SITES_MAX = 64
OTHERS = "(other offenders)"
_PAN_LIKE = re.compile(r"\d{13,19}")


def safe_text(text: str) -> str:
    """Bounded, one line, with anything that looks like a card number masked (PROFILE §7)."""
    one_line = " ".join(text.split())
    masked = _PAN_LIKE.sub(lambda m: mask_pan(m.group(0)), one_line)
    return masked if len(masked) <= REASON_MAX_CHARS else masked[: REASON_MAX_CHARS - 1] + "…"


def describe(exc: BaseException) -> str:
    """What went wrong and where, without the exception's data dump.

    A DBAPIError's text carries the SQL and its bound parameters (card numbers among them): only
    the driver's error class and SQLSTATE are kept.
    """
    where = _site(exc)
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        state = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        return f"{type(exc).__name__} ({type(orig).__name__}{f' {state}' if state else ''}) at {where}"
    return safe_text(f"{type(exc).__name__}: {exc} at {where}")


def _site(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


@dataclass
class _Entry:
    since: float
    count: int = 0  # problems after the first line of this interval
    last: str = ""


class OffenderLog:
    def __init__(
        self,
        logger: logging.Logger,
        monotonic: Callable[[], float],
        *,
        interval_s: float = 60.0,
        what: str = "bad input",
        offenders_max: int = OFFENDERS_MAX,
    ) -> None:
        self._log = logger
        self._monotonic = monotonic
        self.interval_s = interval_s
        self._what = what
        self._offenders_max = offenders_max
        self._entries: dict[str, _Entry] = {}
        self._traceback_sites: set[str] = set()

    def note(self, offender: str, reason: str, exc: BaseException | None = None) -> None:
        now = self._monotonic()
        if offender not in self._entries and len(self._entries) >= self._offenders_max:
            self.flush()
            if len(self._entries) >= self._offenders_max:
                offender = OTHERS
        entry = self._entries.get(offender)
        if entry is None:
            self._entries[offender] = _Entry(since=now, last=reason)
            self._log.warning("%s from %s: %s%s", self._what, offender, safe_text(reason), self._once(exc))
            return
        entry.count += 1
        entry.last = reason
        if now - entry.since >= self.interval_s:
            self._summarise(offender, entry, now)
            entry.since, entry.count = now, 0

    def flush(self) -> None:
        """Summarise every interval that is over; forget offenders quiet for a whole interval."""
        now = self._monotonic()
        for offender, entry in list(self._entries.items()):
            if now - entry.since < self.interval_s:
                continue
            if entry.count:
                self._summarise(offender, entry, now)
                entry.since, entry.count = now, 0
            else:
                del self._entries[offender]

    def close(self) -> None:
        """Summarise whatever is still counted (at shutdown)."""
        now = self._monotonic()
        for offender, entry in self._entries.items():
            if entry.count:
                self._summarise(offender, entry, now)
        self._entries.clear()

    def _summarise(self, offender: str, entry: _Entry, now: float) -> None:
        self._log.warning(
            "%s from %s: %d more in the last %.0f s (last: %s)",
            self._what,
            offender,
            entry.count,
            now - entry.since,
            safe_text(entry.last),
        )

    def _once(self, exc: BaseException | None) -> str:
        """The traceback (card numbers masked) the first time its site is seen, else nothing."""
        if exc is None or isinstance(exc, DBAPIError):
            return ""  # a DBAPIError's text would repeat its bound parameters
        site = f"{type(exc).__name__}@{_site(exc)}"
        if site in self._traceback_sites or len(self._traceback_sites) >= TRACEBACK_SITES_MAX:
            return ""
        self._traceback_sites.add(site)
        text = "".join(traceback.format_exception(exc))
        return "\n" + _PAN_LIKE.sub(lambda m: mask_pan(m.group(0)), text).rstrip()
