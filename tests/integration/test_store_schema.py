"""The Alembic migrations build exactly the schema the code's tables describe."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hostwire import EXPIRY, MID, PAN, PIN, TID, TMK, empty_database

from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.store import open_store
from tillroll.store import make_engine, migrate
from tillroll.store.tables import issuer_cards, metadata


def test_migrations_match_the_tables(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # safe to run at every start
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def _tables_with_rows(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        assert len(tables) > 1
        count = {
            t: conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar_one() for t in tables
        }
    engine.dispose()
    return {name: n for name, n in count.items() if n}


def test_migrations_create_tables_and_no_rows(db_url: str) -> None:
    """What lets the stateful tests empty a database instead of migrating a new one per example
    (hostwire.empty_database): a just-migrated database holds no row but its Alembic version."""
    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()
    assert _tables_with_rows(db_url) == {"alembic_version": 1}


def test_an_emptied_database_is_a_new_one(db_url: str) -> None:
    """hostwire.empty_database on a used database: no row but the Alembic version, and every
    sequence starts again (the next row's id is a new database's first)."""
    for _ in range(2):  # a new schema, then the used one emptied
        store = open_store(empty_database(db_url))
        add_merchant(store, MID, "商户")
        add_terminal(store, TID, MID, TMK)
        add_card(store, PAN, EXPIRY, PIN, 100)
        with store.engine.connect() as conn:
            first = conn.execute(sa.select(sa.func.min(issuer_cards.c.id))).scalar_one()
        store.engine.dispose()
        assert first == 1
    assert _tables_with_rows(empty_database(db_url)) == {"alembic_version": 1}
