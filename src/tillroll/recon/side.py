"""The wallet rail and the host's own rules, on the run's connection or beside it.

A run has three groups of rules that read different working tables (``rules.CARD_RULES`` over
rc_card, ``rules.WALLET_RULES`` over rc_stmt and rc_wallet, ``rules.HOST_RULES`` over rc_sale,
the host's sales of the day) and can never find the same (class, key). The card rail is staged
and matched on the run's own connection; the wallet rail (``wallet_and_host``) is the same
statements whichever connection runs it:

- on PostgreSQL, after the card rail, on the run's connection, in its transaction;
- on a SQLite file, at the same time on a second connection in a second thread
  (``WalletBeside``): SQLite executes a statement without holding Python's GIL, so the two rails
  use both cores. The second connection reads in a transaction of its own, begun after the run's
  BEGIN IMMEDIATE: no other writer can commit in between, so both see the same store. Its own
  temporary tables hold its working rows; what it found (a few rows of ``rc_found``) and its
  counts are handed back and inserted into the run's ``rc_found`` before the upsert.

The host's rules (``RuleQueue``) are run by whichever connection is free first, after staging
rc_sale on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, create_engine, event, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import NullPool

from tillroll.recon import rules, stage
from tillroll.recon.rules import Params, rc_found
from tillroll.recon.timing import Steps

Rule = Callable[[Connection, Params], int]


# How a run's connections read a SQLite file: memory-mapped (SQLite caps the map at 2 GB).
READ_PRAGMAS = ("mmap_size=8589934592",)


class RuleQueue:
    """The host's rules, run by whichever connection is free first (the card rail's staging is
    the longer at 1M payments, the wallet rail's side at 3M): rc_sale staged once, then each."""

    def __init__(self) -> None:
        self._rules: list[Rule] = list(rules.HOST_RULES)
        self._lock = threading.Lock()

    def take(self) -> list[Rule]:
        with self._lock:
            taken, self._rules = self._rules, []
            return taken

    def run(self, conn: Connection, p: Params, steps: Steps) -> None:
        """Run the rules if no other connection took them."""
        taken = self.take()
        if not taken:
            return
        stage.fill_sales(conn, lo=p.window_lo, hi=p.window_hi)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE rc_sale")
        steps.mark("stage_sales")
        for rule in taken:
            rule(conn, p)
            steps.mark(rule.__name__)


@dataclass(frozen=True)
class Window:
    """The rows a run reads: every merchant's window (``lo``/``hi``) and the statement's day."""

    lo: datetime
    hi: datetime
    stmt_lo: datetime
    stmt_hi: datetime


@dataclass
class Beside:
    """What the wallet rail and the host's rules found and counted on their connection."""

    found: list[dict[str, Any]]
    counts: dict[str, int]
    steps: dict[str, float] = field(default_factory=dict)


def _n(cond: Any) -> Any:
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


def wallet_and_host(conn: Connection, p: Params, w: Window, queue: RuleQueue, steps: Steps) -> dict[str, int]:
    """Stage the wallet rail (after rc_day and rc_term), run the wallet rules into rc_found,
    count the wallet rail's sources and pending payments (one scan), then run the host's rules
    that are left in ``queue``."""
    stage.fill_statement(conn, lo=w.lo, hi=w.hi)
    steps.mark("stage_statement")
    stage.fill_wallet(conn, lo=w.lo, hi=w.hi, stmt_lo=w.stmt_lo, stmt_hi=w.stmt_hi)
    steps.mark("stage_wallet")
    if conn.dialect.name == "postgresql":  # a temporary table has no statistics until asked
        for table in ("rc_stmt", "rc_wallet"):
            conn.exec_driver_sql(f"ANALYZE {table}")
        steps.mark("analyze")
    for rule in rules.WALLET_RULES:
        rule(conn, p)
        steps.mark(rule.__name__)
    c = stage.rc_wallet.c
    row = conn.execute(
        select(
            _n(c.j_id.is_not(None)),
            _n(c.s_state.is_not(None)),
            _n(rules.pending_wallet(p)),
        ).where(c.core == 1)
    ).one()
    steps.mark("count_wallet")
    queue.run(conn, p, steps)
    return {"journal_wallet": int(row[0]), "statement": int(row[1]), "pending_wallet": int(row[2])}


def _side_engine(engine: Engine) -> Engine:
    """A second engine on the same SQLite file whose connections begin no write transaction."""
    side = create_engine(engine.url, poolclass=NullPool, hide_parameters=True)

    @event.listens_for(side, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # BEGIN is ours
        for pragma in ("busy_timeout=10000", "temp_store=MEMORY", *READ_PRAGMAS):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    return side


def _beside(engine: Engine, p: Params, w: Window, days: list[dict[str, Any]], queue: RuleQueue) -> Beside:
    steps = Steps("beside:")
    side = _side_engine(engine)
    try:
        with side.connect() as conn:
            conn.exec_driver_sql("BEGIN")  # deferred: a read transaction (temp tables aside)
            try:
                stage.create(conn)
                rc_found.create(conn)
                if days:
                    conn.execute(insert(stage.rc_day), days)
                stage.fill_terminals(conn)
                steps.mark("setup")
                counts = wallet_and_host(conn, p, w, queue, steps)
                found = [dict(r) for r in conn.execute(select(rc_found)).mappings()]
            finally:
                conn.exec_driver_sql("ROLLBACK")  # nothing in the store was written
    finally:
        side.dispose()  # the connection closes: its temporary tables go with it
    steps.mark("done")
    return Beside(found, counts, steps.took)


class WalletBeside:
    """The wallet rail and the host's rules on a second SQLite connection, in a thread."""

    def __init__(
        self, engine: Engine, p: Params, w: Window, days: list[dict[str, Any]], queue: RuleQueue
    ) -> None:
        self._queue = queue
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-wallet")
        self._future: Future[Beside] = self._pool.submit(_beside, engine, p, w, days, queue)

    def result(self) -> Beside:
        try:
            return self._future.result()
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Wait for it to end, whatever it found or raised (the run failed on its own side)."""
        self._queue_empty()
        self._pool.shutdown(wait=True)

    def _queue_empty(self) -> None:
        self._queue.take()  # what it has not started, it never will


def add_found(conn: Connection, found: list[dict[str, Any]]) -> None:
    """Rows another connection found, into this connection's rc_found (a (class, key) already
    there is kept, as ``found.insert_found`` does)."""
    if not found:
        return
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(rc_found)
    conn.execute(ins.on_conflict_do_nothing(index_elements=["cls", "key"]), found)


def runs_beside(engine: Engine) -> bool:
    """A second connection sees the same store: a SQLite file (not an in-memory database)."""
    url = engine.url
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
