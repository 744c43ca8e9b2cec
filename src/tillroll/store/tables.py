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
    # The merchant's time zone (IANA name): its business day, reports and console times.
    Column("tz", String(40), nullable=False, server_default="Asia/Shanghai"),
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
    Index("ix_sessions_expires_at", "expires_at"),  # reconciliation: the day's expiries (0010)
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
    Index("ix_transactions_created_at", "created_at"),  # reconciliation: one day's rows (0008)
    Index("ix_transactions_original_id", "original_id"),  # reconciliation: a sale's refunds (0008)
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
    Index("ix_ledger_entries_reference", "reference"),  # reconciliation: a host RRN's entry (0008)
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
    Index("ix_ledger_postings_entry_id", "entry_id"),  # reconciliation: an entry's legs (0008)
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
    Index("ix_backoffice_facts_received_at", "received_at"),  # reconciliation: the day's (0010)
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

# --- terminal journals, as uploaded to the back office (owner: journal upload; docs/web.md) ------

# The back office's copy of every terminal's journal entries, one row per entry of either rail,
# upserted by (tid, entry_key): a newer revision of an entry (its state moved) replaces the older.
# Card numbers only masked; no request fields, no keys.
journal_entries = Table(
    "journal_entries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), nullable=False),
    # natural keys, so a replaced device never overwrites its predecessor's entries:
    # "card:<batch>.<trace>", "wallet:<out_trade_no>", "wallet_refund:<out_refund_no>"
    Column("entry_key", String(48), nullable=False),
    Column("rail", String(8), nullable=False),  # card | wallet
    Column("kind", String(16), nullable=False),  # sale | void | balance | refund | qr_pay | qr_refund
    Column("state", String(20), nullable=False),  # the terminal's state (TxnState, RefundState, WalletState)
    Column("batch", String(6), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("rrn", String(12), nullable=True),  # card rail, once answered
    Column("order_no", String(40), nullable=True),  # wallet: out_trade_no / out_refund_no
    Column("original_key", String(48), nullable=True),  # a void's or refund's original entry_key
    Column("amount_minor", BigInteger, nullable=True),
    Column("currency", String(3), nullable=False, server_default="156"),
    Column("card_masked", String(24), nullable=False),  # PAN or payment code, first 6 last 4
    Column("response_code", String(32), nullable=True),  # card: field 39; wallet: err_code
    Column("receipt", String(10), nullable=False),  # ReceiptState: none | owed | printed
    Column("prints", Integer, nullable=False, server_default="0"),
    Column("contact", String(255), nullable=True),  # the customer's, when the cashier took one
    Column("note", Text, nullable=True),
    Column("approved_at", DateTime, nullable=True),  # UTC
    Column("created_at", DateTime, nullable=False),  # UTC, the terminal's clock
    Column("updated_at", DateTime, nullable=False),  # UTC, the terminal's clock: newer wins
    Column("received_at", DateTime, nullable=False),
    UniqueConstraint("tid", "entry_key", name="uq_journal_entries_tid_entry_key"),
    Index("ix_journal_entries_rrn", "rrn"),
    Index("ix_journal_entries_order_no", "order_no"),
    Index("ix_journal_entries_tid_batch_stan", "tid", "batch", "stan"),
    Index("ix_journal_entries_created_at", "created_at"),
    # The console's pages read one merchant's terminals over a time range (migration 0009).
    Index("ix_journal_entries_tid_created_at", "tid", "created_at"),
    Index("ix_journal_entries_rail_created_at", "rail", "created_at"),  # recon: one rail's day (0008)
)

# What each terminal last said about itself with an upload (console: terminals page).
terminal_status = Table(
    "terminal_status",
    metadata,
    Column("tid", String(8), primary_key=True),
    Column("batch", String(6), nullable=False),
    Column("signed_in", Integer, nullable=False),  # 1: a session is open on the device
    Column("pending_reversals", Integer, nullable=False),
    Column("printer", String(16), nullable=False),  # ok | jammed | paper_out | unknown
    Column("status", Text, nullable=False),  # JSON: the rest (alerts, journal_lost, cut-overs ...)
    Column("reported_at", DateTime, nullable=False),  # the terminal's clock, UTC
    Column("received_at", DateTime, nullable=False),
)

# What the back office asks of a terminal (reprint a slip, retry its open refunds): handed to the
# terminal in the answer to its next journal upload, acknowledged by the upload after it ran.
terminal_commands = Table(
    "terminal_commands",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), nullable=False),
    Column("command", String(16), nullable=False),  # reprint | retry_refunds
    Column("reference", String(64), nullable=True),  # batch.trace or order number
    Column("state", String(12), nullable=False),  # pending | delivered | done | failed
    Column("requested_by", String(64), nullable=False),  # "auto" or a console user
    Column("exception_id", BigInteger, nullable=True),  # the exception it acts for, if any
    Column("outcome", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_terminal_commands_tid_state", "tid", "state"),
)

