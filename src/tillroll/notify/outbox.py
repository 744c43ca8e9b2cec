"""The transactional outbox: a message is a row written in the transaction of the fact it announces.

A rolled-back fact announces nothing; a committed one is always announced, because the relay
(:mod:`tillroll.notify.relay`) delivers every row at least once. The same tables live in the
back office's store (``store/tables.py``) and in each terminal's journal, so a fact and its
message always share one database and one transaction.

``message_id`` is made by the caller from the fact's natural key (``e_receipt:T0000001:000001:
000123:email``), so announcing the same fact twice writes one row, and every receiver
deduplicates on it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql, sqlite

MESSAGE_ID_MAX = 128
# A BIGINT that is still SQLite's rowid alias (SQLite only autoincrements INTEGER PRIMARY KEY).
_Id = BigInteger().with_variant(Integer(), "sqlite")
RECIPIENT_MAX = 255


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"
    WEBHOOK = "webhook"
    BACKOFFICE = "backoffice"  # a terminal's facts, on their way to the back office (tillroll web)


class MessageKind(enum.StrEnum):
    E_RECEIPT = "e_receipt"
    PAYMENT_CANCELLED = "payment_cancelled"
    REFUND_APPROVED = "refund_approved"
    MERCHANT_ALERT = "merchant_alert"
    # the back office's own: reconciliation found a receipt with no payment behind it
    PAYMENT_FOLLOW_UP = "payment_follow_up"


class MessageState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class OutboxTables:
    messages: Table
    attempts: Table


def add_outbox_tables(metadata: MetaData) -> OutboxTables:
    """Define the outbox tables in ``metadata`` (the back office's, or a terminal journal's)."""
    messages = Table(
        "outbox_messages",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("message_id", String(MESSAGE_ID_MAX), nullable=False, unique=True),
        Column("kind", String(24), nullable=False),  # MessageKind
        Column("channel", String(12), nullable=False),  # Channel
        Column("recipient", String(RECIPIENT_MAX), nullable=False),
        Column("payload", Text, nullable=False),  # JSON of the fact; card numbers masked
        Column("state", String(12), nullable=False),  # MessageState
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("next_attempt_at", DateTime, nullable=False),
        Column("lease_until", DateTime, nullable=True),  # a relay is sending it until then
        Column("last_error", String(255), nullable=True),
        Column("created_at", DateTime, nullable=False),
        Column("delivered_at", DateTime, nullable=True),
        Index("ix_outbox_messages_due", "state", "next_attempt_at"),
    )
    attempts = Table(
        "outbox_attempts",
        metadata,
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("message_pk", BigInteger, ForeignKey("outbox_messages.id"), nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("outcome", String(12), nullable=False),  # delivered | failed | dead
        Column("detail", String(255), nullable=True),
        Column("at", DateTime, nullable=False),
        Index("ix_outbox_attempts_message", "message_pk"),
    )
    return OutboxTables(messages=messages, attempts=attempts)


@dataclass(frozen=True)
class Outgoing:
    """One message to announce a committed fact. ``payload`` holds no full card number."""

    message_id: str
    kind: MessageKind
    channel: Channel
    recipient: str
    payload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < len(self.message_id) <= MESSAGE_ID_MAX:
            raise ValueError(f"message_id must be 1..{MESSAGE_ID_MAX} characters: {self.message_id!r}")
        if not 0 < len(self.recipient) <= RECIPIENT_MAX:
            raise ValueError(f"recipient must be 1..{RECIPIENT_MAX} characters")


def enqueue(conn: Connection, tables: OutboxTables, message: Outgoing, now: datetime) -> bool:
    """Write ``message`` in the caller's transaction. False when its ``message_id`` is already
    there (the fact was announced before): nothing is written twice."""
    values = {
        "message_id": message.message_id,
        "kind": message.kind.value,
        "channel": message.channel.value,
        "recipient": message.recipient,
        "payload": json.dumps(dict(message.payload), ensure_ascii=False, sort_keys=True),
        "state": MessageState.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    dialect = conn.dialect.name
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert_fn(tables.messages)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(tables.messages.c.id)
    )
    # Not rowcount: PostgreSQL's implicit RETURNING of the key makes it -1 whatever happened.
    return conn.execute(stmt).first() is not None


@dataclass(frozen=True)
class StoredMessage:
    """A message as the relay hands it to a channel's sender."""

    message_id: str
    kind: MessageKind
    channel: Channel
    recipient: str
    payload: Mapping[str, Any]
    attempt: int  # 1 for the first try
    created_at: datetime


class DeliveryFailed(Exception):
    """A sender could not deliver ``message_id``; ``retryable`` False sends it to the dead letters
    at once (the address is invalid, the receiver refused it for good). ``retry_after_s``: the
    receiver asked to wait at least that long (HTTP Retry-After); the schedule's delay is used
    when it is longer."""

    def __init__(
        self, message_id: str, detail: str, *, retryable: bool = True, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"message {message_id}: {detail}")
        self.message_id = message_id
        self.detail = detail
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Sender(Protocol):
    """One channel's delivery. ``send`` returns once the receiver has accepted the message, or
    raises :class:`DeliveryFailed`; it may be called again for a message already delivered (the
    relay crashed between send and mark), so receivers deduplicate on ``message_id``."""

    channel: Channel

    def send(self, message: StoredMessage) -> None: ...
