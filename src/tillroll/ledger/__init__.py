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
    imbalance,
    merchant,
    post,
    transfer,
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
    "imbalance",
    "merchant",
    "post",
    "transfer",
]
