"""reconciliation: the wallet statement, runs, the exception queue and its actions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "recon_exceptions",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("class", sa.String(length=24), nullable=False),
        sa.Column("key", sa.String(length=96), nullable=False),
        sa.Column("business_date", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("mid", sa.String(length=15), nullable=True),
        sa.Column("tid", sa.String(length=8), nullable=True),
        sa.Column("rail", sa.String(length=8), nullable=True),
        sa.Column("rrn", sa.String(length=12), nullable=True),
        sa.Column("order_no", sa.String(length=40), nullable=True),
        sa.Column("batch", sa.String(length=6), nullable=True),
        sa.Column("stan", sa.String(length=6), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("deadline", sa.DateTime(), nullable=True),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("diagnosis", sa.Text(), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_exceptions")),
        sa.UniqueConstraint("class", "key", name="uq_recon_exceptions_class_key"),
    )
    op.create_index("ix_recon_exceptions_business_date", "recon_exceptions", ["business_date"], unique=False)
    op.create_index("ix_recon_exceptions_state", "recon_exceptions", ["state"], unique=False)
    op.create_table(
        "recon_runs",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("business_date", sa.String(length=10), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_runs")),
    )
    op.create_table(
        "statement_problems",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("mch_id", sa.String(length=32), nullable=False),
        sa.Column("bill_date", sa.String(length=8), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("line_text", sa.Text(), nullable=False),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statement_problems")),
        sa.UniqueConstraint("mch_id", "bill_date", "line_no", name="uq_statement_problems_line"),
    )
    op.create_table(
        "wallet_statement_rows",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("mch_id", sa.String(length=32), nullable=False),
        sa.Column("bill_date", sa.String(length=8), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("trade_time", sa.DateTime(), nullable=False),
        sa.Column("out_trade_no", sa.String(length=32), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=False),
        sa.Column("trade_state", sa.String(length=12), nullable=False),
        sa.Column("brand", sa.String(length=8), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("out_refund_no", sa.String(length=40), nullable=True),
        sa.Column("refund_id", sa.String(length=64), nullable=True),
        sa.Column("refund_minor", sa.BigInteger(), nullable=True),
        sa.Column("refund_status", sa.String(length=12), nullable=True),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallet_statement_rows")),
        sa.UniqueConstraint("mch_id", "bill_date", "line_no", name="uq_wallet_statement_rows_line"),
    )
    op.create_index(
        "ix_wallet_statement_rows_out_trade_no", "wallet_statement_rows", ["out_trade_no"], unique=False
    )
    op.create_index("ix_wallet_statement_rows_out_refund_no", "wallet_statement_rows", ["out_refund_no"])
    op.create_index("ix_wallet_statement_rows_trade_time", "wallet_statement_rows", ["trade_time"])
    op.create_table(
        "wallet_statement_imports",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("mch_id", sa.String(length=32), nullable=False),
        sa.Column("bill_date", sa.String(length=8), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("problems", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallet_statement_imports")),
        sa.UniqueConstraint("mch_id", "bill_date", name="uq_wallet_statement_imports_day"),
    )
    # What the matcher's joins need on the host's own tables (0001): one day of transactions,
    # the ledger entry of an RRN and its legs.
    op.create_index("ix_transactions_created_at", "transactions", ["created_at"])
    op.create_index("ix_transactions_original_id", "transactions", ["original_id"])
    op.create_index("ix_ledger_entries_reference", "ledger_entries", ["reference"])
    op.create_index("ix_ledger_postings_entry_id", "ledger_postings", ["entry_id"])
    op.create_table(
        "recon_actions",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("exception_id", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=24), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["exception_id"],
            ["recon_exceptions.id"],
            name=op.f("fk_recon_actions_exception_id_recon_exceptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_actions")),
    )
    op.create_index("ix_recon_actions_exception_id", "recon_actions", ["exception_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_postings_entry_id", table_name="ledger_postings")
    op.drop_index("ix_ledger_entries_reference", table_name="ledger_entries")
    op.drop_index("ix_transactions_original_id", table_name="transactions")
    op.drop_index("ix_transactions_created_at", table_name="transactions")
    op.drop_table("wallet_statement_imports")
    op.drop_table("recon_actions")
    op.drop_table("wallet_statement_rows")
    op.drop_table("statement_problems")
    op.drop_table("recon_runs")
    op.drop_table("recon_exceptions")
