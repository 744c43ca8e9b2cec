"""SQLAlchemy Core tables of the host side (acquirer host and simulated issuer).

Uniqueness constraints, not process memory, enforce idempotency: several host processes may
share one PostgreSQL database.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from tillroll.notify.outbox import add_outbox_tables

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# A BIGINT that is still SQLite's rowid alias (SQLite only autoincrements INTEGER PRIMARY KEY).
Id = BigInteger().with_variant(Integer(), "sqlite")

merchants = Table(
    "merchants",
    metadata,
    Column("mid", String(15), primary_key=True),
    Column("name", String(80), nullable=False),
    Column("fee_rate_ppm", Integer, nullable=False, server_default="6000"),
    Column("created_at", DateTime, nullable=False),
)

terminals = Table(
    "terminals",
    metadata,
    Column("tid", String(8), primary_key=True),
    Column("mid", String(15), ForeignKey("merchants.mid"), nullable=False),
    Column("tmk_enc", LargeBinary, nullable=False),  # under the local master key
    Column("batch", String(6), nullable=False, server_default="000001"),  # batch the host expects
    Column("status", String(12), nullable=False, server_default="active"),
    Column("created_at", DateTime, nullable=False),
)

# One row per sign-in; the terminal's current session is its newest row.
sessions = Table(
    "sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), ForeignKey("terminals.tid"), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("pik_enc", LargeBinary, nullable=False),
    Column("mak_enc", LargeBinary, nullable=False),
    Column("tdk_enc", LargeBinary, nullable=True),
    Column("state", String(12), nullable=False),  # active | signed_out | settled
    Column("signed_in_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
    Index("ix_sessions_tid_id", "tid", "id"),
)

# Idempotency: one row per request key; the stored response is replayed for a retry.
# Sign-ins get a row with a NULL key (never replayed) so that every answer has an RRN.
# A reversal that overtook its original leaves a "tombstone" row (no response) in its slot.
requests = Table(
    "requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), nullable=True),
    Column("batch", String(6), nullable=True),
    Column("stan", String(6), nullable=True),
    Column("mti", String(4), nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("response", Text, nullable=True),  # JSON of the response fields (without 64)
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("tid", "batch", "stan", "mti", name="uq_requests_key"),
)

transactions = Table(
    "transactions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("rrn", String(12), nullable=False, unique=True),
    Column("tid", String(8), nullable=False),
    Column("mid", String(15), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("kind", String(16), nullable=False),  # sale | void | balance | refund | auto_refund
    Column("status", String(12), nullable=False),  # approved | declined | reversed | voided
    Column("response_code", String(2), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("pan_masked", String(19), nullable=False),
    Column("auth_code", String(6), nullable=True),
    Column("issuer_ref", BigInteger, nullable=True),  # the issuer's authorization id
    Column("original_id", BigInteger, nullable=True),  # for voids and refunds
    Column("local_date", String(4), nullable=False),  # field 13 as answered (MMDD)
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_transactions_tid_batch_stan", "tid", "batch", "stan"),
)

# --- the simulated issuer ---------------------------------------------------------------

issuer_cards = Table(
    "issuer_cards",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("pan", String(19), nullable=False, unique=True),
    Column("expiry", String(4), nullable=False),  # YYMM
    # IBM 3624 offset under the PVK (issuer_keys); NULL for a card issued before offsets.
    Column("pin_offset", String(12), nullable=True),
    Column("pin_tries", Integer, nullable=False, server_default="0"),
    Column("status", String(12), nullable=False, server_default="active"),
    Column("balance_minor", BigInteger, nullable=False),
    Column("limit_minor", BigInteger, nullable=True),  # per-transaction limit
    Column("currency", String(3), nullable=False, server_default="156"),
    Column("created_at", DateTime, nullable=False),
)

# The bank's own keys (the PIN verification key), sealed under the host's master key.
issuer_keys = Table(
    "issuer_keys",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("key_enc", LargeBinary, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

issuer_authorizations = Table(
    "issuer_authorizations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("card_id", BigInteger, ForeignKey("issuer_cards.id"), nullable=False),
    Column("direction", String(6), nullable=False),  # debit | credit
    Column("amount_minor", BigInteger, nullable=False),
    Column("reason", String(16), nullable=False),  # sale | void | reversal | refund ...
    Column("reference", String(40), nullable=False),
    Column("merchant_name", String(80), nullable=False),
    Column("created_at", DateTime, nullable=False),
)

# The cardholder's own message stream (the "you paid" SMS).
issuer_messages = Table(
    "issuer_messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("card_id", BigInteger, ForeignKey("issuer_cards.id"), nullable=False),
    Column("authorization_id", BigInteger, nullable=False),
    Column("text", String(200), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Index("ix_issuer_messages_card_id", "card_id", "id"),
)

# --- settlement and the ledger ------------------------------------------------------------

# One row per closed batch: the terminal's figures, the host's, and whether they agreed.
settlements = Table(
    "settlements",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), nullable=False),
    Column("mid", String(15), nullable=False),
    Column("batch", String(6), nullable=False),
    # The terminal's figures; NULL when the host closed the batch itself (PROFILE §6).
    Column("terminal_debit_minor", BigInteger, nullable=True),
    Column("terminal_debit_count", Integer, nullable=True),
    Column("terminal_credit_minor", BigInteger, nullable=True),
    Column("terminal_credit_count", Integer, nullable=True),
    Column("host_debit_minor", BigInteger, nullable=False),
    Column("host_debit_count", Integer, nullable=False),
    Column("host_credit_minor", BigInteger, nullable=False),
    Column("host_credit_count", Integer, nullable=False),
    # Refunded part of the batch's voided or reversed sales: paid to the merchant, who pays
    # those refunds in their own batch's credits.
    Column("retained_minor", BigInteger, nullable=False, server_default="0"),
    Column("fee_minor", BigInteger, nullable=False),
    Column("balanced", Integer, nullable=True),  # 1 balanced, 0 not, NULL: closed by the host
    Column("closed_by", String(12), nullable=False, server_default="terminal"),  # terminal | host
    Column("upload_items", Integer, nullable=True),  # set when the batch upload ended
    Column("settled_at", DateTime, nullable=False),
    UniqueConstraint("tid", "batch", name="uq_settlements_tid_batch"),
)

# What a batch upload found: an item missing on one side, or an amount that differs.
batch_differences = Table(
    "batch_differences",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("stan", String(6), nullable=False),
    Column(
        "difference", String(24), nullable=False
    ),  # missing_at_host | missing_at_terminal | amount_differs
    Column("terminal_amount_minor", BigInteger, nullable=True),
    Column("host_amount_minor", BigInteger, nullable=True),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("tid", "batch", "stan", name="uq_batch_differences_key"),
)

# Items a terminal uploaded after a "not balanced" settlement.
batch_uploads = Table(
    "batch_uploads",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("pan_masked", String(19), nullable=False),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("tid", "batch", "stan", name="uq_batch_uploads_key"),
)

# Double-entry: every money movement is one entry whose postings sum to zero per currency.
# Append-only: balances are derived from postings, never stored beside them.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("reference", String(40), nullable=False),
    Column("created_at", DateTime, nullable=False),
)

ledger_postings = Table(
    "ledger_postings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("entry_id", BigInteger, ForeignKey("ledger_entries.id"), nullable=False),
    Column("account", String(40), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Index("ix_ledger_postings_account", "account"),
)

# --- notifications ------------------------------------------------------------------------

# The back office's outbox (tillroll.notify): messages written in the transaction of their fact.
outbox = add_outbox_tables(metadata)

# Where a merchant is told (tillroll.notify.endpoints): e-mail, SMS, or a signed webhook.
notify_endpoints = Table(
    "notify_endpoints",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("mid", String(15), ForeignKey("merchants.mid"), nullable=False),
    Column("channel", String(12), nullable=False),  # email | sms | webhook
    Column("address", String(255), nullable=False),  # e-mail, E.164 phone, or URL
    Column("secret_enc", LargeBinary, nullable=True),  # a webhook's signing secret, sealed
    Column("active", Integer, nullable=False, server_default="1"),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("mid", "channel", "address", name="uq_notify_endpoints_key"),
)

# --- the web: facts from terminals and e-receipts (tillroll.web) ----------------------------------

# Every fact a terminal delivered, once: the unique message id makes a repeated delivery a no-op.
backoffice_facts = Table(
    "backoffice_facts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=False, unique=True),
    Column("tid", String(8), nullable=False),
    Column("kind", String(24), nullable=False),  # MessageKind
    Column("reference", String(64), nullable=False),
    Column("recipient", String(255), nullable=False),  # the customer's contact, or "merchant"
    Column("payload", Text, nullable=False),  # JSON as received; card numbers masked (checked)
    Column("received_at", DateTime, nullable=False),
    Index("ix_backoffice_facts_tid_reference", "tid", "reference"),
)

# The cardholder copy of an approval's slip, served at /r/<token>.
e_receipts = Table(
    "e_receipts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), nullable=False),
    Column("reference", String(64), nullable=False),
    Column("message_id", String(128), nullable=False),  # the fact it came from
    Column("mid", String(15), nullable=False),
    Column("merchant_name", String(80), nullable=False),
    Column("rail", String(8), nullable=False),  # card | wallet
    Column("trans_type", String(8), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("card_masked", String(24), nullable=False),
    Column("at_utc", DateTime, nullable=False),
    Column("at_local", String(19), nullable=False),
    Column("slip", Text, nullable=False),  # JSON of the slip's fields (card number masked)
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("tid", "reference", name="uq_e_receipts_tid_reference"),
)
