"""The host's own rules (over rc_sale, the host's sales of the day): the ledger and the issuer
beside every approved sale (L), one card charged twice (D1)."""

from __future__ import annotations

from sqlalchemy import (
    Connection,
    String,
    and_,
    case,
    func,
    literal,
    or_,
    select,
)

from tillroll.ledger.postings import CLEARING
from tillroll.recon.found import Params, insert_found
from tillroll.recon.model import ExceptionClass as EC
from tillroll.recon.sqlfn import epoch_s, json_obj, json_raw
from tillroll.recon.stage import rc_sale
from tillroll.store.tables import (
    issuer_authorizations,
    ledger_entries,
    ledger_postings,
)


def ledger_and_issuer(conn: Connection, p: Params) -> int:
    """Rule L: every host sale approved today has the issuer's authorization and the ledger's sale
    entry (clearing leg) for its amount. None: missing_on_one_side; another amount:
    amount_mismatch. Keys ``ledger:rrn:<RRN>``. Over rc_sale (the host's sales of the day, not
    rc_card: it runs beside the card rail's staging)."""
    t = rc_sale
    # The day's sales drive two plain outer joins (an index lookup per sale): a subquery or a
    # nested join of the clearing legs was materialised whole, the whole history read each night.
    le, lp = ledger_entries, ledger_postings
    ia = issuer_authorizations
    missing = or_(lp.c.id.is_(None), ia.c.id.is_(None))  # no sale entry with a clearing leg
    cls = case((missing, EC.MISSING_ON_ONE_SIDE.value), else_=EC.AMOUNT_MISMATCH.value)
    evidence = json_obj(
        ("rule", literal("ledger")),
        (
            "host",
            json_raw(json_obj(("id", t.c.id), ("status", t.c.status), ("amount_minor", t.c.amount_minor))),
        ),
        (
            "ledger",
            json_raw(
                json_obj(
                    ("found", case((lp.c.id.is_(None), 0), else_=1)),
                    ("clearing_minor", lp.c.amount_minor),
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
            "ledger:rrn:" + t.c.rrn,
            literal("ledger"),
            t.c.mid,
            t.c.tid,
            literal("card"),
            t.c.rrn,
            literal(None, String),
            t.c.batch,
            t.c.stan,
            t.c.amount_minor,
            evidence,
            literal(0),
        )
        .select_from(t)
        .outerjoin(le, and_(le.c.reference == t.c.rrn, le.c.kind == "sale"))
        .outerjoin(lp, and_(lp.c.entry_id == le.c.id, lp.c.account == CLEARING))
        .outerjoin(ia, ia.c.id == t.c.issuer_ref)
        .where(
            or_(missing, lp.c.amount_minor != t.c.amount_minor, ia.c.amount_minor != t.c.amount_minor),
        )
    )
    return insert_found(conn, query)


def card_duplicates(conn: Connection, p: Params) -> int:
    """Rule D1 duplicate: two approved host sales on one terminal, one card (masked), one amount
    within ``duplicate_window_s`` seconds: the customer was likely charged twice. The later one is
    the exception (``card:rrn:<later RRN>``). Over the approved sales in rc_sale (the host's sales
    of the day, not rc_card: it runs beside the card rail's staging): first the (terminal, card,
    amount) groups with more than one sale (GROUP BY), then a window function over those groups'
    sales only."""
    t = rc_sale
    sales = [t.c.status == "approved"]
    part = (t.c.tid, t.c.pan_masked, t.c.amount_minor)
    groups = select(*part).where(*sales).group_by(*part).having(func.count() > 1).subquery("g")
    order = (t.c.created_at, t.c.id)
    ranked = (
        select(
            t.c.mid,
            t.c.tid,
            t.c.rrn,
            t.c.batch,
            t.c.stan,
            t.c.amount_minor,
            t.c.pan_masked,
            t.c.created_at.label("at"),
            func.lag(t.c.created_at).over(partition_by=part, order_by=order).label("prev_at"),
            func.lag(t.c.rrn).over(partition_by=part, order_by=order).label("prev_rrn"),
        )
        .join(
            groups,
            and_(
                groups.c.tid == t.c.tid,
                groups.c.pan_masked == t.c.pan_masked,
                groups.c.amount_minor == t.c.amount_minor,
            ),
        )
        .where(*sales)
        .subquery("r")
    )
    r = ranked.c
    evidence = json_obj(
        ("rule", literal("card_duplicate")),
        ("first_rrn", r.prev_rrn),
        ("second_rrn", r.rrn),
        ("card_masked", r.pan_masked),
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
        r.amount_minor,
        evidence,
        literal(0),
    ).where(
        r.prev_at.is_not(None),
        epoch_s(r.at) - epoch_s(r.prev_at) <= p.duplicate_window_s,
    )
    return insert_found(conn, query)
