"""Shared fixtures and run-wide rules.

- `vectors`: the profile's worked examples, from tests/data/vectors.json (in the repository, so a
  lone clone tests; tests/unit/test_vectors_drift.py compares them with ../shared when present).
- `db_url`: runs a test on SQLite and on PostgreSQL. Without a reachable PostgreSQL server the
  PostgreSQL half is deselected with one line at the end of the run, unless `CI` is set: then an
  unreachable server fails the run.
- Hypothesis seed: under CI (or when TILLROLL_HYPOTHESIS_SEED is set) every hypothesis test runs
  from one seed, printed in the run's header, so a CI failure is replayed with that seed.
"""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
VECTORS_PATH = ROOT / "tests" / "data" / "vectors.json"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_CONNECT_TIMEOUT_S = 2.0
SEED_ENV = "TILLROLL_HYPOTHESIS_SEED"

# Under CI (and when replaying a CI seed) examples come from the seed alone: no example database,
# so the printed seed is all it takes to run the same examples again. Hypothesis's own "ci"
# profile, which it loads by itself when CI is set, derandomizes (the same examples every run,
# whatever the seed): this one, built on the default profile, does not.
SEEDED_PROFILE = "tillroll-seeded"
settings.register_profile(
    SEEDED_PROFILE,
    parent=settings.get_profile("default"),
    derandomize=False,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class PgTarget:
    """Where the PostgreSQL tests connect, and whether they can run here."""

    url: str | None  # None: switched off
    reachable: bool
    why_not: str  # empty when reachable


_PG_TARGET = pytest.StashKey[PgTarget]()
_PG_DESELECTED = pytest.StashKey[int]()
_SEED = pytest.StashKey[str]()


def _on_ci() -> bool:
    return bool(os.environ.get("CI"))


def _pg_admin_url() -> str | None:
    url = os.environ.get("TILLROLL_TEST_PG", PG_DEFAULT)
    return None if url == "off" else url


def _pg_probe(url: str) -> str:
    """Empty if something listens where `url` points; otherwise why not (TCP or Unix socket)."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    port = parsed.port or 5432
    host = parsed.host or str(parsed.query.get("host") or "localhost")
    unix = host.startswith("/")  # a Unix-socket directory, libpq style
    where = f"{host}/.s.PGSQL.{port}" if unix else f"{host}:{port}"
    try:
        if unix:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(PG_CONNECT_TIMEOUT_S)
                sock.connect(where)
        else:
            socket.create_connection((host, port), timeout=PG_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return f"no PostgreSQL server reachable at {where} ({exc.strerror or exc})"
    return ""


def _pg_target(config: pytest.Config) -> PgTarget:
    if _PG_TARGET not in config.stash:
        url = _pg_admin_url()
        if url is None:
            target = PgTarget(None, False, "switched off (TILLROLL_TEST_PG=off)")
        else:
            why_not = _pg_probe(url)
            target = PgTarget(url, not why_not, why_not)
        config.stash[_PG_TARGET] = target
    return config.stash[_PG_TARGET]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # The commands' consoles take their width when their module is first imported, and tests read
    # the commands' output: one width for the whole run, whichever test imports them first (with
    # several workers the order differs), so no result line is wrapped.
    os.environ.setdefault("COLUMNS", "220")
    # Runs before hypothesis's own pytest_configure, which turns --hypothesis-seed into the seed
    # of every hypothesis test (stateful ones included). An explicit --hypothesis-seed wins.
    seed = config.getoption("hypothesis_seed", default=None)
    if seed is None:
        seed = os.environ.get(SEED_ENV) or (str(random.SystemRandom().randrange(2**32)) if _on_ci() else None)
        if seed is not None:
            config.option.hypothesis_seed = seed
    if seed is not None:
        config.stash[_SEED] = str(seed)
        settings.load_profile(SEEDED_PROFILE)


def pytest_report_header(config: pytest.Config) -> list[str]:
    seed = config.stash.get(_SEED, None)
    if seed is None:
        return []
    return [f"hypothesis seed: {seed} (replay: {SEED_ENV}={seed} python -m pytest)"]


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected what they deselect
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _slow_first(items)
    postgres = [item for item in items if item.get_closest_marker("postgres")]
    if not postgres:
        return
    target = _pg_target(config)
    if target.reachable or (_on_ci() and target.url is not None):
        return  # runs; on CI an unreachable server fails in the pg_database fixture
    config.hook.pytest_deselected(items=postgres)
    items[:] = [item for item in items if not item.get_closest_marker("postgres")]
    config.stash[_PG_DESELECTED] = len(postgres)


def _slow_first(items: list[pytest.Item]) -> None:
    """The `slow` tests (up to minutes each) start first, each after one short test:
    slow, short, slow, short, ... then the rest in pytest's order (the same on every worker, as
    xdist requires). A worker is sent a test as it finishes one (addopts: --maxschedchunk=1; two
    queued at a time, so the first two go to one worker and the next two to the other): each
    worker starts on a slow test, and takes the next slow one when it is free, so the two
    longest run side by side and the run ends on short tests, not on a long one that started
    late."""
    slow = [item for item in items if item.get_closest_marker("slow")]
    rest = [item for item in items if not item.get_closest_marker("slow")]
    head: list[pytest.Item] = []
    for n, item in enumerate(slow):
        head.append(item)
        if n < len(rest):
            head.append(rest[n])
    items[:] = head + rest[len(slow) :]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    count = config.stash.get(_PG_DESELECTED, 0)
    if not count:
        return
    target = config.stash[_PG_TARGET]
    if target.url is None:
        how = "unset TILLROLL_TEST_PG to run them"
    else:
        how = (
            "to run them, start PostgreSQL there or set TILLROLL_TEST_PG to a server's URL "
            f"(default {PG_DEFAULT}); with CI set, a missing server fails the run"
        )
    tests = f"{count} test{'' if count == 1 else 's'}"
    terminalreporter.write_line(
        f"PostgreSQL: {tests} skipped, {target.why_not}; the SQLite half ran; {how}.",
        yellow=True,
        bold=True,
    )


@pytest.fixture(scope="session")
def vectors() -> dict[str, dict[str, Any]]:
    data = json.loads(VECTORS_PATH.read_text())
    return {v["name"]: v for v in data["vectors"]}


@pytest.fixture(scope="session")
def pg_database(pytestconfig: pytest.Config) -> Iterator[str]:
    """A private PostgreSQL database for this test run (parallel runs do not collide)."""
    import sqlalchemy as sa

    target = _pg_target(pytestconfig)
    if target.url is None:
        pytest.skip(f"PostgreSQL tests {target.why_not}")
    if not target.reachable:
        pytest.fail(f"{target.why_not}: CI needs it; start it or set TILLROLL_TEST_PG")
    admin_url = target.url
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
