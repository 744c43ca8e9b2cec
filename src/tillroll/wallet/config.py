"""The wallet provider's settings: typed, validated once at start.

The contract's times (a code lives 60 s, an unconfirmed order closes 45 s after ``pay``, reverse
is allowed for 7 days) are the defaults and what ``tillroll wallet serve`` always uses; tests may
shorten them through the Python API (``WalletConfig(userpaying_close_s=1.0)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# WALLET.md §5: intervals between notification attempts, each from the previous attempt.
NOTIFY_SCHEDULE_S: tuple[float, ...] = (
    15,
    15,
    30,
    3 * 60,
    10 * 60,
    20 * 60,
    30 * 60,
    30 * 60,
    30 * 60,
    60 * 60,
    3 * 3600,
    3 * 3600,
    3 * 3600,
    6 * 3600,
    6 * 3600,
)


class WalletConfigError(ValueError):
    pass


@dataclass(frozen=True)
class WalletConfig:
    code_ttl_s: float = 60.0
    userpaying_close_s: float = 45.0
    reverse_window_s: float = 7 * 86400.0
    # A refund is PROCESSING for this long, then SUCCESS (money back with the customer).
    refund_settle_s: float = 1.0
    refunds_max: int = 50
    notify_scale: float = 1.0
    notify_timeout_s: float = 5.0
    # How often the serve process looks for due work (confirmations, closes, refunds, notifications).
    sweep_interval_s: float = 0.2
    # How long a notification attempt is claimed by one sweeper before another may take it.
    notify_lease_s: float = 30.0
    # Threads that run database calls for the HTTP edge (see app.Workers).
    db_workers: int = 8

    def __post_init__(self) -> None:
        for name in (
            "code_ttl_s",
            "userpaying_close_s",
            "reverse_window_s",
            "notify_timeout_s",
            "sweep_interval_s",
            "notify_lease_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise WalletConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if not math.isfinite(self.refund_settle_s) or self.refund_settle_s < 0:
            raise WalletConfigError(f"refund_settle_s must be >= 0, not {self.refund_settle_s!r}")
        if not math.isfinite(self.notify_scale) or self.notify_scale <= 0:
            raise WalletConfigError(f"notify_scale must be a positive factor, not {self.notify_scale!r}")
        if not 1 <= self.refunds_max <= 1000:
            raise WalletConfigError(f"refunds_max must be 1..1000, not {self.refunds_max!r}")
        if not 1 <= self.db_workers <= 64:
            raise WalletConfigError(f"db_workers must be 1..64, not {self.db_workers!r}")
        if self.notify_lease_s <= self.notify_timeout_s:
            raise WalletConfigError("notify_lease_s must be longer than notify_timeout_s")

    def notify_interval_s(self, attempts_done: int) -> float | None:
        """Seconds from attempt number ``attempts_done`` (1-based) to the next, or None: no more."""
        if not 1 <= attempts_done <= len(NOTIFY_SCHEDULE_S):
            return None
        return NOTIFY_SCHEDULE_S[attempts_done - 1] * self.notify_scale
