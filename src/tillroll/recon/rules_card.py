"""The card rail's rules (over rc_card, the journal beside the host): classification C1-C7,
refunds more than their sale (M1), the customer told "paid" (N), sign-in failures (S)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
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
    true,
)

from tillroll.recon.found import OPEN_REFUND, PLANNED, Params, card_key, fact, insert_found, planned
from tillroll.recon.model import ExceptionClass as EC
from tillroll.recon.sqlfn import json_obj, json_raw, text_of
from tillroll.recon.stage import rc_card, rc_day
from tillroll.store.tables import (
    backoffice_facts,
    sessions,
    terminals,
    transactions,
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
        ("planned", planned(k.cls, k.reprint)),
    )
    query = select(
        k.cls,
        card_key(k),
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
    return insert_found(conn, query)


def refunds_exceed_sale(conn: Connection, p: Params) -> int:
    """Rule M1 amount_mismatch (one-to-many): a sale's approved refunds, voids, reversals and
    automatic refunds (host) together more than the sale, for a sale given back against today.
    Key ``card:refunds:rrn:<sale RRN>``."""
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
    return insert_found(conn, card)


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
        card_key(c),
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
        fact("e_receipt", c.tid, ref, to_customer=True),
        ~fact("payment_cancelled", c.tid, ref),
    )
    return insert_found(conn, card)


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
            sessions.c.expires_at >= p.window_lo,  # the index's bounds (business hours lie within)
            sessions.c.expires_at < p.window_hi,
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
    return insert_found(conn, query)


def pending_card(p: Params) -> Any:
    """A card payment of the day that waits for its other side (not an exception yet): a host
    approval newer than the ageing window the journal has not (or not as approved) yet."""
    c = rc_card.c
    return and_(
        c.core == 1,
        c.at >= p.recent_from,
        or_(
            and_(c.j_id.is_(None), c.h_status == "approved"),
            and_(c.kind == "sale", c.h_status == "approved", c.j_state.not_in(("approved", "voided"))),
        ),
    )
