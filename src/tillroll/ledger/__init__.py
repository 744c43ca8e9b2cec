"""Double-entry ledger of every money movement."""

from tillroll.ledger.postings import (
    CLEARING,
    FEES,
    FUNDING,
    EntryKind,
    Leg,
    UnbalancedEntry,
    balances,
    cardholder,
    entry_rows,
    imbalance,
    merchant,
    post,
    transfer,
    transfer_legs,
)

__all__ = [
    "CLEARING",
    "FEES",
    "FUNDING",
    "EntryKind",
    "Leg",
    "UnbalancedEntry",
    "balances",
    "cardholder",
    "entry_rows",
    "imbalance",
    "merchant",
    "post",
    "transfer",
    "transfer_legs",
]
