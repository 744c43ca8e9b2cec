"""What the rules find: ``rc_found`` (class, key, the payment's references, the evidence), the
parameters the rules compare against, and the helpers every rule uses to insert its rows, name a
payment (its key) and spell the automatic action's steps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    String,
    Text,
    and_,
    case,
    exists,
    literal,
)
from sqlalchemy.dialects import postgresql, sqlite

from tillroll.recon.model import ExceptionClass as EC
from tillroll.recon.sqlfn import json_raw
from tillroll.recon.stage import _temp, rc_card
from tillroll.store.tables import (
    backoffice_facts,
)
from tillroll.terminal.announce import MERCHANT

rc_found = _temp(
    "rc_found",
    Column("cls", String(24), primary_key=True),
    Column("key", String(96), primary_key=True),
    Column("rule", String(40)),
    Column("mid", String(15)),
    Column("tid", String(8)),
    Column("rail", String(8)),
    Column("rrn", String(12)),
    Column("order_no", String(40)),
    Column("batch", String(6)),
    Column("stan", String(6)),
    Column("amount_minor", BigInteger),
    Column("evidence", Text),
    Column("existed", Integer),
)

FOUND_COLS = [c.name for c in rc_found.c]
REVERSE = '["reverse"]'
REPRINT = '["reprint", "send_e_receipt"]'
PLANNED = {
    EC.RECEIPT_NO_PAYMENT: '["contact_customer"]',
    EC.REFUND_STUCK: '["retry_refund"]',
    EC.NOTIFIED_NOT_FINAL: '["send_notice"]',
    EC.SIGNIN_FAILURES: '["alert"]',
    EC.AMOUNT_MISMATCH: "[]",
    EC.MISSING_ON_ONE_SIDE: "[]",
    EC.DUPLICATE: "[]",
}
OPEN_REFUND = ("requested", "submitted", "unknown")


@dataclass(frozen=True)
class Params:
    """What the rules compare against: times are naive UTC."""

    business_date: str
    now: datetime
    recent_from: datetime  # now - ageing: newer than this, the other side may still come
    stuck_before: datetime  # now - refund deadline: an open refund older than this is stuck
    stmt_ready: bool  # the day's statement is imported
    stmt_next_ready: bool  # ... and the next day's (rows near midnight may be there)
    duplicate_window_s: int
    window_lo: datetime  # every merchant's window lies within [window_lo, window_hi): the indexes'
    window_hi: datetime  # bounds, so a run reads one day's rows whatever the store's history


def insert_found(conn: Connection, query: Any) -> int:
    """INSERT INTO rc_found ... ; a (class, key) a rule found already is kept (first rule wins)."""
    dialect = conn.dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(rc_found)
    stmt = ins.from_select(FOUND_COLS, query).on_conflict_do_nothing(index_elements=["cls", "key"])
    return int(conn.execute(stmt).rowcount or 0)


def card_key(c: Any = rc_card.c) -> Any:
    return case(
        (c.rrn.is_not(None), "card:rrn:" + c.rrn),
        else_="card:" + c.tid + ":" + c.batch + ":" + c.stan,
    )


def planned(cls: Any, reprint: Any) -> Any:
    """The automatic action's steps for a class (charged_no_receipt: which branch)."""
    whens = [(cls == k.value, literal(v)) for k, v in PLANNED.items()]
    return json_raw(
        case(
            (and_(cls == EC.CHARGED_NO_RECEIPT.value, reprint == 1), literal(REPRINT)),
            (cls == EC.CHARGED_NO_RECEIPT.value, literal(REVERSE)),
            *whens,
            else_=literal("[]"),
        )
    )


def fact(kind: str, tid: Any, reference: Any, *, to_customer: bool = False) -> Any:
    """A fact of this kind about this payment was received; ``to_customer``: one addressed to
    the customer's own contact (an e-receipt kept for the merchant told the customer nothing)."""
    f = backoffice_facts.alias()
    where = [f.c.kind == kind, f.c.tid == tid, f.c.reference == reference]
    if to_customer:
        where.append(f.c.recipient != MERCHANT)
    return exists().where(*where)
