"""terminal journals uploaded to the back office, terminal status, the merchant's time zone

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "journal_entries",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("tid", sa.String(length=8), nullable=False),
        sa.Column("entry_key", sa.String(length=48), nullable=False),
        sa.Column("rail", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("batch", sa.String(length=6), nullable=False),
        sa.Column("stan", sa.String(length=6), nullable=False),
        sa.Column("rrn", sa.String(length=12), nullable=True),
        sa.Column("order_no", sa.String(length=40), nullable=True),
        sa.Column("original_key", sa.String(length=48), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), server_default="156", nullable=False),
        sa.Column("card_masked", sa.String(length=24), nullable=False),
        sa.Column("response_code", sa.String(length=32), nullable=True),
        sa.Column("receipt", sa.String(length=10), nullable=False),
        sa.Column("prints", sa.Integer(), server_default="0", nullable=False),
        sa.Column("contact", sa.String(length=255), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("approved_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_entries")),
        sa.UniqueConstraint("tid", "entry_key", name="uq_journal_entries_tid_entry_key"),
    )
    op.create_index("ix_journal_entries_created_at", "journal_entries", ["created_at"], unique=False)
    op.create_index("ix_journal_entries_order_no", "journal_entries", ["order_no"], unique=False)
    op.create_index("ix_journal_entries_rrn", "journal_entries", ["rrn"], unique=False)
    op.create_index(
        "ix_journal_entries_tid_batch_stan", "journal_entries", ["tid", "batch", "stan"], unique=False
    )
    op.create_table(
        "terminal_status",
        sa.Column("tid", sa.String(length=8), nullable=False),
        sa.Column("batch", sa.String(length=6), nullable=False),
        sa.Column("signed_in", sa.Integer(), nullable=False),
        sa.Column("pending_reversals", sa.Integer(), nullable=False),
        sa.Column("printer", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reported_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tid", name=op.f("pk_terminal_status")),
    )
    op.add_column(
        "merchants", sa.Column("tz", sa.String(length=40), server_default="Asia/Shanghai", nullable=False)
    )

    op.create_table(
        "terminal_commands",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("tid", sa.String(length=8), nullable=False),
        sa.Column("command", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("exception_id", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_terminal_commands")),
    )
    op.create_index("ix_terminal_commands_tid_state", "terminal_commands", ["tid", "state"])


def downgrade() -> None:
    op.drop_table("terminal_commands")
    with op.batch_alter_table("merchants") as batch:
        batch.drop_column("tz")
    op.drop_table("terminal_status")
    op.drop_table("journal_entries")
