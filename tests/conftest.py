"""Shared fixtures: the profile's worked examples and a database on each backend."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# CI replays the same examples every run (a red CI then means a change broke something, not
# that a new example turned up); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _vectors_path() -> Path:
    path = ROOT.parent / "shared" / "protocol" / "vectors.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the profile's examples live in shared/ beside the checkout"
        )
    return path


@pytest.fixture(scope="session")
def vectors() -> dict[str, dict[str, Any]]:
    data = json.loads(_vectors_path().read_text())
    return {v["name"]: v for v in data["vectors"]}


def _pg_admin_url() -> str | None:
    url = os.environ.get("TILLROLL_TEST_PG", PG_DEFAULT)
    if url == "off":
        return None
    return url


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A private PostgreSQL database for this test run (parallel runs do not collide)."""
    import sqlalchemy as sa

    admin_url = _pg_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL tests switched off (TILLROLL_TEST_PG=off)")
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432: start it or set TILLROLL_TEST_PG=off")
    name = f"tillroll_test_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = str(sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty host database: a SQLite file, or a freshly emptied PostgreSQL database."""
    monkeypatch.setenv("TILLROLL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'host.db'}"
    import sqlalchemy as sa

    url: str = request.getfixturevalue("pg_database")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    return url
