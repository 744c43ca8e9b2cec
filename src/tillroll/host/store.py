"""Opening the host's storage: engine, migrations and the key store, from one URL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tillroll.crypto.keystore import MASTER_KEY_ENV, KeyStore, KeyStoreError
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


class MasterKeyPolicyError(KeyStoreError):
    """The master key is not configured the way this database needs."""


def master_key_file(url: str) -> Path:
    """`TILLROLL_MASTER_KEY_FILE`, else beside a SQLite file (the two-command demo's default).

    A shared database (PostgreSQL) has no default: a key generated beside the process would
    differ per host process, and a key kept in the data folder travels with every copy of it."""
    env = os.environ.get(MASTER_KEY_FILE_ENV)
    if env:
        return Path(env)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return DEFAULT_DATA_DIR / "master.key"
        return Path(str(parsed.database)).parent / "master.key"
    raise MasterKeyPolicyError(
        "a shared database (PostgreSQL) needs an explicitly configured master key: set "
        f"{MASTER_KEY_ENV} (64 hex digits) or {MASTER_KEY_FILE_ENV}=/path/to/master.key, a file "
        "kept apart from the database and its backups (created 0600 on first use)"
    )


def load_keystore(url: str) -> KeyStore:
    """`TILLROLL_MASTER_KEY`, else the key file `master_key_file` names."""
    return KeyStore.from_env() or KeyStore.load(master_key_file(url))


def open_store(db_url: str | None = None, *, pool_size: int = 8, migrate_schema: bool = True) -> HostStore:
    """Engine, migrations and key store; the key store first, so a refused master key stops
    the start before anything is created. `migrate_schema=False`: another process migrated
    already (the parent of `host serve --workers N`), so N children do not race on Alembic."""
    url = normalize_url(db_url or default_db_url())
    keystore = load_keystore(url)
    engine = make_engine(url, pool_size=pool_size)
    if migrate_schema:
        migrate(engine)
    return HostStore(url=url, engine=engine, keystore=keystore)
