"""Payment search: the terminals' journal copies and the host's card transactions, side by side.

One row per payment as a person thinks of it — a card sale is (terminal, batch, trace), a wallet
payment is (terminal, order number) — with what the terminal says and what the host says. Both
queries carry the user's merchant scope; the merge of the two (bounded) result sets is by key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, select

from tillroll.console.auth import Principal
from tillroll.console.queries import day_bounds
from tillroll.money import parse_yuan
from tillroll.store.tables import journal_entries, terminals, transactions

_DIGITS4 = re.compile(r"\d{4}")
_TRACE = re.compile(r"(?:(\d{1,6})\.)?(\d{1,6})")
_RRN = re.compile(r"[0-9A-Za-z]{1,12}")
_ORDER = re.compile(r"[0-9A-Za-z_-]{1,40}")


class SearchError(ValueError):
    """A search field that does not parse: the text says which and how to write it."""


@dataclass(frozen=True)
class Search:
    day: date | None = None
    amount_minor: int | None = None
    last4: str | None = None
    rrn: str | None = None
    batch: str | None = None
    stan: str | None = None
    order_no: str | None = None

    @classmethod
    def parse(cls, params: dict[str, str]) -> Search:
        def get(name: str) -> str | None:
            value = (params.get(name) or "").strip()
            return value or None

        day = amount = batch = stan = None
        if (text := get("date")) is not None:
            try:
                day = date.fromisoformat(text)
            except ValueError:
                raise SearchError(f"date {text!r}: write it as YYYY-MM-DD") from None
        if (text := get("amount")) is not None:
            try:
                amount = parse_yuan(text)
            except ValueError:
                raise SearchError(
                    f"amount {text!r}: write yuan with up to two decimals, like 12.50"
                ) from None
        last4 = get("last4")
        if last4 is not None and not _DIGITS4.fullmatch(last4):
            raise SearchError("last 4: exactly the card's (or payment code's) last four digits")
        rrn = get("rrn")
        if rrn is not None and not _RRN.fullmatch(rrn):
            raise SearchError("RRN: up to 12 letters or digits, as on the slip")
        if (text := get("trace")) is not None:
            match = _TRACE.fullmatch(text)
            if match is None:
                raise SearchError(
                    f"trace {text!r}: the slip's trace number, or batch.trace like 000001.000123"
                )
            batch = match.group(1).zfill(6) if match.group(1) else None
            stan = match.group(2).zfill(6)
        order = get("order")
        if order is not None and not _ORDER.fullmatch(order):
            raise SearchError("order number: up to 40 letters, digits, - or _")
        return cls(day, amount, last4, rrn, batch, stan, order)

    @property
    def empty(self) -> bool:
        return all(
            v is None for v in (self.day, self.amount_minor, self.last4, self.rrn, self.stan, self.order_no)
        )


@dataclass
class Payment:
    tid: str
    rail: str
    kind: str
    batch: str
    stan: str
    rrn: str | None
    order_no: str | None
    amount_minor: int | None
    masked: str
    at: datetime
    terminal_state: str | None = None
    host_state: str | None = None
    host_code: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """What the payment page asks the story for: the RRN (unique), else the order, else batch.trace."""
        if self.rail == "wallet" and self.order_no:
            return self.order_no
        return self.rrn or f"{self.batch}.{self.stan}"


def search(conn: Connection, principal: Principal, query: Search, *, limit: int) -> list[Payment]:
    je, tx = journal_entries, transactions
    jw: list[Any] = [principal.scope_tid(je.c.tid)]
    hw: list[Any] = [principal.scope(tx.c.mid)]
    if query.day is not None:
        start, end, _ = day_bounds(conn, principal, query.day)
        jw += [je.c.created_at >= start, je.c.created_at < end]
        hw += [tx.c.created_at >= start, tx.c.created_at < end]
    if query.amount_minor is not None:
        jw.append(je.c.amount_minor == query.amount_minor)
        hw.append(tx.c.amount_minor == query.amount_minor)
    if query.last4 is not None:
        jw.append(je.c.card_masked.like(f"%{query.last4}"))
        hw.append(tx.c.pan_masked.like(f"%{query.last4}"))
    if query.rrn is not None:
        jw.append(je.c.rrn == query.rrn)
        hw.append(tx.c.rrn == query.rrn)
    if query.stan is not None:
        jw.append(je.c.stan == query.stan)
        hw.append(tx.c.stan == query.stan)
    if query.batch is not None:
        jw.append(je.c.batch == query.batch)
        hw.append(tx.c.batch == query.batch)
    if query.order_no is not None:
        jw.append(je.c.order_no == query.order_no)
    journal_rows = conn.execute(select(je).where(*jw).order_by(je.c.created_at.desc()).limit(limit)).all()
    host_rows: list[Any] = []
    if query.order_no is None:  # the host knows no order numbers: a wallet search is the journal's
        host_rows = list(
            conn.execute(
                select(tx).where(*hw, tx.c.kind != "balance").order_by(tx.c.created_at.desc()).limit(limit)
            ).all()
        )
    found: dict[tuple[str, ...], Payment] = {}
    for r in journal_rows:
        key = (
            ("wallet", r.tid, r.order_no or r.entry_key)
            if r.rail == "wallet"
            else ("card", r.tid, r.batch, r.stan)
        )
        found[key] = Payment(
            r.tid,
            r.rail,
            r.kind,
            r.batch,
            r.stan,
            r.rrn,
            r.order_no,
            r.amount_minor,
            r.card_masked,
            r.created_at,
            terminal_state=r.state,
        )
    for r in host_rows:
        key = ("card", r.tid, r.batch, r.stan)
        payment = found.get(key)
        if payment is None:
            payment = found[key] = Payment(
                r.tid,
                "card",
                r.kind,
                r.batch,
                r.stan,
                r.rrn,
                None,
                r.amount_minor,
                r.pan_masked,
                r.created_at,
            )
        payment.host_state, payment.host_code = r.status, r.response_code
        payment.rrn = payment.rrn or r.rrn
    return sorted(found.values(), key=lambda p: p.at, reverse=True)[:limit]


def terminal_visible(conn: Connection, principal: Principal, tid: str) -> bool:
    row = conn.execute(
        select(terminals.c.tid).where(terminals.c.tid == tid, principal.scope(terminals.c.mid))
    )
    return row.first() is not None
