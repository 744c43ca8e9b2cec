"""Notifications: the transactional outbox, its relay and channels."""

from tillroll.notify.outbox import (
    Channel,
    DeliveryFailed,
    MessageKind,
    MessageState,
    OutboxTables,
    Outgoing,
    Sender,
    StoredMessage,
    add_outbox_tables,
    enqueue,
)

__all__ = [
    "Channel",
    "DeliveryFailed",
    "MessageKind",
    "MessageState",
    "OutboxTables",
    "Outgoing",
    "Sender",
    "StoredMessage",
    "add_outbox_tables",
    "enqueue",
]
