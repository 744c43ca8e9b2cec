"""Double-entry postings between cardholder, clearing, merchant and fee accounts.

Account names: `cardholder:<card id>` (at the issuer), `issuer:funding` (where opening balances
come from), `acquirer:clearing`, `merchant:<MID>` (settlement account), `acquirer:fees`.
A positive posting increases what the account holds.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select

from tillroll.store import inserted_id
from tillroll.store.tables import ledger_entries, ledger_postings

CLEARING = "acquirer:clearing"
FEES = "acquirer:fees"
FUNDING = "issuer:funding"


def cardholder(card_id: int) -> str:
    return f"cardholder:{card_id}"


def merchant(mid: str) -> str:
    return f"merchant:{mid}"


_INSERT_ENTRY = insert(ledger_entries)
_INSERT_POSTING = insert(ledger_postings)


class EntryKind(enum.StrEnum):
    OPENING = "opening"
    SALE = "sale"
    VOID = "void"
    REVERSAL = "reversal"
    REFUND = "refund"
    AUTO_REFUND = "auto_refund"
    VOID_REVERSAL = "void_reversal"
    FEE = "fee"
    SETTLEMENT = "settlement"


class UnbalancedEntry(ValueError):
    pass


@dataclass(frozen=True)
class Leg:
    account: str
    amount_minor: int
    currency: str = "156"


def entry_rows(
    entry_id: int | None, kind: EntryKind, reference: str, legs: Sequence[Leg], now: datetime
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """One entry's row and its postings' rows (pure); its legs must sum to zero in each
    currency. With `entry_id` None the entry's row leaves the id to the database (the postings'
    then lack theirs: fill it in)."""
    totals: dict[str, int] = defaultdict(int)
    for leg in legs:
        totals[leg.currency] += leg.amount_minor
    if any(totals.values()) or len(legs) < 2:
        raise UnbalancedEntry(f"{kind} {reference}: legs {legs} do not balance")
    entry: dict[str, object] = {"kind": kind, "reference": reference, "created_at": now}
    if entry_id is not None:
        entry["id"] = entry_id
    postings: list[dict[str, object]] = [
        {
            "entry_id": entry_id,
            "account": leg.account,
            "amount_minor": leg.amount_minor,
            "currency": leg.currency,
        }
        for leg in legs
        if leg.amount_minor
    ]
    return entry, postings


def transfer_legs(source: str, target: str, amount_minor: int) -> list[Leg]:
    return [Leg(source, -amount_minor), Leg(target, amount_minor)]


def post(conn: Connection, kind: EntryKind, reference: str, legs: Sequence[Leg], now: datetime) -> int:
    """Append one entry; its legs must sum to zero in each currency."""
    entry, postings = entry_rows(None, kind, reference, legs, now)
    entry_id = inserted_id(conn.execute(_INSERT_ENTRY, entry))
    conn.execute(_INSERT_POSTING, [{**posting, "entry_id": entry_id} for posting in postings])
    return entry_id


def transfer(
    conn: Connection,
    kind: EntryKind,
    reference: str,
    *,
    source: str,
    target: str,
    amount_minor: int,
    now: datetime,
) -> int:
    return post(conn, kind, reference, transfer_legs(source, target, amount_minor), now)


def balances(conn: Connection) -> dict[str, int]:
    """Every account's balance, rebuilt from the postings."""
    rows = conn.execute(
        select(ledger_postings.c.account, func.sum(ledger_postings.c.amount_minor)).group_by(
            ledger_postings.c.account
        )
    )
    return {account: int(total) for account, total in rows}


def imbalance(conn: Connection) -> dict[str, int]:
    """Sum of all postings per currency: all zero in a sound ledger."""
    rows = conn.execute(
        select(ledger_postings.c.currency, func.sum(ledger_postings.c.amount_minor)).group_by(
            ledger_postings.c.currency
        )
    )
    return {currency: int(total) for currency, total in rows}
