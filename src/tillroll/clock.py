"""The clock is injected: real time in production, a settable one in tests.

Instants are UTC. `Clock.now()` returns the current instant as a *naive* UTC datetime: that is
how both databases store it (a timestamp column without a zone, read back unchanged whatever
the server's or the process's time zone), and naive values compare with what is read back.
What a person sees — fields 12/13, slips, the settlement date, report days — is the merchant's
local time, derived from an instant with `to_merchant_local` / `merchant_now`.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_MERCHANT_TZ = "Asia/Shanghai"


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant in UTC, naive (see the module docstring)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (a backoff between retries)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        # Never datetime.now(): that is the process's TZ, which says nothing about the merchant.
        return datetime.now(UTC).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to; `start` is a UTC instant."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = utc_naive(start) if start else datetime(2026, 11, 29, 9, 30, 15)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


class TimeZoneError(ValueError):
    pass


def merchant_zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. `Asia/Shanghai`), or TimeZoneError saying what was wrong."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeZoneError(
            f"time zone {name!r} is not an IANA zone name such as {DEFAULT_MERCHANT_TZ!r}"
        ) from None


def utc_naive(instant: datetime) -> datetime:
    """An aware datetime as naive UTC; a naive one is taken as UTC already."""
    return instant.astimezone(UTC).replace(tzinfo=None) if instant.tzinfo else instant


def to_merchant_local(instant: datetime, tz: tzinfo) -> datetime:
    """A UTC instant (naive UTC or aware) as the merchant's naive local wall-clock time."""
    aware = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    return aware.astimezone(tz).replace(tzinfo=None)


@functools.lru_cache(maxsize=256)
def merchant_local_text(instant: datetime, tz: tzinfo, fmt: str) -> str:
    """`to_merchant_local(instant, tz)` formatted with `fmt` (strftime), remembered: the host
    answers a group's sales at one instant and stamps each of them several times (fields 12, 13,
    15, the local date, the cardholder's message), so each stamp is formatted once a group."""
    return to_merchant_local(instant, tz).strftime(fmt)


def merchant_now(clock: Clock, tz: tzinfo) -> datetime:
    """The merchant's local wall-clock time now (naive), whatever the process's TZ."""
    return to_merchant_local(clock.now(), tz)


def local_day_bounds(day: date, tz: tzinfo) -> tuple[datetime, datetime]:
    """The merchant-local calendar day `day` as a naive-UTC [start, end) range of instants."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return utc_naive(start), utc_naive(end)
