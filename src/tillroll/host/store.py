"""Opening the host's storage: engine, migrations and the key store, from one URL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tillroll.crypto.keystore import KeyStore
from tillroll.store import default_db_url, make_engine, migrate, normalize_url
from tillroll.store.engine import DEFAULT_DATA_DIR

MASTER_KEY_FILE_ENV = "TILLROLL_MASTER_KEY_FILE"


@dataclass(frozen=True)
class HostStore:
    url: str
    engine: Engine
    keystore: KeyStore


def key_label(tid: str, name: str) -> bytes:
    """Binds a sealed key to its terminal and role: a swapped row does not decrypt."""
    return f"{tid}:{name}".encode()


def master_key_file(url: str) -> Path:
    """`TILLROLL_MASTER_KEY_FILE`, else beside a SQLite file, else ./tillroll-data/master.key."""
    env = os.environ.get(MASTER_KEY_FILE_ENV)
    if env:
        return Path(env)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(str(parsed.database)).parent / "master.key"
    return DEFAULT_DATA_DIR / "master.key"


def open_store(db_url: str | None = None, *, pool_size: int = 8) -> HostStore:
    url = normalize_url(db_url or default_db_url())
    engine = make_engine(url, pool_size=pool_size)
    migrate(engine)
    return HostStore(url=url, engine=engine, keystore=KeyStore.load(master_key_file(url)))
