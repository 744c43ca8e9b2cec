"""Notifications: the transactional outbox, its relay and channels."""

from tillroll.notify.outbox import (
    Channel,
    MessageKind,
    MessageState,
    OutboxTables,
    Outgoing,
    add_outbox_tables,
    enqueue,
)

__all__ = [
    "Channel",
    "MessageKind",
    "MessageState",
    "OutboxTables",
    "Outgoing",
    "add_outbox_tables",
    "enqueue",
]
