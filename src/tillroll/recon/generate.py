"""Generated business days for the reconciliation's tests and benchmark: every source's rows the
way the real parts write them (journal copies as the upload stores them, host transactions with
their issuer authorization and ledger entry, the wallet's statement as imported, e-receipt facts,
sessions), with faults planted at known payments and the exceptions they must give.

A clean day reconciles to no exception. Each :class:`Fault` changes one payment's rows so that
exactly one exception (class, key, planned actions) follows; ``expected`` lists them. Rows come in
chunks (``chunks``) so that millions of payments never sit in memory at once; :func:`load` bulk
inserts them with executemany.
"""

from __future__ import annotations

from tillroll.recon.daygen import LOAD_ORDER, DayGenerator, load
from tillroll.recon.dayspec import (
    BEIJING,
    REPRINT,
    REVERSE,
    WALLET_FAULTS,
    WALLET_MCH,
    DaySpec,
    Expected,
    Fault,
    expected,
    is_wallet,
    mid_of,
    order,
    plant,
    refund_order,
    rrn,
    tid_of,
)

__all__ = [
    "BEIJING",
    "LOAD_ORDER",
    "REPRINT",
    "REVERSE",
    "WALLET_FAULTS",
    "WALLET_MCH",
    "DayGenerator",
    "DaySpec",
    "Expected",
    "Fault",
    "expected",
    "is_wallet",
    "load",
    "mid_of",
    "order",
    "plant",
    "refund_order",
    "rrn",
    "tid_of",
]
