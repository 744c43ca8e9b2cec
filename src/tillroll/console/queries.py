"""Read queries shared by the console's pages, each scoped to the asking user's merchant.

The business day is the merchant's (``merchants.tz``); an operator, who sees every merchant,
gets Asia/Shanghai's day (the default zone of the stack)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, func, select

from tillroll.clock import DEFAULT_MERCHANT_TZ, local_day_bounds, merchant_zone, to_merchant_local
from tillroll.console.auth import Principal
from tillroll.store.tables import journal_entries, merchants, recon_exceptions, terminal_status, terminals

# The terminal states that mean "the customer paid" / "it did not go through" (either rail).
APPROVED_STATES = ("approved", "voided", "reversal_pending", "success")
FAILED_STATES = (
    "declined",
    "not_processed",
    "unknown",
    "reversed",
    "refused",
    "not_sent",
    "closed",
    "revoked",
)
PAYMENT_KINDS = ("sale", "qr_pay")
OPEN_EXCEPTION_STATES = ("open", "in_progress")
# A terminal not heard from for this long needs attention.
SILENT_AFTER = timedelta(hours=2)


def zone_name(conn: Connection, principal: Principal) -> str:
    if principal.mid is None:
        return DEFAULT_MERCHANT_TZ
    tz = conn.execute(select(merchants.c.tz).where(merchants.c.mid == principal.mid)).scalar()
    return str(tz or DEFAULT_MERCHANT_TZ)


def business_day(
    conn: Connection, principal: Principal, now: datetime
) -> tuple[date, datetime, datetime, str]:
    """Today in the user's merchant time: (day, start, end as naive UTC, zone name)."""
    tz = zone_name(conn, principal)
    day = to_merchant_local(now, merchant_zone(tz)).date()
    start, end = local_day_bounds(day, merchant_zone(tz))
    return day, start, end, tz


def day_bounds(conn: Connection, principal: Principal, day: date) -> tuple[datetime, datetime, str]:
    tz = zone_name(conn, principal)
    start, end = local_day_bounds(day, merchant_zone(tz))
    return start, end, tz


@dataclass(frozen=True)
class Attention:
    tid: str
    reasons: list[str]


@dataclass(frozen=True)
class Today:
    day: date
    tz: str
    payments: int
    approved: int
    failed: int
    volume_minor: int
    by_rail: list[dict[str, Any]]
    open_exceptions: list[tuple[str, int]]
    attention: list[Attention]

    @property
    def approval_rate(self) -> str:
        decided = self.approved + self.failed
        if not decided:
            return "—"
        # A percentage to one decimal, computed in integers (no float formatting surprises).
        tenths = (self.approved * 1000 + decided // 2) // decided
        return f"{tenths // 10}.{tenths % 10}%"


def today(conn: Connection, principal: Principal, *, now: datetime) -> Today:
    day, start, end, tz = business_day(conn, principal, now)
    je = journal_entries
    approved = case((je.c.state.in_(APPROVED_STATES), 1), else_=0)
    failed = case((je.c.state.in_(FAILED_STATES), 1), else_=0)
    rows = conn.execute(
        select(
            je.c.rail,
            func.count().label("n"),
            func.sum(approved).label("approved"),
            func.sum(failed).label("failed"),
            func.sum(case((je.c.state.in_(APPROVED_STATES), je.c.amount_minor), else_=0)).label("volume"),
        )
        .where(
            je.c.kind.in_(PAYMENT_KINDS),
            je.c.created_at >= start,
            je.c.created_at < end,
            principal.scope_tid(je.c.tid),
        )
        .group_by(je.c.rail)
        .order_by(je.c.rail)
    ).all()
    by_rail = [
        {
            "rail": r.rail,
            "n": int(r.n),
            "approved": int(r.approved or 0),
            "failed": int(r.failed or 0),
            "volume": int(r.volume or 0),
        }
        for r in rows
    ]
    ex = recon_exceptions
    open_ex = conn.execute(
        select(ex.c["class"], func.count())
        .where(ex.c.state.in_(OPEN_EXCEPTION_STATES), principal.scope(ex.c.mid))
        .group_by(ex.c["class"])
        .order_by(ex.c["class"])
    ).all()
    return Today(
        day=day,
        tz=tz,
        payments=sum(r["n"] for r in by_rail),
        approved=sum(r["approved"] for r in by_rail),
        failed=sum(r["failed"] for r in by_rail),
        volume_minor=sum(r["volume"] for r in by_rail),
        by_rail=by_rail,
        open_exceptions=[(str(c), int(n)) for c, n in open_ex],
        attention=attention(conn, principal, now=now),
    )


def attention(conn: Connection, principal: Principal, *, now: datetime) -> list[Attention]:
    """Terminals that need someone: not signed in, reversals pending, printer not ok, silent,
    or an open sign-in-failure exception."""
    ts = terminal_status
    rows = conn.execute(
        select(terminals.c.tid, ts.c.signed_in, ts.c.pending_reversals, ts.c.printer, ts.c.received_at)
        .select_from(terminals.outerjoin(ts, ts.c.tid == terminals.c.tid))
        .where(principal.scope(terminals.c.mid), terminals.c.status == "active")
        .order_by(terminals.c.tid)
    ).all()
    failing = set(
        conn.execute(
            select(recon_exceptions.c.tid).where(
                recon_exceptions.c["class"] == "signin_failures",
                recon_exceptions.c.state.in_(OPEN_EXCEPTION_STATES),
                principal.scope(recon_exceptions.c.mid),
            )
        ).scalars()
    )
    out = []
    for r in rows:  # one row per terminal of the merchant: a handful, not the day's payments
        reasons = []
        if r.received_at is None:
            reasons.append("never_reported")
        else:
            if not r.signed_in:
                reasons.append("not_signed_in")
            if r.pending_reversals:
                reasons.append("pending_reversals")
            if r.printer != "ok":
                reasons.append("printer")
            if now - r.received_at > SILENT_AFTER:
                reasons.append("silent")
        if r.tid in failing:
            reasons.append("signin_failures")
        if reasons:
            out.append(Attention(r.tid, reasons))
    return out


def terminal_ids(conn: Connection, principal: Principal) -> list[str]:
    return list(
        conn.execute(
            select(terminals.c.tid).where(principal.scope(terminals.c.mid)).order_by(terminals.c.tid)
        ).scalars()
    )
