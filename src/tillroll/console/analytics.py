"""Failures by cause, terminal, rail and hour, and the spike alert.

One GROUP BY over the journal copies of the window's failed payments — by terminal, rail, cause
and UTC hour — gives a bounded set of buckets (days × 24 × terminals × causes at most); the
charts fold those into the merchant's local hours. A **spike** is one terminal's hour whose
failures reach ``spike_min_failures`` and exceed ``spike_factor`` times that terminal's baseline
(its mean failures per hour over the window). Spikes at the same local hour on several days are
one alert: "T3 loses its line every evening at 19:00" reads "T3: 19:00–20:00, failures on 5 days".
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from sqlalchemy import ColumnElement, Connection, func, select

from tillroll.clock import merchant_zone, to_merchant_local
from tillroll.console.auth import Principal
from tillroll.console.config import ConsoleConfig
from tillroll.console.queries import FAILED_STATES, PAYMENT_KINDS
from tillroll.store.tables import journal_entries


def _hour_bucket(conn: Connection) -> ColumnElement[str]:
    """The UTC hour of a journal entry, as text 'YYYY-MM-DD HH', on either database."""
    created = journal_entries.c.created_at
    if conn.dialect.name == "postgresql":
        return func.to_char(created, "YYYY-MM-DD HH24")
    return func.strftime("%Y-%m-%d %H", created)


def cause_of(state: str, code: str | None) -> str:
    """A failure's cause as a merchant reads it: the answer's code, else what the terminal saw."""
    if code:
        return f"code {code}"
    return {
        "unknown": "no answer (timeout)",
        "reversed": "no answer, reversed",
        "not_processed": "line down",
        "not_sent": "line down",
        "closed": "closed unpaid",
        "revoked": "reversed (wallet)",
    }.get(state, state)


@dataclass(frozen=True)
class Spike:
    tid: str
    local_hour: int
    days: list[str]  # the local dates with a spike at that hour
    failures: int  # all failures in those spiking hours
    baseline: Fraction  # the terminal's mean failures per hour

    @property
    def baseline_text(self) -> str:
        hundredths = round(self.baseline * 100)
        return f"{hundredths // 100}.{hundredths % 100:02d}"


@dataclass(frozen=True)
class Failures:
    since: datetime
    total: int
    by_cause: list[tuple[str, int]]
    by_terminal: list[tuple[str, int]]
    by_rail: list[tuple[str, int]]
    by_hour: list[int]  # 24 local hours
    spikes: list[Spike]


def failures(
    conn: Connection, principal: Principal, *, now: datetime, tz: str, config: ConsoleConfig
) -> Failures:
    je = journal_entries
    since = now - timedelta(days=config.analytics_days)
    bucket = _hour_bucket(conn).label("bucket")
    rows = conn.execute(
        select(je.c.tid, je.c.rail, je.c.state, je.c.response_code, bucket, func.count().label("n"))
        .where(
            je.c.kind.in_(PAYMENT_KINDS),
            je.c.state.in_(FAILED_STATES),
            je.c.created_at >= since,
            je.c.created_at <= now,
            principal.scope_tid(je.c.tid),
        )
        .group_by(je.c.tid, je.c.rail, je.c.state, je.c.response_code, bucket)
    ).all()
    zone = merchant_zone(tz)
    by_cause: Counter[str] = Counter()
    by_terminal: Counter[str] = Counter()
    by_rail: Counter[str] = Counter()
    by_hour = [0] * 24
    per_bucket: dict[str, Counter[datetime]] = defaultdict(Counter)  # tid -> local hour start -> n
    for r in rows:
        n = int(r.n)
        local = to_merchant_local(datetime.strptime(r.bucket, "%Y-%m-%d %H"), zone)
        by_cause[cause_of(r.state, r.response_code)] += n
        by_terminal[r.tid] += n
        by_rail[r.rail] += n
        by_hour[local.hour] += n
        per_bucket[r.tid][local] += n
    hours_in_window = config.analytics_days * 24
    factor = Fraction(str(config.spike_factor))
    spikes = []
    for tid in sorted(per_bucket):
        buckets = per_bucket[tid]
        baseline = Fraction(sum(buckets.values()), hours_in_window)
        hot: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
        for start, n in buckets.items():
            if n >= config.spike_min_failures and n > factor * baseline:
                hot[start.hour].append((start, n))
        for hour in sorted(hot):
            hits = sorted(hot[hour])
            spikes.append(
                Spike(tid, hour, [s.date().isoformat() for s, _ in hits], sum(n for _, n in hits), baseline)
            )
    spikes.sort(key=lambda s: (-len(s.days), -s.failures, s.tid))
    return Failures(
        since=since,
        total=sum(by_terminal.values()),
        by_cause=by_cause.most_common(),
        by_terminal=by_terminal.most_common(),
        by_rail=by_rail.most_common(),
        by_hour=by_hour,
        spikes=spikes,
    )
