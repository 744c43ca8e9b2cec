"""The run's working tables: one business day of each source, side by side, built in SQL.

Temporary tables of the run's connection (gone with it):

- ``rc_day``: one row per merchant: its business day in UTC (``lo``/``hi``), the wider window the
  other side is looked for in (``wlo``/``whi``: the ageing window either side, so an entry at
  23:59:59 finds its partner written at 00:00:01), and when "recent" and the statement's tail start.
- ``rc_card``: every card sale, void and refund of the day, the terminal's journal copy beside the
  host's transaction. The key, in order of preference: the RRN, else TID + batch + STAN.
- ``rc_stmt``: the wallet statement's rows folded to one per payment (``out_trade_no``) or refund
  (``out_refund_no``), with how many lines said it (more than one is a duplicate).
- ``rc_wallet``: every wallet payment and refund of the day, journal copy beside the statement,
  keyed by order number.

Each is filled by ``INSERT ... SELECT`` (journal side with its partner LEFT JOINed, then the other
side's rows that no journal entry names): no Python loop over rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    exists,
    func,
    literal,
    select,
    tuple_,
)

from tillroll.store.tables import journal_entries as je
from tillroll.store.tables import terminals, transactions, wallet_statement_rows

work = MetaData()


def _temp(name: str, *cols: Column[object] | Index) -> Table:
    return Table(name, work, *cols, prefixes=["TEMPORARY"])


rc_day = _temp(
    "rc_day",
    Column("mid", String(15), primary_key=True),
    Column("lo", DateTime, nullable=False),
    Column("hi", DateTime, nullable=False),
    Column("wlo", DateTime, nullable=False),
    Column("whi", DateTime, nullable=False),
    Column("bh_lo", DateTime, nullable=False),  # business hours (sessions must not expire then)
    Column("bh_hi", DateTime, nullable=False),
    Column("tail_from", DateTime, nullable=False),  # hi - ageing: may be on tomorrow's statement
)

# rc_day per terminal (a few hundred rows, in memory): the journal's rows find their merchant's
# day with one lookup here instead of two in the store (terminals, then rc_day).
rc_term = _temp(
    "rc_term",
    Column("tid", String(8), primary_key=True),
    Column("mid", String(15), nullable=False),
    Column("lo", DateTime, nullable=False),
    Column("hi", DateTime, nullable=False),
    Column("wlo", DateTime, nullable=False),
    Column("whi", DateTime, nullable=False),
)

rc_card = _temp(
    "rc_card",
    Column("mid", String(15)),
    Column("tid", String(8)),
    Column("kind", String(16)),
    Column("batch", String(6)),
    Column("stan", String(6)),
    Column("rrn", String(12)),
    Column("j_id", BigInteger),
    Column("j_state", String(20)),
    Column("j_amount", BigInteger),
    Column("j_receipt", String(10)),
    Column("j_at", DateTime),
    Column("h_id", BigInteger),
    Column("h_status", String(12)),
    Column("h_amount", BigInteger),
    Column("h_code", String(2)),
    Column("h_issuer_ref", BigInteger),
    Column("h_pan", String(19)),  # masked
    Column("h_at", DateTime),
    Column("matched_by", String(16)),
    Column("at", DateTime),  # when it happened: the journal's time, else the host's
    Column("core", Integer),  # 1: of this business day (not only of the window around it)
)

# The host's card sales of each merchant's business day (host time) that were approved once:
# what the host's own rules (ledger, duplicates) read, staged once by the connection that runs
# them (a narrow copy: their two passes do not go back to the store's rows).
rc_sale = _temp(
    "rc_sale",
    Column("id", BigInteger),
    Column("mid", String(15)),
    Column("tid", String(8)),
    Column("rrn", String(12)),
    Column("batch", String(6)),
    Column("stan", String(6)),
    Column("status", String(12)),
    Column("amount_minor", BigInteger),
    Column("pan_masked", String(19)),
    Column("issuer_ref", BigInteger),
    Column("created_at", DateTime),
)

rc_stmt = _temp(
    "rc_stmt",
    Column("kind", String(8)),  # pay | refund
    Column("ref", String(40)),  # out_trade_no | out_refund_no
    Column("out_trade_no", String(32)),
    Column("lines", Integer),
    Column("first_line", Integer),
    Column("state", String(12)),
    Column("total", BigInteger),
    Column("refund", BigInteger),
    Column("refund_status", String(12)),
    Column("at", DateTime),
    Column("bill_date", String(8)),
    Index("ix_rc_stmt_ref", "ref", "kind"),
)

# rc_stmt's payments and refunds that are on more than one line, folded (one row each)
rc_fold = _temp("rc_fold", *(Column(c.name, c.type) for c in rc_stmt.c))

rc_wallet = _temp(
    "rc_wallet",
    Column("mid", String(15)),
    Column("tid", String(8)),
    Column("kind", String(8)),  # pay | refund
    Column("order_no", String(40)),
    Column("out_trade_no", String(32)),
    Column("j_id", BigInteger),
    Column("j_state", String(20)),
    Column("j_amount", BigInteger),
    Column("j_receipt", String(10)),
    Column("j_at", DateTime),
    Column("s_lines", Integer),
    Column("s_state", String(12)),
    Column("s_total", BigInteger),
    Column("s_refund", BigInteger),
    Column("s_refund_status", String(12)),
    Column("s_at", DateTime),
    Column("at", DateTime),
    Column("core", Integer),
)

CARD_KINDS = ("sale", "void", "refund")
WAS_APPROVED = ("approved", "voided", "reversed")  # a host sale that was approved once
WALLET_KIND = {"qr_pay": "pay", "qr_refund": "refund"}


def create(conn: Connection) -> None:
    for table in (rc_day, rc_term, rc_card, rc_sale, rc_stmt, rc_fold, rc_wallet):
        table.drop(conn, checkfirst=True)
        table.create(conn)


def drop(conn: Connection) -> None:
    for table in (rc_wallet, rc_fold, rc_stmt, rc_sale, rc_card, rc_term, rc_day):
        table.drop(conn, checkfirst=True)


def _core(at: Any, day: Table = rc_day) -> Any:
    return case((and_(at >= day.c.lo, at < day.c.hi), 1), else_=0)


def fill_terminals(conn: Connection) -> None:
    """rc_term: every terminal with its merchant's day (after rc_day)."""
    q = select(terminals.c.tid, rc_day.c.mid, rc_day.c.lo, rc_day.c.hi, rc_day.c.wlo, rc_day.c.whi).join(
        rc_day, rc_day.c.mid == terminals.c.mid
    )
    conn.execute(rc_term.insert().from_select([c.name for c in rc_term.c], q))


