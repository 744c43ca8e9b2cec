"""settlements: closed by the host (no terminal figures), retained part of undone sales

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TERMINAL_FIGURES = (
    ("terminal_debit_minor", sa.BigInteger()),
    ("terminal_debit_count", sa.Integer()),
    ("terminal_credit_minor", sa.BigInteger()),
    ("terminal_credit_count", sa.Integer()),
)


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a column's nullability in place.
    with op.batch_alter_table("settlements") as batch:
        for name, type_ in _TERMINAL_FIGURES:
            batch.alter_column(name, existing_type=type_, nullable=True)
        batch.alter_column("balanced", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("retained_minor", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(
            sa.Column("closed_by", sa.String(length=12), server_default="terminal", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("settlements") as batch:
        batch.drop_column("closed_by")
        batch.drop_column("retained_minor")
        batch.alter_column("balanced", existing_type=sa.Integer(), nullable=False)
        for name, type_ in _TERMINAL_FIGURES:
            batch.alter_column(name, existing_type=type_, nullable=False)
