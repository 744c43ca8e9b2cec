"""Repeating a request whose outcome is not known: exponential backoff with jitter. Pure but for
the injected clock and random source.

Every "send the same request again" in the terminal goes through here — a refund, a settlement,
a batch upload item, a reversal. The waits grow as ``base_s * 2**(n-1)`` after the n-th failure,
capped at ``cap_s``, with *equal jitter* (a wait is uniform in [w/2, w]) so that terminals cut
off by the same outage do not all come back in step, while none hammers the host. Two ways to
use it:

- :func:`repeat` — blocking, for a cashier's command: at most ``tries_max`` tries, and the sum
  of the waits bounded by ``total_s`` (the cashier is standing there). Each wait is a
  ``clock.sleep``, so a test's fake clock makes it instant.
- :class:`RetrySchedule` — non-blocking, for a resident loop: it records failures per key and
  says when each key is next due; work kept there is never dropped (the wait stays at the cap).

Each attempt is itself bounded by the host link's ``connect_timeout_s``/``response_timeout_s``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from tillroll.clock import Clock

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# 2**60 times any sane base is far past any cap: keeps the float from overflowing when a
# resident loop has failed for days.
_EXPONENT_MAX = 60


class Again(enum.Enum):
    """What an attempt returns when its outcome is not final and it should be tried again."""

    AGAIN = "again"


AGAIN: Literal[Again.AGAIN] = Again.AGAIN


@dataclass(frozen=True)
class Backoff:
    base_s: float  # the ceiling of the first wait
    cap_s: float  # no single wait is longer
    total_s: float  # the waits of one blocking :func:`repeat` sum to at most this

    def __post_init__(self) -> None:
        if not (0 <= self.base_s <= self.cap_s and self.total_s >= 0):
            raise ValueError(f"backoff needs 0 <= base_s <= cap_s and total_s >= 0, got {self}")

    def wait_s(self, failures: int, rng: random.Random) -> float:
        """The wait after the ``failures``-th failure in a row (1 for the first)."""
        if failures < 1:
            return 0.0
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(failures - 1, _EXPONENT_MAX))
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def repeat(
    attempt: Callable[[int], T | Again],
    *,
    tries_max: int,
    backoff: Backoff,
    clock: Clock,
    rng: random.Random,
) -> T | Again:
    """Call ``attempt(n)`` for n = 0, 1, … until it returns something other than :data:`AGAIN`,
    waiting between tries; :data:`AGAIN` when the tries or the total wait are used up."""
    waited_s = 0.0
    for n in range(tries_max):
        if n:
            wait = backoff.wait_s(n, rng)
            if waited_s + wait > backoff.total_s:
                break
            clock.sleep(wait)
            waited_s += wait
        out = attempt(n)
        if not isinstance(out, Again):
            return out
    return AGAIN


class RetrySchedule(Generic[K]):
    """When each piece of background work (a pending reversal, by id) is next due. Monotonic
    seconds from the injected clock; a key with no failure recorded is due at once."""

    def __init__(self, backoff: Backoff, rng: random.Random) -> None:
        self._backoff = backoff
        self._rng = rng
        self._failures: dict[K, int] = {}
        self._due_s: dict[K, float] = {}

    def is_due(self, key: K, now_s: float) -> bool:
        return self._due_s.get(key, now_s) <= now_s

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def failed(self, key: K, now_s: float) -> float:
        """Record a failed attempt; returns when the key is due again."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        due = now_s + self._backoff.wait_s(n, self._rng)
        self._due_s[key] = due
        return due

    def succeeded(self, key: K) -> None:
        self._failures.pop(key, None)
        self._due_s.pop(key, None)

    def keep_only(self, keys: Iterable[K]) -> None:
        """Forget keys that are no longer pending (finished by another path)."""
        keep = set(keys)
        for key in [k for k in self._due_s if k not in keep]:
            self.succeeded(key)

    def next_due_s(self, keys: Iterable[K], now_s: float) -> float | None:
        """The earliest time one of ``keys`` is due (``now_s`` for a key never tried); None when
        there are none."""
        times = [self._due_s.get(k, now_s) for k in keys]
        return min(times) if times else None
