"""reconciliation reads one day whatever the history: indexes on the instants and days it selects by

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 23:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# (index, table, column): each a column a nightly run selects one day of rows by, which without
# an index made it walk the whole table (tests/integration/test_recon_plans.py).
_INDEXES = (
    ("ix_sessions_expires_at", "sessions", "expires_at"),
    ("ix_backoffice_facts_received_at", "backoffice_facts", "received_at"),
    ("ix_wallet_statement_imports_bill_date", "wallet_statement_imports", "bill_date"),
    ("ix_statement_problems_bill_date", "statement_problems", "bill_date"),
)


def upgrade() -> None:
    for name, table, column in _INDEXES:
        op.create_index(name, table, [column], unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
