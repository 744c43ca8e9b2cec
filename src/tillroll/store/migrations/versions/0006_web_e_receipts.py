"""the web: facts delivered by terminals, and e-receipts (tillroll.web)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "backoffice_facts",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("tid", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backoffice_facts")),
        sa.UniqueConstraint("message_id", name=op.f("uq_backoffice_facts_message_id")),
    )
    op.create_index("ix_backoffice_facts_tid_reference", "backoffice_facts", ["tid", "reference"])
    op.create_table(
        "e_receipts",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("tid", sa.String(length=8), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("mid", sa.String(length=15), nullable=False),
        sa.Column("merchant_name", sa.String(length=80), nullable=False),
        sa.Column("rail", sa.String(length=8), nullable=False),
        sa.Column("trans_type", sa.String(length=8), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("card_masked", sa.String(length=24), nullable=False),
        sa.Column("at_utc", sa.DateTime(), nullable=False),
        sa.Column("at_local", sa.String(length=19), nullable=False),
        sa.Column("slip", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_e_receipts")),
        sa.UniqueConstraint("tid", "reference", name="uq_e_receipts_tid_reference"),
    )


def downgrade() -> None:
    op.drop_table("e_receipts")
    op.drop_index("ix_backoffice_facts_tid_reference", table_name="backoffice_facts")
    op.drop_table("backoffice_facts")
