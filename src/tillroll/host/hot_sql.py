"""The sale lane's statements as plain SQL on the DBAPI cursor of SQLAlchemy's connection.

The same text on SQLite and PostgreSQL, bar the placeholders (`?`, numbered `$k` on PostgreSQL),
the row locks SQLite has no words for (it holds the whole database's write lock from BEGIN
IMMEDIATE), and how many rows one statement writes (below). Compiling a Core
statement costs more than running it on SQLite; these few run for every group, so they are
written once here, and everything else stays SQLAlchemy Core. They run on the DBAPI connection
inside SQLAlchemy's (its transaction, its savepoints), on a cursor of their own: SQLAlchemy's
execution and result wrapping cost as much again as SQLite's work for these. So they are not in
SQLAlchemy's statement log, and their errors are the driver's (the lane falls back on any).
Values go through the column types' own bind and result processors (SQLite keeps datetimes as
SQLAlchemy's text format).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, DateTime, Table
from sqlalchemy.engine import Dialect

from tillroll.store.tables import (
    issuer_authorizations,
    issuer_messages,
    ledger_entries,
    ledger_postings,
    requests,
    transactions,
)

TERMINAL_COLUMNS = ("tid", "mid", "status", "batch", "name", "fee_rate_ppm")
SESSION_COLUMNS = ("id", "tid", "batch", "pik_enc", "mak_enc", "state", "expires_at")
CARD_COLUMNS = ("id", "pan", "expiry", "pin_offset", "pin_tries", "status", "balance_minor", "limit_minor")


class HotSql:
    """The lane's statements for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.postgres = dialect.name == "postgresql"
        impl = DateTime().dialect_impl(dialect)
        self._to_db = impl.bind_processor(dialect)  # SQLite: the text SQLAlchemy stores
        self._from_db = impl.result_processor(dialect, None)

    def _cursor(self, conn: Connection) -> contextlib.closing[Any]:
        """A cursor of the DBAPI connection inside `conn`, closed after use. On PostgreSQL a
        raw one: psycopg takes `$n` as they are instead of parsing the text for `%s` (which it
        does anew for every statement longer than 4 KiB, as a group's multi-row INSERT is)."""
        driver: Any = conn.connection.driver_connection
        cursor = psycopg.RawCursor(driver) if self.postgres else driver.cursor()
        return contextlib.closing(cursor)

    def _run(self, conn: Connection, sql: str, params: Sequence[Any]) -> list[Any]:
        """One statement; its rows (none for a write)."""
        with self._cursor(conn) as cursor:
            cursor.execute(_numbered(sql) if self.postgres else sql, params)
            return cursor.fetchall() if cursor.description is not None else []

    @staticmethod
    def _marks(n: int) -> str:
        return ", ".join(["?"] * n)

    # --- reads of a run ----------------------------------------------------------------------

    @functools.cache  # noqa: B019 - one HotSql per dialect, for the process's life
    def _terminals_sql(self, n: int) -> str:
        lock = " FOR SHARE OF t" if self.postgres else ""
        return (
            "SELECT t.tid, t.mid, t.status, t.batch, m.name, m.fee_rate_ppm FROM terminals t "
            f"JOIN merchants m ON m.mid = t.mid WHERE t.tid IN ({self._marks(n)}) ORDER BY t.tid{lock}"
        )

    def terminals(self, conn: Connection, tids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Share-locked (PostgreSQL) like `card.open_batch_locked`: a host-side close waits."""
        rows = self._run(conn, self._terminals_sql(len(tids)), tuple(tids))
        return {r[0]: dict(zip(TERMINAL_COLUMNS, r, strict=True)) for r in rows}

    @functools.cache  # noqa: B019
    def _sessions_sql(self, n: int) -> str:
        return (
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE id IN "
            f"(SELECT max(id) FROM sessions WHERE tid IN ({self._marks(n)}) GROUP BY tid)"
        )

    def latest_sessions(self, conn: Connection, tids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for r in self._run(conn, self._sessions_sql(len(tids)), tuple(tids)):
            row = dict(zip(SESSION_COLUMNS, r, strict=True))
            if self._from_db is not None:
                row["expires_at"] = self._from_db(row["expires_at"])
            row["pik_enc"], row["mak_enc"] = bytes(row["pik_enc"]), bytes(row["mak_enc"])
            found[row["tid"]] = row
        return found

    @functools.cache  # noqa: B019
    def _stored_sql(self, n: int) -> str:
        # A join with the keys as a table: SQLite scans the whole unique index for a row-value
        # IN (VALUES …), and searches it key by key for this.
        values = ", ".join([f"({self._marks(4)})"] * n)
        return (
            f"WITH k(tid, batch, stan, mti) AS (VALUES {values}) "
            "SELECT r.tid, r.batch, r.stan, r.mti FROM k JOIN requests r "
            "ON r.tid = k.tid AND r.batch = k.batch AND r.stan = k.stan AND r.mti = k.mti"
        )

    def stored_keys(
        self, conn: Connection, keys: Sequence[tuple[str, str, str, str]]
    ) -> set[tuple[str, ...]]:
        """Which of these idempotency keys have a stored request already (uq_requests_key)."""
        if not keys:
            return set()
        params = tuple(part for key in keys for part in key)
        return {tuple(r) for r in self._run(conn, self._stored_sql(len(keys)), params)}

    @functools.cache  # noqa: B019
    def _cards_sql(self, n: int) -> str:
        lock = " FOR UPDATE" if self.postgres else ""
        return (
            f"SELECT {', '.join(CARD_COLUMNS)} FROM issuer_cards WHERE pan IN ({self._marks(n)}) "
            f"ORDER BY id{lock}"
        )

    def cards(self, conn: Connection, pans: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Locked for update (PostgreSQL) in id order, so two groups never wait on each other
        in a circle."""
        if not pans:
            return {}
        rows = self._run(conn, self._cards_sql(len(pans)), tuple(pans))
        return {r[1]: dict(zip(CARD_COLUMNS, r, strict=True)) for r in rows}

    # --- writes of a run ---------------------------------------------------------------------

    @functools.cache  # noqa: B019
    def _insert(self, table: Table) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
        columns = tuple(c.name for c in table.columns if c.name != "id" or table in WITH_IDS)
        datetimes = tuple(i for i, name in enumerate(columns) if isinstance(table.c[name].type, DateTime))
        return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ", columns, datetimes

    def insert(self, conn: Connection, table: Table, rows: Sequence[dict[str, object]]) -> None:
        """`rows` (dicts of every column; ids where the lane chose them) in one statement."""
        _, columns, datetimes = self._insert(table)
        to_db = self._to_db
        stored: dict[object, object] = {}  # a run's rows share few instants: each converted once
        params = []
        for row in rows:
            values = [row[c] for c in columns]
            if to_db is not None:
                for i in datetimes:
                    instant = values[i]
                    if instant not in stored:
                        stored[instant] = to_db(instant)
                    values[i] = stored[instant]
            params.append(tuple(values))
        self._run_rows(conn, functools.partial(self._insert_rows_sql, table), params)

    def _run_rows(
        self, conn: Connection, sql_for: Callable[[int], str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """`rows` as few statements of many rows each (`sql_for(n)`: the text for n rows), not one
        per row: on PostgreSQL each row executed on its own cost the server as much as the rest of
        the sale; on SQLite it is ~1 % fewer instructions than executemany."""
        for i in range(0, len(rows), ROWS_PER_STATEMENT_MAX):
            chunk = rows[i : i + ROWS_PER_STATEMENT_MAX]
            self._run(conn, sql_for(len(chunk)), [value for row in chunk for value in row])

    @functools.cache  # noqa: B019
    def _insert_rows_sql(self, table: Table, n: int) -> str:
        head, columns, _ = self._insert(table)
        row = f"({self._marks(len(columns))})"
        return head + ", ".join([row] * n)

    # --- the run's savepoint --------------------------------------------------------------------

    def savepoint(self, conn: Connection) -> None:
        self._run(conn, f"SAVEPOINT {LANE_SAVEPOINT}", ())

    def release_savepoint(self, conn: Connection) -> None:
        self._run(conn, f"RELEASE SAVEPOINT {LANE_SAVEPOINT}", ())

    def rollback_to_savepoint(self, conn: Connection) -> None:
        """Undo the run's writes and end its savepoint (the transaction goes on)."""
        self._run(conn, f"ROLLBACK TO SAVEPOINT {LANE_SAVEPOINT}", ())
        self.release_savepoint(conn)

    def set_balances(self, conn: Connection, balances: Sequence[tuple[int, int]]) -> None:
        """(balance, card id) pairs."""
        self._run_rows(conn, self._balances_sql, balances)

    @functools.cache  # noqa: B019
    def _balances_sql(self, n: int) -> str:
        rows = ", ".join(["(CAST(? AS BIGINT), CAST(? AS BIGINT))"] * n)
        return (
            f"WITH v(balance, id) AS (VALUES {rows}) "
            "UPDATE issuer_cards SET balance_minor = v.balance FROM v WHERE issuer_cards.id = v.id"
        )


@functools.lru_cache(maxsize=1024)
def _numbered(sql: str) -> str:
    """PostgreSQL's placeholders for SQLite's: the k-th `?` becomes `$k` (no `?` is anything
    else in these statements)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${k}{part}" for k, part in enumerate(parts[1:], start=1))


LANE_SAVEPOINT = "sale_lane_run"
# Rows in one multi-row statement: far below PostgreSQL's 65,535 parameters and SQLite's 32,766
# for any table (a group is at most 256 sales, two postings each).
ROWS_PER_STATEMENT_MAX = 500
# Tables whose ids the lane hands out itself (`IdAllocator`); the others' come from the database.
WITH_IDS = (requests, issuer_authorizations, ledger_entries)
WRITTEN = (requests, issuer_authorizations, issuer_messages, ledger_entries, ledger_postings, transactions)
