"""unknown user names at the console's log-in are counted and locked out like known ones

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_login_failures",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_console_login_failures")),
    )
    op.create_index(
        "ix_console_login_failures_locked_until", "console_login_failures", ["locked_until"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_console_login_failures_locked_until", table_name="console_login_failures")
    op.drop_table("console_login_failures")
