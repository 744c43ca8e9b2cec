"""Data folders, database files (with SQLite's WAL and SHM) and key files are owner-only
from creation, whatever the process umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tillroll.crypto.keystore import KeyStore, KeyStoreError
from tillroll.store import make_engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: modes must come from the creating call, not from it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_sqlite_file_wal_and_shm_are_created_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "data" / "host.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.exists() and shm.exists()
        assert (mode(db), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    engine.dispose()
    assert mode(db.parent) == 0o700


@pytest.mark.usefixtures("open_umask")
def test_key_file_is_created_owner_only(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "master.key"
    KeyStore.load(key_file)
    assert mode(key_file) == 0o600 and mode(key_file.parent) == 0o700
    KeyStore.load(key_file)  # and it opens again


def test_a_key_file_others_can_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TILLROLL_MASTER_KEY", raising=False)
    key_file = tmp_path / "master.key"
    key_file.write_text("00" * 32)
    key_file.chmod(0o640)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        KeyStore.load(key_file)
    key_file.chmod(0o600)
    KeyStore.load(key_file)


def test_engine_errors_do_not_carry_bound_parameters(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    pan = "6222021234567890123"
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE cards (pan TEXT UNIQUE)"))
        conn.execute(text("INSERT INTO cards VALUES (:p)"), {"p": pan})
    with pytest.raises(IntegrityError) as info, engine.begin() as conn:
        conn.execute(text("INSERT INTO cards VALUES (:p)"), {"p": pan})
    assert pan not in str(info.value) and pan not in repr(info.value)
    engine.dispose()
