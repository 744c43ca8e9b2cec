"""The wallet provider's own database (SQLAlchemy Core): merchants, users, codes, orders, refunds.

The wallet is another company's system: it shares nothing with the back office (no Alembic
migrations, no foreign keys into ``store.tables``). Like the terminal's journal, which belongs to
the device and not to the host, its schema is created by the simulator itself at start
(``create_all``, which only adds what is missing): it is a stand-in for a third party whose schema
we neither own nor migrate, and a test or demo always starts it on an empty database.

Idempotency lives in the unique constraints, not in process memory: (mch_id, out_trade_no) on
orders, (mch_id, out_refund_no) on refunds, the payment code itself, and conditional updates
(``WHERE state = 'USERPAYING'``, ``WHERE used = false``, ``WHERE balance_fen >= :fee``) for every
change that must happen once even when two processes race.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

merchants = sa.Table(
    "wallet_merchants",
    metadata,
    sa.Column("mch_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("key", sa.String(128), nullable=False),
    sa.Column("notify_url", sa.String(512), nullable=True),
    # What the merchant has been paid and not given back (fen): paid orders minus reversals and
    # refunds that reached the customer. Users' balances + this are conserved.
    sa.Column("takings_fen", sa.BigInteger, nullable=False, server_default="0"),
)

users = sa.Table(
    "wallet_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("brand", sa.String(8), nullable=False),
    sa.Column("balance_fen", sa.BigInteger, nullable=False),
    sa.Column("behaviour", sa.String(64), nullable=False),
    # error-once: set by the first pay, after which the phone tells the truth.
    sa.Column("error_once_spent", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.CheckConstraint("balance_fen >= 0", name="wallet_users_balance_not_negative"),
)

codes = sa.Table(
    "wallet_codes",
    metadata,
    sa.Column("code", sa.String(24), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("wallet_users.id"), nullable=False),
    sa.Column("issued_at", sa.DateTime, nullable=False),
    sa.Column("used", sa.Boolean, nullable=False, server_default=sa.false()),
)

orders = sa.Table(
    "wallet_orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("mch_id", sa.String(32), sa.ForeignKey("wallet_merchants.mch_id"), nullable=False),
    sa.Column("out_trade_no", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    # NULL on a tombstone (a reverse for an order never seen): it has no code, user or amount.
    sa.Column("auth_code", sa.String(128), nullable=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("wallet_users.id"), nullable=True),
    sa.Column("brand", sa.String(8), nullable=True),
    sa.Column("total_fee", sa.BigInteger, nullable=True),
    sa.Column("refunded_fee", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("refund_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("body", sa.String(128), nullable=True),
    sa.Column("transaction_id", sa.String(32), nullable=True, unique=True),
    sa.Column("err_code", sa.String(32), nullable=True),  # the refusal a repeated pay replays
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("confirm_at", sa.DateTime, nullable=True),  # confirm:S — when the phone says yes
    sa.Column("close_at", sa.DateTime, nullable=True),  # USERPAYING closes by itself then
    sa.Column("paid_at", sa.DateTime, nullable=True),  # time_end
    sa.Column("reversed_at", sa.DateTime, nullable=True),
    sa.Column("closed_at", sa.DateTime, nullable=True),
    sa.UniqueConstraint("mch_id", "out_trade_no", name="wallet_orders_mch_out_trade_no"),
    sa.Index("wallet_orders_due", "state", "close_at"),
    sa.Index("wallet_orders_paid", "mch_id", "paid_at"),
)

refunds = sa.Table(
    "wallet_refunds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("mch_id", sa.String(32), sa.ForeignKey("wallet_merchants.mch_id"), nullable=False),
    sa.Column("out_refund_no", sa.String(32), nullable=False),
    sa.Column("order_id", sa.Integer, sa.ForeignKey("wallet_orders.id"), nullable=False),
    sa.Column("refund_id", sa.String(32), nullable=False, unique=True),
    sa.Column("refund_fee", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("due_at", sa.DateTime, nullable=False),  # PROCESSING until then
    sa.Column("done_at", sa.DateTime, nullable=True),
    sa.UniqueConstraint("mch_id", "out_refund_no", name="wallet_refunds_mch_out_refund_no"),
    sa.Index("wallet_refunds_due", "status", "due_at"),
)

messages = sa.Table(
    "wallet_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("wallet_users.id"), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("text", sa.String(256), nullable=False),
    sa.Index("wallet_messages_user", "user_id", "id"),
)

notifications = sa.Table(
    "wallet_notifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.Integer, sa.ForeignKey("wallet_orders.id"), nullable=False, unique=True),
    sa.Column("url", sa.String(512), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime, nullable=True),  # NULL: nothing more to do
    sa.Column("acknowledged_at", sa.DateTime, nullable=True),
    sa.Column("last_error", sa.String(256), nullable=True),
    sa.Index("wallet_notifications_due", "next_attempt_at"),
)
