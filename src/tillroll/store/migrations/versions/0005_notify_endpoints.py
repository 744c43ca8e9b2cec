"""merchant notification endpoints (tillroll.notify)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notify_endpoints",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("mid", sa.String(length=15), nullable=False),
        sa.Column("channel", sa.String(length=12), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("active", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["mid"], ["merchants.mid"], name=op.f("fk_notify_endpoints_mid_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_endpoints")),
        sa.UniqueConstraint("mid", "channel", "address", name="uq_notify_endpoints_key"),
    )


def downgrade() -> None:
    op.drop_table("notify_endpoints")
