"""PINs as IBM 3624 offsets under a sealed PIN verification key

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:30:00

The salted PBKDF2 hashes are dropped: a hash of a 4-6 digit PIN is no secret to whoever has
the table. They cannot be turned into offsets (that needs the PIN), so cards issued before
this revision have no offset and decline every PIN until they are issued again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issuer_keys",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("key_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_issuer_keys")),
    )
    with op.batch_alter_table("issuer_cards") as batch:
        batch.add_column(sa.Column("pin_offset", sa.String(length=12), nullable=True))
        batch.drop_column("pin_salt")
        batch.drop_column("pin_hash")


def downgrade() -> None:
    # The old columns come back empty (nullable): no PIN can be turned back into a hash.
    with op.batch_alter_table("issuer_cards") as batch:
        batch.add_column(sa.Column("pin_hash", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("pin_salt", sa.LargeBinary(), nullable=True))
        batch.drop_column("pin_offset")
    op.drop_table("issuer_keys")
