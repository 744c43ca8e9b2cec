"""The wallet rail's rules (over rc_stmt and rc_wallet, the journal beside the statement):
classification W1-W7, statement duplicates (D2), refunds more than their order (M2), the
customer told "paid" (N)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    case,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
)

from tillroll.recon.found import OPEN_REFUND, PLANNED, Params, fact, insert_found, planned
from tillroll.recon.model import ExceptionClass as EC
from tillroll.recon.sqlfn import json_obj, json_raw, text_of
from tillroll.recon.stage import rc_day, rc_stmt, rc_wallet
from tillroll.store.tables import (
    wallet_statement_rows,
)


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
        ("planned", planned(k.cls, k.reprint)),
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
    return insert_found(conn, query)


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
    return insert_found(conn, query)


def refunds_exceed_order(conn: Connection, p: Params) -> int:
    """Rule M2 amount_mismatch (one-to-many): a wallet order's refunds not failed (statement),
    together more than the order, for an order refunded on today's statement. Key
    ``wallet:refunds:<order>``."""
    s = wallet_statement_rows
    # IN (the day's refunded orders): an index lookup per order. A join let SQLite walk the
    # whole statement history's index in order (for the GROUP BY) and probe the day's orders.
    orders = select(rc_stmt.c.out_trade_no).where(rc_stmt.c.kind == "refund")
    wsum = (
        select(
            s.c.out_trade_no,
            func.max(s.c.total_minor).label("total"),
            func.sum(s.c.refund_minor).label("given"),
            func.count().label("n"),
        )
        .where(s.c.out_trade_no.in_(orders), s.c.trade_state == "REFUND", s.c.refund_status != "CHANGE")
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
    return insert_found(conn, wallet)


def notified_not_final_wallet(conn: Connection, p: Params) -> int:
    """Rule N on the wallet rail (see ``notified_not_final``): an order reversed, closed or
    REVOKED on the statement whose customer got the e-receipt, with no cancel notice after."""
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
        fact("e_receipt", w.tid, w.order_no, to_customer=True),
        ~fact("payment_cancelled", w.tid, w.order_no),
    )
    return insert_found(conn, wallet)


def pending_wallet(p: Params) -> Any:
    """A wallet payment of the day that waits for its statement row: the day's statement (or,
    near its end, the next day's) is not imported yet."""
    w = rc_wallet.c
    tail = exists().where(rc_day.c.mid == w.mid, w.at >= rc_day.c.tail_from)
    waiting = or_(literal(not p.stmt_ready), and_(literal(not p.stmt_next_ready), tail))
    return and_(
        w.core == 1,
        w.j_id.is_not(None),
        w.s_state.is_(None),
        w.j_state.in_(("success", "approved")),
        waiting,
    )