# --- reconciliation (owner: tillroll.recon; docs/recon.md) --------------------------------------

# The wallet provider's daily statement, imported from its CSV (WALLET.md §4): one row per line.
wallet_statement_rows = Table(
    "wallet_statement_rows",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("mch_id", String(32), nullable=False),
    Column("bill_date", String(8), nullable=False),  # YYYYMMDD, Beijing time
    Column("line_no", Integer, nullable=False),  # 1 = the header
    Column("trade_time", DateTime, nullable=False),  # UTC
    Column("out_trade_no", String(32), nullable=False),
    Column("transaction_id", String(64), nullable=False),
    Column("trade_state", String(12), nullable=False),  # SUCCESS | REVOKED | REFUND
    Column("brand", String(8), nullable=False),
    Column("total_minor", BigInteger, nullable=False),
    Column("out_refund_no", String(40), nullable=True),
    Column("refund_id", String(64), nullable=True),
    Column("refund_minor", BigInteger, nullable=True),
    Column("refund_status", String(12), nullable=True),
    Column("imported_at", DateTime, nullable=False),
    UniqueConstraint("mch_id", "bill_date", "line_no", name="uq_wallet_statement_rows_line"),
    Index("ix_wallet_statement_rows_out_trade_no", "out_trade_no"),
    Index("ix_wallet_statement_rows_out_refund_no", "out_refund_no"),
    Index("ix_wallet_statement_rows_trade_time", "trade_time"),
)