def fill_card(conn: Connection, *, lo: datetime, hi: datetime) -> None:
    """rc_card: the journal's card entries with their host transaction, then the host's alone.
    ``lo``/``hi`` bound every merchant's window: the created_at indexes find the day's rows
    whatever the history the store holds.

    The host transaction is looked up by RRN in the INSERT, and only for the few entries that
    found none by TID + batch + STAN afterwards (an UPDATE of those rows): one outer join more
    in the INSERT cost an index lookup per journal row (~1.2 s of 2.7 at 1M payments)."""
    h = transactions.alias("h1")
    journal_side = (
        select(
            rc_term.c.mid,
            je.c.tid,
            je.c.kind,
            je.c.batch,
            je.c.stan,
            func.coalesce(h.c.rrn, je.c.rrn),
            je.c.id,
            je.c.state,
            je.c.amount_minor,
            je.c.receipt,
            je.c.created_at,
            h.c.id,
            h.c.status,
            h.c.amount_minor,
            h.c.response_code,
            h.c.issuer_ref,
            h.c.pan_masked,
            h.c.created_at,
            case((h.c.id.is_not(None), "rrn")),
            je.c.created_at,
            _core(je.c.created_at, rc_term),
        )
        .select_from(je)
        .join(rc_term, rc_term.c.tid == je.c.tid)
        .outerjoin(h, h.c.rrn == je.c.rrn)
        .where(
            je.c.rail == "card",
            je.c.kind.in_(CARD_KINDS),
            je.c.created_at >= lo,
            je.c.created_at < hi,
            je.c.created_at >= rc_term.c.wlo,
            je.c.created_at < rc_term.c.whi,
        )
    )
    cols = [c.name for c in rc_card.c]
    conn.execute(rc_card.insert().from_select(cols, journal_side))
    _match_by_stan(conn)
    t = transactions
    # a partner outside the window still counts as one: the store's journal is asked
    named_by_rrn = exists().where(je.c.rrn == t.c.rrn)
    named_by_stan = exists().where(
        je.c.tid == t.c.tid, je.c.batch == t.c.batch, je.c.stan == t.c.stan, je.c.kind == t.c.kind
    )
    host_side = (
        select(
            t.c.mid,
            t.c.tid,
            t.c.kind,
            t.c.batch,
            t.c.stan,
            t.c.rrn,
            literal(None, BigInteger),
            literal(None, String),
            literal(None, BigInteger),
            literal(None, String),
            literal(None, DateTime),
            t.c.id,
            t.c.status,
            t.c.amount_minor,
            t.c.response_code,
            t.c.issuer_ref,
            t.c.pan_masked,
            t.c.created_at,
            literal(None, String),
            t.c.created_at,
            _core(t.c.created_at),
        )
        .select_from(t)
        .join(rc_day, rc_day.c.mid == t.c.mid)
        .where(
            t.c.created_at >= lo,
            t.c.created_at < hi,
            t.c.created_at >= rc_day.c.lo,  # only the day's own: a partner is looked for wider
            t.c.created_at < rc_day.c.hi,
            t.c.kind.in_(CARD_KINDS),
            ~named_by_rrn,
            ~named_by_stan,
        )
    )
    conn.execute(rc_card.insert().from_select(cols, host_side))


