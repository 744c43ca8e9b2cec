"""Alembic environment: runs on the connection handed over by tillroll.store.migrate."""

from __future__ import annotations

from alembic import context

from tillroll.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - tillroll always hands a connection over
    raise RuntimeError("run migrations through tillroll.store.migrate(engine)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