# One row per imported statement (merchant, day): a day whose statement is header-only still
# counts as imported, so its wallet payments are "missing" rather than "pending".
wallet_statement_imports = Table(
    "wallet_statement_imports",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("mch_id", String(32), nullable=False),
    Column("bill_date", String(8), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("problems", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),  # of the CSV as received
    Column("imported_at", DateTime, nullable=False),
    UniqueConstraint("mch_id", "bill_date", name="uq_wallet_statement_imports_day"),
    Index("ix_wallet_statement_imports_bill_date", "bill_date"),  # every merchant's day (0010)
)

# Every statement line that could not be read, with its line and reason: reported, never dropped.
statement_problems = Table(
    "statement_problems",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("mch_id", String(32), nullable=False),
    Column("bill_date", String(8), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("line_text", Text, nullable=False),  # as read, long digit runs masked
    Column("imported_at", DateTime, nullable=False),
    UniqueConstraint("mch_id", "bill_date", "line_no", name="uq_statement_problems_line"),
    Index("ix_statement_problems_bill_date", "bill_date"),  # every merchant's day (0010)
)

# One row per reconciliation run of a business day.
recon_runs = Table(
    "recon_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("business_date", String(10), nullable=False),  # YYYY-MM-DD, merchant time
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime, nullable=True),
    Column("summary", Text, nullable=True),  # JSON: counts per source and per class, actions
)

# The exception queue: one record per (class, key) — a rerun finds the same record, not a new one.
recon_exceptions = Table(
    "recon_exceptions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("class", String(24), nullable=False),  # ExceptionClass
    Column("key", String(96), nullable=False),  # natural key: "card:rrn:<rrn>", "wallet:<order>" ...
    Column("business_date", String(10), nullable=False),
    Column("state", String(12), nullable=False),  # ExceptionState
    Column("mid", String(15), nullable=True),
    Column("tid", String(8), nullable=True),
    Column("rail", String(8), nullable=True),  # card | wallet | terminal
    Column("rrn", String(12), nullable=True),
    Column("order_no", String(40), nullable=True),
    Column("batch", String(6), nullable=True),
    Column("stan", String(6), nullable=True),
    Column("amount_minor", BigInteger, nullable=True),
    Column("owner", String(64), nullable=True),  # a console user name, or "auto"
    Column("deadline", DateTime, nullable=True),  # UTC
    Column("evidence", Text, nullable=False),  # JSON: what each source said
    Column("diagnosis", Text, nullable=True),  # in words a merchant understands (zh and en, JSON)
    Column("run_id", BigInteger, nullable=True),  # the run that last found it
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("class", "key", name="uq_recon_exceptions_class_key"),
    Index("ix_recon_exceptions_state", "state"),
    Index("ix_recon_exceptions_business_date", "business_date"),
)

# Every action taken on an exception (automatic or by hand) with its outcome.
recon_actions = Table(
    "recon_actions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("exception_id", BigInteger, ForeignKey("recon_exceptions.id"), nullable=False),
    Column("action", String(24), nullable=False),  # ActionKind
    Column("actor", String(64), nullable=False),  # "auto" or the console user
    Column("outcome", String(12), nullable=False),  # ActionOutcome
    Column("detail", Text, nullable=True),
    Column("at", DateTime, nullable=False),
    Index("ix_recon_actions_exception_id", "exception_id"),
)

# --- the console (owner: tillroll.console; docs/console.md) --------------------------------------

console_users = Table(
    "console_users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),  # argon2id (argon2-cffi)
    Column("role", String(16), nullable=False),  # Role
    Column("mid", String(15), nullable=True),  # NULL only for an acquirer operator
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", DateTime, nullable=True),
    Column("active", Integer, nullable=False, server_default="1"),
    Column("created_at", DateTime, nullable=False),
)

# Failed log-ins in a row of a name that has no user, counted by the rule of console_users'
# columns: an unknown name is answered and locked out exactly like a taken one, so the log-in
# page never tells which names exist. A row at 0 failures whose lock has run out says nothing
# and is pruned (ix_console_login_failures_locked_until).
console_login_failures = Table(
    "console_login_failures",
    metadata,
    Column("username", String(64), primary_key=True),
    Column("failed_logins", Integer, nullable=False),
    Column("locked_until", DateTime, nullable=True),
    Index("ix_console_login_failures_locked_until", "locked_until"),
)

# Server-side sessions: the cookie holds a random token; the store keeps only its SHA-256.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", BigInteger, ForeignKey("console_users.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
    Column("last_seen_at", DateTime, nullable=False),
)

# Append-only, hash-chained: hash = SHA-256(prev_hash + canonical JSON of the row's content).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("mid", String(15), nullable=True),
    Column("action", String(48), nullable=False),
    Column("target", String(96), nullable=False),
    Column("before", Text, nullable=True),  # JSON
    Column("after", Text, nullable=True),  # JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)

# Refunds asked for in the console; above the merchant's limit they wait for a supervisor.
refund_requests = Table(
    "refund_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("mid", String(15), nullable=False),
    Column("tid", String(8), nullable=False),
    Column("rail", String(8), nullable=False),
    Column("original_ref", String(48), nullable=False),  # card: batch.trace or RRN; wallet: order no
    Column("amount_minor", BigInteger, nullable=False),
    Column("state", String(20), nullable=False),  # awaiting_approval | approved | rejected | done | failed
    Column("requested_by", String(64), nullable=False),
    Column("decided_by", String(64), nullable=True),
    Column("outcome", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# An electronic signature (电子签名) drawn on the cashier screen, kept with its transaction.
signatures = Table(
    "signatures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tid", String(8), nullable=False),
    Column("reference", String(64), nullable=False),  # batch.trace (card) or the order number
    Column("png", LargeBinary, nullable=False),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("tid", "reference", name="uq_signatures_tid_reference"),
)