def fill_sales(conn: Connection, *, lo: datetime, hi: datetime) -> None:
    """rc_sale: the host's sales of each merchant's day (after rc_day) approved once."""
    t = transactions
    q = (
        select(*(t.c[c.name] for c in rc_sale.c))
        .select_from(t)
        .join(rc_day, rc_day.c.mid == t.c.mid)
        .where(
            t.c.created_at >= lo,
            t.c.created_at < hi,
            t.c.created_at >= rc_day.c.lo,
            t.c.created_at < rc_day.c.hi,
            t.c.kind == "sale",
            t.c.status.in_(WAS_APPROVED),
        )
    )
    conn.execute(rc_sale.insert().from_select([c.name for c in rc_sale.c], q))


def _match_by_stan(conn: Connection) -> None:
    """The journal's entries no host transaction has by RRN (the terminal never got an answer)
    take theirs by TID + batch + STAN + kind, if one exists."""
    h, c = transactions.alias("h2"), rc_card.c
    conn.execute(
        rc_card.update()
        .where(
            c.h_id.is_(None),
            h.c.tid == c.tid,
            h.c.batch == c.batch,
            h.c.stan == c.stan,
            h.c.kind == c.kind,
        )
        .values(
            rrn=h.c.rrn,
            h_id=h.c.id,
            h_status=h.c.status,
            h_amount=h.c.amount_minor,
            h_code=h.c.response_code,
            h_issuer_ref=h.c.issuer_ref,
            h_pan=h.c.pan_masked,
            h_at=h.c.created_at,
            matched_by="tid_batch_stan",
        )
    )


