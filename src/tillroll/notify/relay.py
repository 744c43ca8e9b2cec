"""The relay: delivers every outbox row at least once, with bounded retries, then dead-letters it.

One round (:meth:`Relay.run_once`):

1. **claim** due rows with a lease, in one statement: ``UPDATE … SET attempts = attempts + 1,
   lease_until = now + lease WHERE id IN (due rows) AND state = pending AND (lease_until IS NULL
   OR lease_until < now) RETURNING …`` (on PostgreSQL the inner select is ``FOR UPDATE SKIP
   LOCKED``; on SQLite the write transaction is exclusive). A row another relay holds is not
   due, so two relays never send the same row in one round. The incremented ``attempts`` is the
   claim's fencing token: a relay whose lease ran out cannot mark what another relay reclaimed.
2. **send** each through its channel's :class:`~tillroll.notify.outbox.Sender`;
3. **mark** the outcomes in one transaction: delivered; or failed and rescheduled by the
   channel's :class:`Schedule` (exponential, with jitter); or dead when the attempts are spent or
   the receiver refused for good. Every attempt is a row in ``outbox_attempts``. A dead row calls
   the ``on_dead`` hook in the same transaction (the back office raises a merchant alert).

A crash between send and mark leaves the row leased; after the lease it is claimed and sent
again with the same message id, which receivers deduplicate on. Crash points are injectable.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, or_, select, tuple_, update

from tillroll.clock import Clock
from tillroll.notify.outbox import (
    Channel,
    DeliveryFailed,
    MessageKind,
    MessageState,
    OutboxTables,
    Sender,
    StoredMessage,
)

log = logging.getLogger(__name__)
DETAIL_MAX = 255
RETRY_AFTER_MAX_S = 24 * 3600.0  # a receiver's Retry-After is honoured up to a day
_CLAIMED_COLUMNS = ("id", "message_id", "kind", "channel", "recipient", "payload", "attempts", "created_at")


@dataclass(frozen=True)
class Schedule:
    """Delays before each retry; ``len(retry_delays_s) + 1`` attempts in all (the first at once)."""

    retry_delays_s: tuple[float, ...]
    jitter_ratio: float = 0.2  # each delay is drawn from delay × [1 - j, 1 + j]

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.retry_delays_s) or not 0 <= self.jitter_ratio < 1:
            raise ValueError("retry delays must be >= 0 and the jitter ratio in [0, 1)")

    @property
    def attempts_max(self) -> int:
        return len(self.retry_delays_s) + 1

    def delay_after(self, attempt: int, rng: random.Random) -> float | None:
        """Seconds until the retry after failed attempt ``attempt`` (1-based); None: no more."""
        if attempt >= self.attempts_max:
            return None
        base = self.retry_delays_s[attempt - 1]
        return base * rng.uniform(1 - self.jitter_ratio, 1 + self.jitter_ratio)

    def scaled(self, factor: float) -> Schedule:
        """The same schedule ``factor`` times as fast or slow (tests run it in milliseconds)."""
        return Schedule(tuple(d * factor for d in self.retry_delays_s), self.jitter_ratio)


# Svix's: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
WEBHOOK_SCHEDULE = Schedule((5, 300, 1800, 7200, 18000, 36000, 36000))
# E-mail and SMS: ×4 from 15 s, six attempts over about 1 h 25 min.
DIRECT_SCHEDULE = Schedule((15, 60, 240, 960, 3840))
# A terminal's facts to the back office: patient (a day), since they carry every customer message.
BACKOFFICE_SCHEDULE = Schedule((5, 30, 120, 600, 1800, 3600, 3600, 7200, 7200, 14400, 14400, 28800))

DEFAULT_SCHEDULES: Mapping[Channel, Schedule] = {
    Channel.WEBHOOK: WEBHOOK_SCHEDULE,
    Channel.EMAIL: DIRECT_SCHEDULE,
    Channel.SMS: DIRECT_SCHEDULE,
    Channel.BACKOFFICE: BACKOFFICE_SCHEDULE,
}


def scaled_schedules(
    factor: float, base: Mapping[Channel, Schedule] = DEFAULT_SCHEDULES
) -> dict[Channel, Schedule]:
    return {channel: s.scaled(factor) for channel, s in base.items()}


class RelayCrash(BaseException):
    """Raised by an injected crash point: the relay stops as if the process died there."""


# Called at "claimed" (rows leased, nothing sent), "sent" (one message sent, not marked) and
# "marked" (a round's outcomes committed), with the message id where there is one.
CrashHook = Callable[[str, str | None], None]
# Called in the transaction that dead-letters ``message`` after ``detail``.
DeadHook = Callable[[Connection, StoredMessage, str, datetime], None]


@dataclass
class RoundReport:
    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0  # claimed but given back unsent (the lease was running out)
    lost_claims: int = 0  # outcomes not marked: another relay took the row over


@dataclass(frozen=True)
class RelayConfig:
    lease_s: float = 60.0
    batch_max: int = 500
    poll_interval_s: float = 0.5  # idle wait between rounds in run()
    schedules: Mapping[Channel, Schedule] = field(default_factory=lambda: dict(DEFAULT_SCHEDULES))

    def __post_init__(self) -> None:
        if self.lease_s <= 0 or self.batch_max < 1 or self.poll_interval_s <= 0:
            raise ValueError("lease_s and poll_interval_s must be > 0 and batch_max >= 1")


@dataclass(frozen=True)
class _Outcome:
    message: StoredMessage
    pk: int
    error: DeliveryFailed | None


def _detail(text: str) -> str:
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


class Relay:
    def __init__(
        self,
        engine: Engine,
        tables: OutboxTables,
        senders: Mapping[Channel, Sender],
        *,
        clock: Clock,
        config: RelayConfig | None = None,
        rng: random.Random | None = None,
        on_dead: DeadHook | None = None,
        crash: CrashHook | None = None,
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.senders = dict(senders)
        self.clock = clock
        self.config = config or RelayConfig()
        self.rng = rng or random.Random()
        self.on_dead = on_dead
        self.crash = crash
        for channel in self.senders:
            if channel not in self.config.schedules:
                raise ValueError(f"no retry schedule for channel {channel}")

    # --- one round ---------------------------------------------------------------------------

    def run_once(self) -> RoundReport:
        report = RoundReport()
        claimed = self._claim()
        report.claimed = len(claimed)
        if not claimed:
            return report
        self._crash("claimed", None)
        started = self.clock.monotonic()
        outcomes: list[_Outcome] = []
        for i, (pk, message) in enumerate(claimed):
            # Never send on a lease about to run out: another relay may take the row then.
            if self.clock.monotonic() - started > self.config.lease_s / 2:
                report.released = self._release(claimed[i:])
                break
            outcomes.append(_Outcome(message, pk, self._send(message)))
            self._crash("sent", message.message_id)
        self._mark(outcomes, report)
        self._crash("marked", None)
        return report

    def run(self, stop: threading.Event) -> None:
        """Rounds until ``stop`` is set; waits ``poll_interval_s`` when nothing was due."""
        while not stop.is_set():
            try:
                report = self.run_once()
            except RelayCrash:
                raise
            except Exception:  # a database hiccup: log, wait, try again (rows stay leased or due)
                log.exception("relay round failed")
                stop.wait(self.config.poll_interval_s)
                continue
            if report.claimed == 0:
                stop.wait(self.config.poll_interval_s)

    # --- steps -------------------------------------------------------------------------------

    def _crash(self, point: str, message_id: str | None) -> None:
        if self.crash is not None:
            self.crash(point, message_id)

    def _due(self, now: datetime) -> Any:
        m = self.tables.messages.c
        return and_(
            m.state == MessageState.PENDING.value,
            m.next_attempt_at <= now,
            or_(m.lease_until.is_(None), m.lease_until < now),
            m.channel.in_([c.value for c in self.senders]),
        )

    def _claim(self) -> list[tuple[int, StoredMessage]]:
        m = self.tables.messages
        now = self.clock.now()
        due = self._due(now)
        with self.engine.begin() as conn:
            inner = select(m.c.id).where(due).order_by(m.c.next_attempt_at, m.c.id)
            inner = inner.limit(self.config.batch_max)
            if conn.dialect.name == "postgresql":
                inner = inner.with_for_update(skip_locked=True)
            # Two statements, not UPDATE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED):
            # PostgreSQL may run such a subquery more than once and claim more than n rows.
            ids = list(conn.execute(inner).scalars())
            if not ids:
                return []
            stmt = (
                update(m)
                .where(m.c.id.in_(ids), due)
                .values(attempts=m.c.attempts + 1, lease_until=now + timedelta(seconds=self.config.lease_s))
                .returning(*(m.c[name] for name in _CLAIMED_COLUMNS))
            )
            rows = conn.execute(stmt).all()
        claimed = [
            (
                int(r.id),
                StoredMessage(
                    message_id=r.message_id,
                    kind=MessageKind(r.kind),
                    channel=Channel(r.channel),
                    recipient=r.recipient,
                    payload=json.loads(r.payload),
                    attempt=int(r.attempts),
                    created_at=r.created_at,
                ),
            )
            for r in rows
        ]
        claimed.sort(key=lambda c: c[0])
        return claimed

    def _send(self, message: StoredMessage) -> DeliveryFailed | None:
        try:
            self.senders[message.channel].send(message)
        except DeliveryFailed as exc:
            return exc
        except Exception as exc:  # a sender's bug or an IO error it did not translate
            log.exception("sender for %s raised on %s", message.channel, message.message_id)
            return DeliveryFailed(message.message_id, f"{type(exc).__name__}: {exc}")
        return None

    def _release(self, rest: list[tuple[int, StoredMessage]]) -> int:
        m = self.tables.messages
        released = 0
        with self.engine.begin() as conn:
            for pk, message in rest:
                released += conn.execute(
                    update(m)
                    .where(m.c.id == pk, m.c.attempts == message.attempt)
                    .where(m.c.state == MessageState.PENDING.value)
                    .values(attempts=m.c.attempts - 1, lease_until=None)
                ).rowcount
        return released

    def _mark(self, outcomes: list[_Outcome], report: RoundReport) -> None:
        if not outcomes:
            return
        now = self.clock.now()
        with self.engine.begin() as conn:
            self._mark_delivered(conn, [o for o in outcomes if o.error is None], now, report)
            for o in outcomes:
                if o.error is not None:
                    self._mark_failed(conn, o, o.error, now, report)

    def _mark_delivered(
        self, conn: Connection, done: list[_Outcome], now: datetime, report: RoundReport
    ) -> None:
        """One UPDATE for the round's deliveries (fenced by id and attempt), one INSERT of their
        attempts: per-row statements cost more than the sends."""
        if not done:
            return
        m, a = self.tables.messages, self.tables.attempts
        marked = set(
            conn.execute(
                update(m)
                # id IN (…) lets the primary key find the rows; the pairs fence each claim.
                .where(m.c.id.in_([o.pk for o in done]))
                .where(tuple_(m.c.id, m.c.attempts).in_([(o.pk, o.message.attempt) for o in done]))
                .where(m.c.state == MessageState.PENDING.value)
                .values(state=MessageState.DELIVERED.value, delivered_at=now, lease_until=None)
                .returning(m.c.id)
            ).scalars()
        )
        rows = []
        for o in done:
            if o.pk not in marked:
                report.lost_claims += 1
                log.warning("lost the claim on %s: another relay reclaimed it", o.message.message_id)
                continue
            rows.append({"message_pk": o.pk, "attempt": o.message.attempt, "outcome": "delivered",
                         "detail": None, "at": now})  # fmt: skip
        if rows:
            conn.execute(insert(a), rows)
        report.delivered += len(rows)

    def _mark_failed(
        self, conn: Connection, o: _Outcome, error: DeliveryFailed, now: datetime, report: RoundReport
    ) -> None:
        m, a = self.tables.messages, self.tables.attempts
        detail = _detail(error.detail)
        schedule = self.config.schedules[o.message.channel]
        delay = schedule.delay_after(o.message.attempt, self.rng) if error.retryable else None
        if delay is not None and error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, RETRY_AFTER_MAX_S))
        values: dict[str, Any] = {"last_error": detail, "lease_until": None}
        if delay is None:
            values["state"], outcome = MessageState.DEAD.value, "dead"
        else:
            values["next_attempt_at"], outcome = now + timedelta(seconds=delay), "failed"
        fence = and_(
            m.c.id == o.pk, m.c.attempts == o.message.attempt, m.c.state == MessageState.PENDING.value
        )
        if conn.execute(update(m).where(fence).values(**values)).rowcount != 1:
            report.lost_claims += 1
            log.warning("lost the claim on %s: another relay reclaimed it", o.message.message_id)
            return
        conn.execute(
            insert(a).values(
                message_pk=o.pk, attempt=o.message.attempt, outcome=outcome, detail=detail, at=now
            )
        )
        if outcome == "failed":
            report.failed += 1
            return
        report.dead += 1
        log.warning("dead letter %s after %d attempt(s): %s", o.message.message_id, o.message.attempt, detail)
        self._dead_hook(conn, o.message, detail, now)

    def _dead_hook(self, conn: Connection, message: StoredMessage, detail: str, now: datetime) -> None:
        """The dead-letter hook, in a savepoint: an alert that fails is logged, and never undoes
        the round's marks (which would send every message of the round again)."""
        if self.on_dead is None:
            return
        try:
            with conn.begin_nested():
                self.on_dead(conn, message, detail, now)
        except Exception:
            log.exception("the dead-letter hook failed for %s", message.message_id)
