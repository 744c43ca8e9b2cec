"""Reconciliation on a schedule, inside `tillroll web` (the app's lifespan).

Two jobs, in the schedule's time zone:

- **nightly**: once a day, at ``nightly_at`` (local), yesterday is reconciled — its statement is
  usually imported by then, and what was still "pending" at the day's end is decided;
- **today**: every ``today_every_s`` seconds, today so far (what ages past the window shows up
  during the day, not only the next morning).

After each run the automatic actions of the exceptions it opened are taken (``apply_automatic``),
the stuck refunds whose last retry is older than ``retry_every_s`` are retried (escalated past the
limit), and exceptions waiting on a terminal command are resolved (the terminal reported it done)
or escalated (it failed) — ``follow_commands``. Whether a job is due is read from ``recon_runs``
(a run of that day started after the job's time), so a restart or a second web process does not
run a night twice.

One background thread, one run at a time; it waits on an event between cycles and stops within
``stop_timeout_s`` when the app shuts down. A failed run is logged and tried at the next cycle.
Off unless ``enabled`` (tests turn it on when they are about it).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select

from tillroll.clock import DEFAULT_MERCHANT_TZ, Clock, merchant_zone, to_merchant_local
from tillroll.host.store import HostStore
from tillroll.recon.actions import (
    ActionContext,
    ActionResult,
    apply_automatic,
    follow_commands,
    refunds_due,
)
from tillroll.store.tables import recon_runs
from tillroll.terminal.wallet_config import WalletSettings

log = logging.getLogger("tillroll.recon.scheduler")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
WAKE_MAX_S = 60.0  # the longest wait between looks at the clock (a changed clock is noticed)


class ScheduleConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ReconScheduleConfig:
    enabled: bool = False
    tz: str = DEFAULT_MERCHANT_TZ  # the zone of nightly_at and of "today"
    nightly_at: str = "02:30"  # HH:MM local: yesterday is reconciled then
    today_every_s: int = 3600  # today so far, every this many seconds; 0: never
    retry_every_s: int = 3600  # a stuck refund is retried at most this often
    ageing_s: int = 900  # the run's ageing window
    stop_timeout_s: float = 30.0
    wallets: dict[str, WalletSettings] = field(default_factory=dict)  # for wallet actions, by mid

    def __post_init__(self) -> None:
        if not _HHMM.match(self.nightly_at):
            raise ScheduleConfigError(f"nightly_at {self.nightly_at!r} must be HH:MM, like 02:30")
        merchant_zone(self.tz)  # TimeZoneError names a bad zone
        if self.today_every_s and not 60 <= self.today_every_s <= 86_400:
            raise ScheduleConfigError("today_every_s must be 0 (off) or within 60..86400")
        if not 60 <= self.retry_every_s <= 86_400:
            raise ScheduleConfigError("retry_every_s must be within 60..86400")
        if not 0 <= self.ageing_s <= 86_400 or not 0 < self.stop_timeout_s <= 600:
            raise ScheduleConfigError("ageing_s must be within 0..86400, stop_timeout_s within 0..600")

    def nightly_time(self) -> time:
        hours, minutes = self.nightly_at.split(":")
        return time(int(hours), int(minutes))


# run(business_date, now) -> the ids of the exceptions it opened
RunDay = Callable[[date, datetime], list[int]]


@dataclass(frozen=True)
class CycleReport:
    at: datetime
    ran: list[str]  # the business days reconciled in this cycle
    actions: list[ActionResult]
    errors: list[str]


class ReconScheduler:
    def __init__(
        self,
        store: HostStore,
        clock: Clock,
        config: ReconScheduleConfig,
        *,
        base_url: str,
        run: RunDay | None = None,
    ) -> None:
        self.store, self.clock, self.config = store, clock, config
        self.zone = merchant_zone(config.tz)
        self.ctx = ActionContext(store=store, clock=clock, base_url=base_url, wallets=config.wallets)
        self._run = run or self._run_day
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cycled = threading.Condition()
        self.cycles: list[CycleReport] = []

    # --- one cycle ------------------------------------------------------------------------

    def _run_day(self, day: date, now: datetime) -> list[int]:
        from tillroll.recon.run import ReconConfig, run_day  # the matcher (recon.run)

        return run_day(
            self.store.engine, day, now=now, config=ReconConfig(ageing_s=self.config.ageing_s)
        ).opened

    def _utc(self, day: date, at: time) -> datetime:
        return datetime.combine(day, at, tzinfo=self.zone).astimezone(UTC).replace(tzinfo=None)

    def _ran_since(self, day: date, since: datetime) -> bool:
        with self.store.engine.connect() as conn:
            found = conn.execute(
                select(recon_runs.c.id)
                .where(recon_runs.c.business_date == day.isoformat(), recon_runs.c.started_at >= since)
                .limit(1)
            ).first()
        return found is not None

    def due(self, now: datetime) -> list[date]:
        """The business days to reconcile now: yesterday once past the nightly time, today when
        its last run is older than the interval."""
        today = to_merchant_local(now, self.zone).date()
        days: list[date] = []
        nightly = self._utc(today, self.config.nightly_time())
        if now >= nightly and not self._ran_since(today - timedelta(days=1), nightly):
            days.append(today - timedelta(days=1))
        every = self.config.today_every_s
        if every and not self._ran_since(today, now - timedelta(seconds=every)):
            days.append(today)
        return days

    def run_due(self) -> CycleReport:
        """Reconcile what is due, take the automatic actions, retry what is due for a retry."""
        now = self.clock.now()
        ran: list[str] = []
        actions: list[ActionResult] = []
        errors: list[str] = []
        for day in self.due(now):
            try:
                opened = self._run(day, now)
                ran.append(day.isoformat())
                actions += apply_automatic(self.ctx, opened)
            except Exception as exc:  # logged with its trace; the next cycle tries again
                log.exception("reconciliation of %s failed", day)
                errors.append(f"{day}: {exc}")
        try:
            actions += apply_automatic(self.ctx, refunds_due(self.ctx, every_s=self.config.retry_every_s))
            actions += follow_commands(self.ctx)
        except Exception as exc:
            log.exception("retrying stuck refunds or following terminal commands failed")
            errors.append(f"follow-ups: {exc}")
        report = CycleReport(now, ran, actions, errors)
        with self._cycled:
            self.cycles.append(report)
            self._cycled.notify_all()
        if ran:
            log.info("reconciled %s: %d action(s) taken", ", ".join(ran), len(actions))
        return report

    # --- the background thread ------------------------------------------------------------

    def _next_wait_s(self) -> float:
        now = self.clock.now()
        today = to_merchant_local(now, self.zone).date()
        nightly = self._utc(today, self.config.nightly_time())
        if nightly <= now:
            nightly = self._utc(today + timedelta(days=1), self.config.nightly_time())
        wait = (nightly - now).total_seconds()
        if self.config.today_every_s:
            wait = min(wait, float(self.config.today_every_s))
        return max(1.0, min(wait, WAKE_MAX_S))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_due()
            self._stop.wait(self._next_wait_s())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tillroll-recon", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.stop_timeout_s)
            if self._thread.is_alive():
                log.warning("reconciliation still running at shutdown; it is left to finish")

    def wait_cycles(self, count: int, timeout_s: float) -> list[CycleReport]:
        """Block until ``count`` cycles ran (or the timeout); for tests and the demo."""
        with self._cycled:
            self._cycled.wait_for(lambda: len(self.cycles) >= count, timeout_s)
            return list(self.cycles)


def recon_lifespan(
    store: HostStore, clock: Clock, config: ReconScheduleConfig, *, base_url: str
) -> Callable[[Any], Any] | None:
    """The web app's lifespan that runs the schedule; None when it is off."""
    if not config.enabled:
        return None

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        scheduler = ReconScheduler(store, clock, config, base_url=base_url)
        app.state.recon_scheduler = scheduler
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    return lifespan
