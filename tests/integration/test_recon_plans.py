"""Reconciliation reads one day, whatever the store's history: every statement a run sends to
SQLite finds the store's rows through an index (a SEARCH in its query plan), never by walking a
whole store table (a SCAN). A nightly run over months of history must cost what one day costs;
a plan that scans grows with the history, which a benchmark of one generated day cannot show.

The plans are SQLite's (EXPLAIN QUERY PLAN of each statement, with its parameters, on the
connection that runs it, so the run's working tables exist); PostgreSQL chooses by statistics,
and uses the same indexes once a table is large enough for them to matter.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from tillroll.host.store import HostStore, open_store
from tillroll.recon import generate as g
from tillroll.recon.run import run_day
from tillroll.store.tables import metadata

DAY = date(2026, 12, 1)
# Reference tables hold one row per merchant or terminal, not one per payment: they do not grow
# with the history, and walking them is how the day's rows find their merchant's time zone.
REFERENCE_TABLES = frozenset({"merchants", "terminals"})
HISTORY_TABLES = frozenset(metadata.tables) - REFERENCE_TABLES
_SCAN = re.compile(r"^SCAN (\w+)")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HostStore]:
    s = open_store(f"sqlite:///{tmp_path / 'host.db'}")
    yield s
    s.engine.dispose()


def scans_of_store_tables(store: HostStore, work: Any) -> dict[str, set[str]]:
    """Run ``work`` and return, per history table walked whole, the statements that walked it."""
    found: dict[str, set[str]] = {}

    def explain(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if executemany or not re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", statement, re.I):
            return
        if re.match(r"\s*INSERT\b", statement, re.I) and " SELECT " not in statement.upper():
            return  # INSERT ... VALUES reads nothing
        raw: sqlite3.Connection = cursor.connection
        for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters):
            m = _SCAN.match(row[3])
            if m and m.group(1) in HISTORY_TABLES:
                found.setdefault(m.group(1), set()).add(" ".join(statement.split())[:160])

    event.listen(store.engine, "before_cursor_execute", explain)
    try:
        work()
    finally:
        event.remove(store.engine, "before_cursor_execute", explain)
    return found


def test_a_run_walks_no_history_table_whole(store: HostStore) -> None:
    # One day with every fault planted (every rule has rows to find). SQLite plans without
    # statistics as if every table were large, so the plans are those of a long history.
    spec = g.DaySpec(DAY, 300, faults=g.plant(300, list(g.Fault), seed=7))
    g.load(store.engine, spec)
    now = g.DayGenerator(spec).hi + timedelta(hours=3)

    scans = scans_of_store_tables(store, lambda: run_day(store.engine, DAY, now=now))

    assert scans == {}, "\n".join(f"{table}: {sorted(sql)}" for table, sql in scans.items())