def fill_statement(conn: Connection, *, lo: datetime, hi: datetime) -> None:
    """rc_stmt: statement lines in [lo, hi), one row per payment or refund.

    Every line is copied as it is, then the few payments or refunds on more than one line are
    folded: their lines' aggregate (the GROUP BY of the whole statement this used to be) replaces
    them. The keys that repeat are found by a scan of rc_stmt's (ref, kind) index, not by
    sorting every line (0.4 s instead of 1.1 at 1M payments)."""
    s = wallet_statement_rows
    kind = case((s.c.trade_state == "REFUND", "refund"), else_="pay")
    ref = case((s.c.trade_state == "REFUND", s.c.out_refund_no), else_=s.c.out_trade_no)
    lines = select(
        kind,
        ref,
        s.c.out_trade_no,
        literal(1, Integer),
        s.c.line_no,
        s.c.trade_state,
        s.c.total_minor,
        s.c.refund_minor,
        s.c.refund_status,
        s.c.trade_time,
        s.c.bill_date,
    ).where(s.c.trade_time >= lo, s.c.trade_time < hi)
    cols = [c.name for c in rc_stmt.c]
    conn.execute(rc_stmt.insert().from_select(cols, lines))
    t = rc_stmt.c
    repeated = select(t.ref, t.kind).group_by(t.ref, t.kind).having(func.count() > 1)
    folded = (
        select(
            t.kind,
            t.ref,
            func.max(t.out_trade_no),
            func.count(),
            func.min(t.first_line),
            func.max(t.state),
            func.max(t.total),
            func.max(t.refund),
            func.max(t.refund_status),
            func.min(t.at),
            func.min(t.bill_date),
        )
        .where(tuple_(t.ref, t.kind).in_(repeated))
        .group_by(t.ref, t.kind)
    )
    conn.execute(rc_fold.insert().from_select(cols, folded))
    f = rc_fold.c
    conn.execute(rc_stmt.delete().where(tuple_(t.ref, t.kind).in_(select(f.ref, f.kind))))
    conn.execute(rc_stmt.insert().from_select(cols, select(rc_fold)))


def fill_wallet(
    conn: Connection, *, lo: datetime, hi: datetime, stmt_lo: datetime, stmt_hi: datetime
) -> None:
    """rc_wallet: the journal's wallet orders and refunds with their statement row, then the
    statement's rows of the day that no journal entry names."""
    kind = case((je.c.kind == "qr_refund", "refund"), else_="pay")
    journal_side = (
        select(
            rc_term.c.mid,
            je.c.tid,
            kind,
            je.c.order_no,
            case((je.c.kind == "qr_refund", rc_stmt.c.out_trade_no), else_=je.c.order_no),
            je.c.id,
            je.c.state,
            je.c.amount_minor,
            je.c.receipt,
            je.c.created_at,
            rc_stmt.c.lines,
            rc_stmt.c.state,
            rc_stmt.c.total,
            rc_stmt.c.refund,
            rc_stmt.c.refund_status,
            rc_stmt.c.at,
            je.c.created_at,
            _core(je.c.created_at, rc_term),
        )
        .select_from(je)
        .join(rc_term, rc_term.c.tid == je.c.tid)
        .outerjoin(rc_stmt, and_(rc_stmt.c.ref == je.c.order_no, rc_stmt.c.kind == kind))
        .where(
            je.c.rail == "wallet",
            je.c.kind.in_(tuple(WALLET_KIND)),
            je.c.created_at >= lo,
            je.c.created_at < hi,
            je.c.created_at >= rc_term.c.wlo,
            je.c.created_at < rc_term.c.whi,
        )
    )
    cols = [c.name for c in rc_wallet.c]
    conn.execute(rc_wallet.insert().from_select(cols, journal_side))
    named = exists().where(
        je.c.order_no == rc_stmt.c.ref
    )  # only wallet entries have one (the order_no index)
    stmt_side = select(
        literal(None, String),
        literal(None, String),
        rc_stmt.c.kind,
        rc_stmt.c.ref,
        rc_stmt.c.out_trade_no,
        literal(None, BigInteger),
        literal(None, String),
        literal(None, BigInteger),
        literal(None, String),
        literal(None, DateTime),
        rc_stmt.c.lines,
        rc_stmt.c.state,
        rc_stmt.c.total,
        rc_stmt.c.refund,
        rc_stmt.c.refund_status,
        rc_stmt.c.at,
        rc_stmt.c.at,
        literal(1, Integer),
    ).where(rc_stmt.c.at >= stmt_lo, rc_stmt.c.at < stmt_hi, ~named)
    conn.execute(rc_wallet.insert().from_select(cols, stmt_side))
