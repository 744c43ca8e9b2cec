"""The matching rules: each a named query that puts what it finds into ``rc_found``.

A rule is one ``INSERT INTO rc_found SELECT ...`` over the run's working tables (``stage``) and the
store; its docstring is the rule in words (docs/recon.md lists them). A found row is (class, key,
the payment's references, the evidence as JSON built in SQL, with ``"planned"``: the automatic
action's steps). The key names the payment the way a person would look it up, so a rerun finds
the same exception: ``card:rrn:<RRN>`` (else ``card:<TID>:<batch>:<STAN>``), ``wallet:<order>``.

"Pending" (not an exception yet): a payment whose other side may still come — a host approval
the terminal has not uploaded yet (newer than the ageing window), a wallet payment near the day's
end whose statement row may be on tomorrow's statement, or any wallet payment before the day's
statement is imported.
"""

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
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite

from tillroll.ledger.postings import CLEARING
from tillroll.recon.model import ExceptionClass as EC
from tillroll.recon.sqlfn import epoch_s, json_obj, json_raw, text_of
from tillroll.recon.stage import _temp, rc_card, rc_day, rc_stmt, rc_wallet
from tillroll.store.tables import (
    backoffice_facts,
    issuer_authorizations,
    ledger_entries,
    ledger_postings,
    sessions,
    terminals,
    transactions,
    wallet_statement_rows,
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
WAS_APPROVED = ("approved", "voided", "reversed")  # a host sale that was approved once


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


def _insert(conn: Connection, query: Any) -> int:
    """INSERT INTO rc_found ... ; a (class, key) a rule found already is kept (first rule wins)."""
    dialect = conn.dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(rc_found)
    stmt = ins.from_select(FOUND_COLS, query).on_conflict_do_nothing(index_elements=["cls", "key"])
    return int(conn.execute(stmt).rowcount or 0)


def _card_key(c: Any = rc_card.c) -> Any:
    return case(
        (c.rrn.is_not(None), "card:rrn:" + c.rrn),
        else_="card:" + c.tid + ":" + c.batch + ":" + c.stan,
    )


def _planned(cls: Any, reprint: Any) -> Any:
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


def classify_card(conn: Connection, p: Params) -> int:
    """Rules C1-C7 over rc_card, one class per payment, the first that holds:

    C1 amount_mismatch: the journal and the host both have it, with different amounts.
    C2 charged_no_receipt (reverse): the host approved a sale the journal has but not as approved
       (unknown, sent, reversal pending, declined...): the terminal never saw the approval.
    C3 receipt_no_payment: the journal has an approved sale with a receipt (printed or owed) and
       the host has no approved sale behind it (none, declined, reversed, voided).
    C4 charged_no_receipt (reprint + e-receipt): both approved, the slip never printed.
    C5 missing_on_one_side: the host approved it, the journal copy has no entry (past ageing).
    C6 missing_on_one_side: a void or refund approved on the terminal, unknown to the host.
    C7 refund_stuck: a refund still requested/submitted/unknown past its deadline.
    """
    c = rc_card.c
    both = and_(c.j_id.is_not(None), c.h_id.is_not(None))
    sale = c.kind == "sale"
    recent = c.at >= p.recent_from
    cls = case(
        (and_(both, c.j_amount != c.h_amount), EC.AMOUNT_MISMATCH.value),
        (
            and_(
                sale,
                c.h_status == "approved",
                c.j_id.is_not(None),
                c.j_state.not_in(("approved", "voided")),
                not_(recent),
            ),
            EC.CHARGED_NO_RECEIPT.value,
        ),
        (
            and_(
                sale,
                c.j_state == "approved",
                c.j_receipt.in_(("printed", "owed")),
                or_(c.h_id.is_(None), c.h_status != "approved"),
            ),
            EC.RECEIPT_NO_PAYMENT.value,
        ),
        (
            and_(sale, c.j_state == "approved", c.h_status == "approved", c.j_receipt != "printed"),
            EC.CHARGED_NO_RECEIPT.value,
        ),
        (and_(c.j_id.is_(None), c.h_status == "approved", not_(recent)), EC.MISSING_ON_ONE_SIDE.value),
        (
            and_(c.kind != "sale", c.j_state == "approved", or_(c.h_id.is_(None), c.h_status != "approved")),
            EC.MISSING_ON_ONE_SIDE.value,
        ),
        (and_(c.kind == "refund", c.j_state.in_(OPEN_REFUND), c.at < p.stuck_before), EC.REFUND_STUCK.value),
    ).label("cls")
    reprint = case((c.j_state == "approved", 1), else_=0).label("reprint")
    inner = select(rc_card, cls, reprint).where(c.core == 1).subquery("k")
    k = inner.c
    evidence = json_obj(
        ("rule", literal("card")),
        (
            "journal",
            json_raw(
                json_obj(
                    ("found", case((k.j_id.is_(None), 0), else_=1)),
                    ("id", k.j_id),
                    ("state", k.j_state),
                    ("amount_minor", k.j_amount),
                    ("receipt", k.j_receipt),
                    ("at", text_of(k.j_at)),
                )
            ),
        ),
        (
            "host",
            json_raw(
                json_obj(
                    ("found", case((k.h_id.is_(None), 0), else_=1)),
                    ("id", k.h_id),
                    ("status", k.h_status),
                    ("amount_minor", k.h_amount),
                    ("response_code", k.h_code),
                    ("at", text_of(k.h_at)),
                )
            ),
        ),
        ("matched_by", k.matched_by),
        ("kind", k.kind),
        ("terminal_saw_approval", json_raw(case((k.reprint == 1, "true"), else_="false"))),
        ("planned", _planned(k.cls, k.reprint)),
    )
    query = select(
        k.cls,
        _card_key(k),
        literal("card"),
        k.mid,
        k.tid,
        literal("card"),
        k.rrn,
        literal(None, String),
        k.batch,
        k.stan,
        func.coalesce(k.h_amount, k.j_amount),
        evidence,
        literal(0),
    ).where(k.cls.is_not(None))
    return _insert(conn, query)


def classify_wallet(conn: Connection, p: Params) -> int:
    """Rules W1-W7 over rc_wallet (journal beside statement), the first that holds:

    W1 amount_mismatch: both have it with different amounts (a refund: its refund_fee).
    W2 charged_no_receipt (reverse): the statement says paid (SUCCESS), the journal's order is not
       success (unknown, reversing, closed...): the terminal never saw the payment.
    W3 receipt_no_payment: the journal's order is paid with a receipt, the statement has it
       reversed (REVOKED), or not at all once the statement is in (past the day's tail).
    W4 charged_no_receipt (reprint + e-receipt): paid on both sides (or no statement yet), no slip.
    W5 missing_on_one_side: on the statement (a payment or a settled refund), not in the journal.
    W6 missing_on_one_side: a refund approved on the terminal, not on the imported statement.
    W7 refund_stuck: a refund open past its deadline, or one the statement says failed (CHANGE).
    """
    w = rc_wallet.c
    pay = w.kind == "pay"
    tail = exists().where(rc_day.c.mid == w.mid, w.at >= rc_day.c.tail_from)
    stmt_in = literal(p.stmt_ready) & (literal(p.stmt_next_ready) | not_(tail))
    s_missing = and_(w.s_state.is_(None), stmt_in)
    amount_j = case((pay, w.s_total), else_=w.s_refund)
    cls = case(
        (and_(w.j_id.is_not(None), w.s_state.is_not(None), w.j_amount != amount_j), EC.AMOUNT_MISMATCH.value),
        (
            and_(
                pay, w.s_state == "SUCCESS", w.j_id.is_not(None), w.j_state != "success", w.at < p.recent_from
            ),
            EC.CHARGED_NO_RECEIPT.value,
        ),
        (
            and_(
                pay,
                w.j_state == "success",
                w.j_receipt.in_(("printed", "owed")),
                or_(w.s_state == "REVOKED", s_missing),
            ),
            EC.RECEIPT_NO_PAYMENT.value,
        ),
        (
            and_(
                pay,
                w.j_state == "success",
                w.j_receipt != "printed",
                or_(w.s_state == "SUCCESS", w.s_state.is_(None)),
            ),
            EC.CHARGED_NO_RECEIPT.value,
        ),
        (
            and_(w.j_id.is_(None), or_(and_(pay, w.s_state == "SUCCESS"), w.s_refund_status == "SUCCESS")),
            EC.MISSING_ON_ONE_SIDE.value,
        ),
        (and_(w.kind == "refund", w.j_state == "approved", s_missing), EC.MISSING_ON_ONE_SIDE.value),
        (
            and_(
                w.kind == "refund",
                or_(and_(w.j_state.in_(OPEN_REFUND), w.at < p.stuck_before), w.s_refund_status == "CHANGE"),
            ),
            EC.REFUND_STUCK.value,
        ),
    ).label("cls")
    reprint = case((w.j_state == "success", 1), else_=0).label("reprint")
    inner = select(rc_wallet, cls, reprint).where(w.core == 1).subquery("k")
    k = inner.c
    evidence = json_obj(
        ("rule", literal("wallet")),
        (
            "journal",
            json_raw(
                json_obj(
                    ("found", case((k.j_id.is_(None), 0), else_=1)),
                    ("id", k.j_id),
                    ("state", k.j_state),
                    ("amount_minor", k.j_amount),
                    ("receipt", k.j_receipt),
                    ("at", text_of(k.j_at)),
                )
            ),
        ),
        (
            "statement",
            json_raw(
                json_obj(
                    ("found", case((k.s_state.is_(None), 0), else_=1)),
                    ("lines", k.s_lines),
                    ("trade_state", k.s_state),
                    ("total_minor", k.s_total),
                    ("refund_minor", k.s_refund),
                    ("refund_status", k.s_refund_status),
                    ("at", text_of(k.s_at)),
                )
            ),
        ),
        ("kind", k.kind),
        ("out_trade_no", k.out_trade_no),
        ("terminal_saw_approval", json_raw(case((k.reprint == 1, "true"), else_="false"))),
        ("planned", _planned(k.cls, k.reprint)),
    )
    query = select(
        k.cls,
        "wallet:" + k.order_no,
        literal("wallet"),
        k.mid,
        k.tid,
        literal("wallet"),
        literal(None, String),
        k.order_no,
        literal(None, String),
        literal(None, String),
        func.coalesce(k.j_amount, k.s_total, k.s_refund),
        evidence,
        literal(0),
    ).where(k.cls.is_not(None))
    return _insert(conn, query)


def ledger_and_issuer(conn: Connection, p: Params) -> int:
    """Rule L: every host sale approved today has the issuer's authorization and the ledger's sale
    entry (clearing leg) for its amount. None: missing_on_one_side; another amount:
    amount_mismatch. Keys ``ledger:rrn:<RRN>``."""
    c = rc_card.c
    leg = (
        select(ledger_entries.c.reference, ledger_postings.c.amount_minor)
        .join(ledger_postings, ledger_postings.c.entry_id == ledger_entries.c.id)
        .where(ledger_entries.c.kind == "sale", ledger_postings.c.account == CLEARING)
        .subquery("leg")
    )
    ia = issuer_authorizations
    missing = or_(leg.c.reference.is_(None), ia.c.id.is_(None))
    cls = case((missing, EC.MISSING_ON_ONE_SIDE.value), else_=EC.AMOUNT_MISMATCH.value)
    evidence = json_obj(
        ("rule", literal("ledger")),
        ("host", json_raw(json_obj(("id", c.h_id), ("status", c.h_status), ("amount_minor", c.h_amount)))),
        (
            "ledger",
            json_raw(
                json_obj(
                    ("found", case((leg.c.reference.is_(None), 0), else_=1)),
                    ("clearing_minor", leg.c.amount_minor),
                )
            ),
        ),
        (
            "issuer",
            json_raw(
                json_obj(
                    ("found", case((ia.c.id.is_(None), 0), else_=1)), ("amount_minor", ia.c.amount_minor)
                )
            ),
        ),
        ("planned", json_raw(literal("[]"))),
    )
    query = (
        select(
            cls,
            "ledger:rrn:" + c.rrn,
            literal("ledger"),
            c.mid,
            c.tid,
            literal("card"),
            c.rrn,
            literal(None, String),
            c.batch,
            c.stan,
            c.h_amount,
            evidence,
            literal(0),
        )
        .select_from(rc_card)
        .outerjoin(leg, leg.c.reference == c.rrn)
        .outerjoin(ia, ia.c.id == c.h_issuer_ref)
        .where(
            c.core == 1,
            c.kind == "sale",
            c.h_status.in_(WAS_APPROVED),
            or_(missing, leg.c.amount_minor != c.h_amount, ia.c.amount_minor != c.h_amount),
        )
    )
    return _insert(conn, query)


def card_duplicates(conn: Connection, p: Params) -> int:
    """Rule D1 duplicate: two approved host sales on one terminal, one card (masked), one amount
    within ``duplicate_window_s`` seconds: the customer was likely charged twice. The later one is
    the exception (``card:rrn:<later RRN>``). Over the day's host sales in rc_card: first the
    (terminal, card, amount) groups with more than one sale (GROUP BY), then a window function
    over those groups' sales only."""
    c = rc_card.c
    sales = and_(c.core == 1, c.kind == "sale", c.h_status == "approved")
    part = (c.tid, c.h_pan, c.h_amount)
    # count(*), not count(DISTINCT h_id): cheaper, and a group whose rows all name one host sale
    # (two journal entries of one charge) is dropped by ``prev_id != h_id`` below
    groups = select(*part).where(sales).group_by(*part).having(func.count() > 1).subquery("g")
    order = (c.h_at, c.h_id)
    ranked = (
        select(
            c.mid,
            c.tid,
            c.rrn,
            c.batch,
            c.stan,
            c.h_amount,
            c.h_pan,
            c.h_id,
            c.h_at.label("at"),
            func.lag(c.h_at).over(partition_by=part, order_by=order).label("prev_at"),
            func.lag(c.rrn).over(partition_by=part, order_by=order).label("prev_rrn"),
            func.lag(c.h_id).over(partition_by=part, order_by=order).label("prev_id"),
        )
        .join(groups, and_(groups.c.tid == c.tid, groups.c.h_pan == c.h_pan, groups.c.h_amount == c.h_amount))
        .where(sales)
        .subquery("r")
    )
    r = ranked.c
    evidence = json_obj(
        ("rule", literal("card_duplicate")),
        ("first_rrn", r.prev_rrn),
        ("second_rrn", r.rrn),
        ("card_masked", r.h_pan),
        ("seconds_apart", epoch_s(r.at) - epoch_s(r.prev_at)),
        ("planned", json_raw(literal("[]"))),
    )
    query = select(
        literal(EC.DUPLICATE.value),
        "card:rrn:" + r.rrn,
        literal("card_duplicate"),
        r.mid,
        r.tid,
        literal("card"),
        r.rrn,
        literal(None, String),
        r.batch,
        r.stan,
        r.h_amount,
        evidence,
        literal(0),
    ).where(
        r.prev_at.is_not(None),
        r.prev_id != r.h_id,  # two journal entries naming one host sale are not two charges
        epoch_s(r.at) - epoch_s(r.prev_at) <= p.duplicate_window_s,
    )
    return _insert(conn, query)


def statement_duplicates(conn: Connection, p: Params) -> int:
    """Rule D2 duplicate: one payment or refund on more than one line of the statement."""
    s = rc_stmt.c
    evidence = json_obj(
        ("rule", literal("statement_duplicate")),
        ("lines", s.lines),
        ("first_line", s.first_line),
        ("bill_date", s.bill_date),
        ("kind", s.kind),
        ("planned", json_raw(literal("[]"))),
    )
    query = select(
        literal(EC.DUPLICATE.value),
        "wallet:stmt:" + s.ref,
        literal("statement_duplicate"),
        literal(None, String),
        literal(None, String),
        literal("wallet"),
        literal(None, String),
        s.ref,
        literal(None, String),
        literal(None, String),
        func.coalesce(s.refund, s.total),
        evidence,
        literal(0),
    ).where(s.lines > 1, s.bill_date == p.business_date.replace("-", ""))
    return _insert(conn, query)


def refunds_exceed_sale(conn: Connection, p: Params) -> int:
    """Rules M1/M2 amount_mismatch (one-to-many): a sale's approved refunds, voids, reversals and
    automatic refunds (host), or a wallet order's refunds not failed (statement), together more
    than the sale, for a sale given back against today. Keys ``card:refunds:rrn:<sale RRN>``,
    ``wallet:refunds:<order>``."""
    t, sale = transactions, transactions.alias("sale")
    today = (
        select(t.c.original_id)
        .join(rc_day, rc_day.c.mid == t.c.mid)
        .where(
            t.c.original_id.is_not(None),
            t.c.created_at >= p.window_lo,
            t.c.created_at < p.window_hi,
            t.c.created_at >= rc_day.c.lo,
            t.c.created_at < rc_day.c.hi,
        )
        .distinct()
        .subquery("today")
    )
    back = t.alias("back")
    sums = (
        select(back.c.original_id, func.sum(back.c.amount_minor).label("given"), func.count().label("n"))
        .join(today, today.c.original_id == back.c.original_id)
        .where(back.c.kind.in_(("refund", "auto_refund", "void", "reversal")), back.c.status == "approved")
        .group_by(back.c.original_id)
        .subquery("sums")
    )
    evidence = json_obj(
        ("rule", literal("card_refunds")),
        ("sale_minor", sale.c.amount_minor),
        ("given_back_minor", sums.c.given),
        ("count", sums.c.n),
        ("planned", json_raw(literal("[]"))),
    )
    card = (
        select(
            literal(EC.AMOUNT_MISMATCH.value),
            "card:refunds:rrn:" + sale.c.rrn,
            literal("card_refunds"),
            sale.c.mid,
            sale.c.tid,
            literal("card"),
            sale.c.rrn,
            literal(None, String),
            sale.c.batch,
            sale.c.stan,
            sale.c.amount_minor,
            evidence,
            literal(0),
        )
        .join(sums, sums.c.original_id == sale.c.id)
        .where(sums.c.given > sale.c.amount_minor)
    )
    n = _insert(conn, card)
    s = wallet_statement_rows
    orders = select(rc_stmt.c.out_trade_no).where(rc_stmt.c.kind == "refund").distinct().subquery("o")
    wsum = (
        select(
            s.c.out_trade_no,
            func.max(s.c.total_minor).label("total"),
            func.sum(s.c.refund_minor).label("given"),
            func.count().label("n"),
        )
        .join(orders, orders.c.out_trade_no == s.c.out_trade_no)
        .where(s.c.trade_state == "REFUND", s.c.refund_status != "CHANGE")
        .group_by(s.c.out_trade_no)
        .subquery("w")
    )
    wev = json_obj(
        ("rule", literal("wallet_refunds")),
        ("total_minor", wsum.c.total),
        ("given_back_minor", wsum.c.given),
        ("count", wsum.c.n),
        ("planned", json_raw(literal("[]"))),
    )
    wallet = select(
        literal(EC.AMOUNT_MISMATCH.value),
        "wallet:refunds:" + wsum.c.out_trade_no,
        literal("wallet_refunds"),
        literal(None, String),
        literal(None, String),
        literal("wallet"),
        literal(None, String),
        wsum.c.out_trade_no,
        literal(None, String),
        literal(None, String),
        wsum.c.total,
        wev,
        literal(0),
    ).where(wsum.c.given > wsum.c.total)
    return n + _insert(conn, wallet)


def _fact(kind: str, tid: Any, reference: Any, *, to_customer: bool = False) -> Any:
    """A fact of this kind about this payment was received; ``to_customer``: one addressed to
    the customer's own contact (an e-receipt kept for the merchant told the customer nothing)."""
    f = backoffice_facts.alias()
    where = [f.c.kind == kind, f.c.tid == tid, f.c.reference == reference]
    if to_customer:
        where.append(f.c.recipient != MERCHANT)
    return exists().where(*where)


def notified_not_final(conn: Connection, p: Params) -> int:
    """Rule N notified_not_final: the customer was sent the e-receipt ("paid", to their own
    contact) of a payment that ended otherwise — a card sale the host has reversed, voided or
    declined; a wallet order reversed, closed or REVOKED on the statement — and no "payment
    cancelled" notice followed.
    The facts' reference is ``batch.trace`` on the card rail, the order number on the wallet's."""
    c = rc_card.c
    ref = c.batch + "." + c.stan
    ev = json_obj(
        ("rule", literal("notice_card")),
        ("host_status", c.h_status),
        ("journal_state", c.j_state),
        ("told", literal("e_receipt")),
        ("planned", json_raw(literal(PLANNED[EC.NOTIFIED_NOT_FINAL]))),
    )
    card = select(
        literal(EC.NOTIFIED_NOT_FINAL.value),
        _card_key(c),
        literal("notice_card"),
        c.mid,
        c.tid,
        literal("card"),
        c.rrn,
        literal(None, String),
        c.batch,
        c.stan,
        func.coalesce(c.h_amount, c.j_amount),
        ev,
        literal(0),
    ).where(
        c.core == 1,
        c.kind == "sale",
        c.j_id.is_not(None),
        or_(
            c.h_status.in_(("reversed", "voided", "declined")),
            and_(c.h_id.is_(None), c.j_state != "approved"),
        ),
        _fact("e_receipt", c.tid, ref, to_customer=True),
        ~_fact("payment_cancelled", c.tid, ref),
    )
    n = _insert(conn, card)
    w = rc_wallet.c
    wev = json_obj(
        ("rule", literal("notice_wallet")),
        ("journal_state", w.j_state),
        ("statement_state", w.s_state),
        ("told", literal("e_receipt")),
        ("planned", json_raw(literal(PLANNED[EC.NOTIFIED_NOT_FINAL]))),
    )
    wallet = select(
        literal(EC.NOTIFIED_NOT_FINAL.value),
        "wallet:" + w.order_no,
        literal("notice_wallet"),
        w.mid,
        w.tid,
        literal("wallet"),
        literal(None, String),
        w.order_no,
        literal(None, String),
        literal(None, String),
        w.j_amount,
        wev,
        literal(0),
    ).where(
        w.core == 1,
        w.kind == "pay",
        w.j_id.is_not(None),
        or_(w.j_state.in_(("revoked", "closed")), w.s_state == "REVOKED"),
        _fact("e_receipt", w.tid, w.order_no, to_customer=True),
        ~_fact("payment_cancelled", w.tid, w.order_no),
    )
    return n + _insert(conn, wallet)


def signin_failures(conn: Connection, p: Params) -> int:
    """Rule S signin_failures, one per terminal and day: the terminal announced repeated sign-in
    failures (a ``sign_in_failures`` merchant alert fact received today), or a key session of
    it expired during business hours with no new sign-in before it expired."""
    f = backoffice_facts
    alerts = (
        select(f.c.tid.label("tid"), literal(1).label("alert"), literal(0).label("expired"))
        .join(terminals, terminals.c.tid == f.c.tid)
        .join(rc_day, rc_day.c.mid == terminals.c.mid)
        .where(
            f.c.kind == "merchant_alert",
            f.c.payload.like('%"alert": "sign_in_failures"%'),
            f.c.received_at >= p.window_lo,
            f.c.received_at < p.window_hi,
            f.c.received_at >= rc_day.c.lo,
            f.c.received_at < rc_day.c.hi,
        )
    )
    later = sessions.alias("later")
    expired = (
        select(sessions.c.tid, literal(0), literal(1))
        .join(terminals, terminals.c.tid == sessions.c.tid)
        .join(rc_day, rc_day.c.mid == terminals.c.mid)
        .where(
            sessions.c.expires_at >= rc_day.c.bh_lo,
            sessions.c.expires_at < rc_day.c.bh_hi,
            ~exists().where(
                later.c.tid == sessions.c.tid,
                later.c.id > sessions.c.id,
                later.c.signed_in_at <= sessions.c.expires_at,
            ),
        )
    )
    both = alerts.union_all(expired).subquery("s")
    per = (
        select(both.c.tid, func.sum(both.c.alert).label("alerts"), func.sum(both.c.expired).label("expired"))
        .group_by(both.c.tid)
        .subquery("per")
    )
    ev = json_obj(
        ("rule", literal("signin")),
        ("alerts", per.c.alerts),
        ("sessions_expired", per.c.expired),
        ("planned", json_raw(literal(PLANNED[EC.SIGNIN_FAILURES]))),
    )
    query = (
        select(
            literal(EC.SIGNIN_FAILURES.value),
            "terminal:" + per.c.tid + ":" + p.business_date,
            literal("signin"),
            terminals.c.mid,
            per.c.tid,
            literal("terminal"),
            literal(None, String),
            literal(None, String),
            literal(None, String),
            literal(None, String),
            literal(None, BigInteger),
            ev,
            literal(0),
        )
        .join(terminals, terminals.c.tid == per.c.tid)
        .where(true())  # SQLite: an INSERT ... SELECT with ON CONFLICT needs a WHERE
    )
    return _insert(conn, query)


RULES = (
    classify_card,
    classify_wallet,
    ledger_and_issuer,
    card_duplicates,
    statement_duplicates,
    refunds_exceed_sale,
    notified_not_final,
    signin_failures,
)


def pending_counts(conn: Connection, p: Params) -> dict[str, int]:
    """How many payments wait for their other side (not exceptions yet), per rail."""
    c, w = rc_card.c, rc_wallet.c
    card = conn.execute(
        select(func.count()).where(
            c.core == 1,
            c.at >= p.recent_from,
            or_(
                and_(c.j_id.is_(None), c.h_status == "approved"),
                and_(c.kind == "sale", c.h_status == "approved", c.j_state.not_in(("approved", "voided"))),
            ),
        )
    ).scalar_one()
    tail = exists().where(rc_day.c.mid == w.mid, w.at >= rc_day.c.tail_from)
    waiting = or_(literal(not p.stmt_ready), and_(literal(not p.stmt_next_ready), tail))
    wallet = conn.execute(
        select(func.count()).where(
            w.core == 1,
            w.j_id.is_not(None),
            w.s_state.is_(None),
            w.j_state.in_(("success", "approved")),
            waiting,
        )
    ).scalar_one()
    return {"card": int(card), "wallet": int(wallet)}
