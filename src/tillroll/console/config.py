"""The console's typed settings (sessions, lock-out, the analytics spike alert), checked at start."""

from __future__ import annotations

from dataclasses import dataclass


class ConsoleConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ConsoleConfig:
    idle_minutes: int = 30  # a session unused this long is over
    absolute_hours: int = 12  # and every session ends this long after log-in, used or not
    lockout_failures: int = 5  # failed log-ins in a row that lock an account ...
    lockout_minutes: int = 15  # ... for this long
    # The cookie's Secure flag: on behind HTTPS; off for http://127.0.0.1 (tests, the demo).
    secure_cookie: bool = False
    # Analytics: an hour whose failures reach `spike_min_failures` and exceed the terminal's
    # baseline (its mean failures per hour over the window) `spike_factor` times raises an alert.
    spike_factor: float = 3.0
    spike_min_failures: int = 3
    analytics_days: int = 14
    page_rows: int = 100  # rows per page of a list

    def __post_init__(self) -> None:
        if not 1 <= self.idle_minutes <= 24 * 60:
            raise ConsoleConfigError("idle_minutes must be within 1..1440")
        if not 1 <= self.absolute_hours <= 7 * 24:
            raise ConsoleConfigError("absolute_hours must be within 1..168")
        if not 1 <= self.lockout_failures <= 100:
            raise ConsoleConfigError("lockout_failures must be within 1..100")
        if not 1 <= self.lockout_minutes <= 24 * 60:
            raise ConsoleConfigError("lockout_minutes must be within 1..1440")
        if not 1.0 <= self.spike_factor <= 100.0 or not 1 <= self.spike_min_failures <= 10_000:
            raise ConsoleConfigError("spike_factor must be within 1..100 and spike_min_failures >= 1")
        if not 1 <= self.analytics_days <= 366 or not 10 <= self.page_rows <= 1000:
            raise ConsoleConfigError("analytics_days must be within 1..366 and page_rows 10..1000")
