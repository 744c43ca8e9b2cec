"""One reconciliation run of one business day: stage, match, upsert the exceptions, summarise.

Everything happens in SQL in one transaction of one connection: the working tables (``stage``)
are temporary tables of that connection, the rules (``rules``) fill ``rc_found``, and the
exception queue is upserted from it by (class, key): a rerun finds the same record (its evidence
and run id are refreshed), a resolved or written-off one is left alone, a clean day adds none.
The automatic actions run after the commit, through ``after`` (part C's ``apply_automatic``), on
the ids of the exceptions this run opened.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, case, exists, func, insert, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from tillroll.recon import rules, side, stage
from tillroll.recon.model import EXCEPTION_FINAL, ExceptionState
from tillroll.recon.rules import Params, rc_found
from tillroll.recon.statement import BEIJING
from tillroll.recon.timing import Steps
from tillroll.store import inserted_id
from tillroll.store.tables import (
    merchants,
    recon_exceptions,
    recon_runs,
    statement_problems,
    wallet_statement_imports,
)

_RUN_LOCK = 0x7E_C0_0000_0000  # pg_advisory_xact_lock keys of the runs: this + the day's ordinal


@dataclass(frozen=True)
class ReconConfig:
    ageing_s: int = 900  # 15 min: before that a missing other side is "pending", not an exception
    refund_deadline_s: int = 1800  # an open refund older than this is stuck
    duplicate_window_s: int = 120  # the same card and amount twice within this is a duplicate
    business_hours: tuple[int, int] = (8, 22)  # local hours in which a key session must not expire
    exception_deadline_s: int = 86400  # an exception's deadline after it is opened
    beside: bool = True  # SQLite file: the wallet rail and the host's rules on a second connection


@dataclass
class RunResult:
    run_id: int
    business_date: str
    opened: list[int]  # the exceptions this run opened (the automatic actions' input)
    found: dict[str, int]  # per class, opened or found again
    summary: dict[str, Any] = field(default_factory=dict)
    steps_s: dict[str, float] = field(default_factory=dict)  # wall seconds per step (the benchmark's)


AfterRun = Callable[[list[int]], object]


def parse_business_date(text: str) -> date:
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"date {text!r} is not a day: write it as YYYY-MM-DD, e.g. 2026-12-01") from None


def _utc(local: datetime, tz: ZoneInfo) -> datetime:
    return local.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


def day_rows(conn: Connection, day: date, config: ReconConfig) -> list[dict[str, Any]]:
    """rc_day: each merchant's business day in UTC (its own time zone), and the windows around it."""
    margin = timedelta(seconds=config.ageing_s)
    start, end = datetime.combine(day, time()), datetime.combine(day + timedelta(days=1), time())
    open_h, close_h = config.business_hours
    out = []
    for mid, tz_name in conn.execute(select(merchants.c.mid, merchants.c.tz)):
        tz = ZoneInfo(tz_name)
        lo, hi = _utc(start, tz), _utc(end, tz)
        out.append(
            {
                "mid": mid,
                "lo": lo,
                "hi": hi,
                "wlo": lo - margin,
                "whi": hi + margin,
                "bh_lo": _utc(start + timedelta(hours=open_h), tz),
                "bh_hi": _utc(start + timedelta(hours=close_h), tz),
                "tail_from": hi - margin,
            }
        )
    return out


def _imported(conn: Connection, day: date) -> bool:
    return bool(
        conn.execute(
            select(exists().where(wallet_statement_imports.c.bill_date == day.strftime("%Y%m%d")))
        ).scalar()
    )


