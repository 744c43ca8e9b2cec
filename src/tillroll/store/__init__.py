"""Storage: tables, the engine factory and migrations."""

from tillroll.store.engine import DatabaseUrlError, default_db_url, inserted_id, make_engine, normalize_url
from tillroll.store.migrate import migrate

__all__ = ["DatabaseUrlError", "default_db_url", "inserted_id", "make_engine", "migrate", "normalize_url"]
