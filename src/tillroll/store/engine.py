"""Engine factory: the embedded SQLite default, or any PostgreSQL URL, from the same code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tillroll.owner_only import private_dir, private_file

DEFAULT_DATA_DIR = Path("tillroll-data")


class DatabaseUrlError(ValueError):
    pass


def default_db_url() -> str:
    """`TILLROLL_DB`, else a SQLite file in ./tillroll-data/."""
    env = os.environ.get("TILLROLL_DB")
    if env:
        return env
    private_dir(DEFAULT_DATA_DIR)
    return f"sqlite:///{(DEFAULT_DATA_DIR / 'host.db').resolve()}"


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` URLs: the driver here is psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if not (url.startswith("sqlite") or url.startswith("postgresql+")):
        raise DatabaseUrlError(
            f"database URL {url!r} is not supported: use sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    return url


CACHE_KIB = 64 * 1024  # SQLite page cache per connection


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    # SQLite's default page cache is 2 MiB: the host's hot indexes outgrow it within minutes and
    # every group then re-reads pages from the OS. 64 MiB, taken only as pages are used
    # (bench/host_auth.py --db-process: 4 of 4 back-to-back pairs faster, +10..37 %).
    cur.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    cur.close()


def make_engine(url: str | None = None, *, pool_size: int = 8) -> Engine:
    """An engine whose error texts never carry bound parameters (they hold card numbers).

    A SQLite file is created 0600 before SQLite opens it: SQLite gives its -wal and -shm files
    the database file's mode, so all three are owner-only from the start."""
    url = normalize_url(url or default_db_url())
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            private_file(Path(path))
        engine = create_engine(url, poolclass=NullPool if not path else None, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))

        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True
    )


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row an INSERT just made."""
    key = result.inserted_primary_key
    if key is None:  # pragma: no cover - every table here has an integer key
        raise RuntimeError("INSERT returned no primary key")
    return int(key[0])