def _upsert(conn: Connection, p: Params, run_id: int, deadline: datetime) -> list[int]:
    """rc_found into recon_exceptions by (class, key); the ids of the records that are new."""
    e, f = recon_exceptions, rc_found
    conn.execute(
        update(f).where(exists().where(e.c["class"] == f.c.cls, e.c.key == f.c.key)).values(existed=1)
    )
    cols = [
        "class",
        "key",
        "business_date",
        "state",
        "mid",
        "tid",
        "rail",
        "rrn",
        "order_no",
        "batch",
        "stan",
        "amount_minor",
        "deadline",
        "evidence",
        "run_id",
        "created_at",
        "updated_at",
    ]
    source = select(
        f.c.cls,
        f.c.key,
        literal(p.business_date),
        literal(ExceptionState.OPEN.value),
        f.c.mid,
        f.c.tid,
        f.c.rail,
        f.c.rrn,
        f.c.order_no,
        f.c.batch,
        f.c.stan,
        f.c.amount_minor,
        literal(deadline),
        f.c.evidence,
        literal(run_id),
        literal(p.now),
        literal(p.now),
    ).where(literal(1) == 1)  # SQLite: an INSERT ... SELECT with ON CONFLICT needs a WHERE
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(e).from_select(
        cols, source
    )
    ins = ins.on_conflict_do_update(
        index_elements=["class", "key"],
        set_={
            "evidence": ins.excluded.evidence,
            "run_id": ins.excluded.run_id,
            "amount_minor": ins.excluded.amount_minor,
            "updated_at": ins.excluded.updated_at,
        },
        where=e.c.state.not_in([s.value for s in EXCEPTION_FINAL]),
    )
    conn.execute(ins)
    # The day's found rows drive the join (an index lookup each); sorted here, since an ORDER BY
    # e.id made SQLite walk every exception ever recorded in id order instead.
    new = select(e.c.id).select_from(f).join(e, and_(e.c["class"] == f.c.cls, e.c.key == f.c.key))
    return sorted(int(i) for i in conn.execute(new.where(f.c.existed == 0)).scalars())


def _summary(conn: Connection, p: Params, day: date, wallet: dict[str, int]) -> dict[str, Any]:
    """The run's summary: the card rail counted here (one scan of rc_card), the wallet rail's
    counts as ``side.wallet_and_host`` made them, the classes and rules from rc_found."""
    c, f = stage.rc_card.c, rc_found.c

    def n(cond: Any) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    card = conn.execute(
        select(
            n(c.j_id.is_not(None)),
            n(c.h_id.is_not(None)),
            n(c.matched_by == "rrn"),
            n(c.matched_by == "tid_batch_stan"),
            n(rules.pending_card(p)),
        ).where(c.core == 1)
    ).one()
    sources = {
        "journal_card": card[0],
        "host": card[1],
        "journal_wallet": wallet["journal_wallet"],
        "statement": wallet["statement"],
    }
    matched = {"rrn": card[2], "tid_batch_stan": card[3]}
    classes: dict[Any, Any] = dict(conn.execute(select(f.cls, func.count()).group_by(f.cls)).all())
    by_rule: dict[Any, Any] = dict(conn.execute(select(f.rule, func.count()).group_by(f.rule)).all())
    problems = conn.execute(
        select(func.count()).where(statement_problems.c.bill_date == day.strftime("%Y%m%d"))
    ).scalar_one()
    return {
        "sources": {k: int(v) for k, v in sources.items()},
        "matched_by": {str(k): int(v) for k, v in matched.items()},
        "classes": {str(k): int(v) for k, v in classes.items()},
        "rules": {str(k): int(v) for k, v in by_rule.items()},
        "pending": {"card": int(card[4]), "wallet": wallet["pending_wallet"]},
        "statement": {
            "imported": p.stmt_ready,
            "next_day_imported": p.stmt_next_ready,
            "problems": int(problems),
        },
    }


def _card_and_rest(
    conn: Connection,
    p: Params,
    window: side.Window,
    queue: side.RuleQueue,
    beside: side.WalletBeside | None,
    steps: Steps,
) -> dict[str, int]:
    """Stage and match the card rail; the host's rules left; the wallet rail's side (here, or
    what the second connection found). The wallet rail's counts."""
    stage.fill_card(conn, lo=window.lo, hi=window.hi)
    steps.mark("stage_card")
    if conn.dialect.name == "postgresql":  # a temporary table has no statistics until asked:
        for table in ("rc_day", "rc_term", "rc_card"):  # without, nested loops
            conn.exec_driver_sql(f"ANALYZE {table}")
        steps.mark("analyze")
    for rule in rules.CARD_RULES:
        rule(conn, p)
        steps.mark(rule.__name__)
    if beside is None:
        return side.wallet_and_host(conn, p, window, queue, steps)
    queue.run(conn, p, steps)
    got = beside.result()
    steps.mark("wait_beside")
    side.add_found(conn, got.found)
    steps.took.update(got.steps)
    return got.counts


def _run(
    engine: Engine, conn: Connection, day: date, now: datetime, config: ReconConfig, steps: Steps
) -> tuple[dict[str, Any], int, list[int]]:
    iso = day.isoformat()
    if conn.dialect.name == "postgresql":
        # One run of a day at a time (the schedule of two web processes, a CLI run beside them):
        # racing runs would each count the other's new records as their own and hand them to the
        # automatic actions twice. SQLite's single writer (BEGIN IMMEDIATE) already serialises.
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _RUN_LOCK + day.toordinal()})
    run_id = inserted_id(conn.execute(insert(recon_runs).values(business_date=iso, started_at=now)))
    stage.create(conn)
    rc_found.drop(conn, checkfirst=True)
    rc_found.create(conn)
    days = day_rows(conn, day, config)
    if days:
        conn.execute(insert(stage.rc_day), days)
    stage.fill_terminals(conn)
    margin = timedelta(seconds=config.ageing_s)
    s_lo = datetime.combine(day, time()) - BEIJING  # the statement's own day (Beijing)
    s_hi = s_lo + timedelta(days=1)
    lo = min([d["wlo"] for d in days] + [s_lo - margin])
    hi = max([d["whi"] for d in days] + [s_hi + margin])
    p = Params(
        business_date=iso,
        now=now,
        recent_from=now - timedelta(seconds=config.ageing_s),
        stuck_before=now - timedelta(seconds=config.refund_deadline_s),
        stmt_ready=_imported(conn, day),
        stmt_next_ready=_imported(conn, day + timedelta(days=1)),
        duplicate_window_s=config.duplicate_window_s,
        window_lo=lo,
        window_hi=hi,
    )
    window = side.Window(lo=lo, hi=hi, stmt_lo=s_lo, stmt_hi=s_hi)
    steps.mark("setup")
    # the wallet rail: beside the card rail on a SQLite file (a second connection in a thread),
    # after it on PostgreSQL (this connection); the same statements. The host's rules go to
    # whichever connection is free first.
    queue = side.RuleQueue()
    use_beside = config.beside and side.runs_beside(engine)
    beside = side.WalletBeside(engine, p, window, days, queue) if use_beside else None
    try:
        wallet = _card_and_rest(conn, p, window, queue, beside, steps)
    except BaseException:
        if beside is not None:
            beside.abandon()  # its connection ends before this one rolls back
        raise
    opened = _upsert(conn, p, run_id, now + timedelta(seconds=config.exception_deadline_s))
    steps.mark("upsert")
    summary = _summary(conn, p, day, wallet)
    steps.mark("summary")
    summary["new_exceptions"] = len(opened)
    conn.execute(
        update(recon_runs)
        .where(recon_runs.c.id == run_id)
        .values(finished_at=now, summary=json.dumps(summary, sort_keys=True))
    )
    if conn.dialect.name != "sqlite":  # SQLite: run_day closes the connection instead
        rc_found.drop(conn)
        stage.drop(conn)
        steps.mark("drop")
    return summary, run_id, opened


def run_day(
    engine: Engine,
    business_date: date | str,
    *,
    now: datetime,
    config: ReconConfig | None = None,
    after: AfterRun | None = None,
) -> RunResult:
    """Reconcile one business day (each merchant's own time zone) as of ``now`` (naive UTC)."""
    config = config or ReconConfig()
    day = parse_business_date(business_date) if isinstance(business_date, str) else business_date
    iso = day.isoformat()
    steps = Steps()
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":  # before BEGIN: SQLite refuses temp_store inside one
            raw: Any = conn.connection.driver_connection
            raw.execute("PRAGMA temp_store=MEMORY")  # the working tables never touch disk
            for pragma in side.READ_PRAGMAS:  # the day's pages read mapped, and cached beyond the map
                raw.execute(f"PRAGMA {pragma}")
        with conn.begin():
            summary, run_id, opened = _run(engine, conn, day, now, config, steps)
        steps.mark("commit")
        if conn.dialect.name == "sqlite":
            # The working tables go with the connection: closing it frees their memory at once,
            # where DROP TABLE inside the transaction walked (and journalled) every page of them
            # (0.5 s at 1M payments). The pool opens a new connection for the next user.
            conn.invalidate()
            steps.mark("close")
    result = RunResult(run_id, iso, opened, dict(summary["classes"]), summary, steps.took)
    if after is not None and opened:
        after(opened)
    return result
