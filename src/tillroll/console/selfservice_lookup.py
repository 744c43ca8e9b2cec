"""Customer self-service, the part without a web page: find one payment from what a customer
knows, tell its true state, and open a case for the merchant.

A customer gives the card's last 4 digits **or** the wallet order number, the amount and the
day (merchant-local). A payment is *found* only when exactly one matches all of them; what is
shown of it is what the customer already has (merchant, time, amount, the last 4 or the order
number) plus its true state and its e-receipt link. Several matches are *ambiguous* and none is
*not found* — both are answered alike and reveal nothing about any payment.

Where the truth comes from: card payments from the host's ``transactions`` (sale status, approved
refunds and the host's own automatic refunds), refunds still on their way from the terminals'
uploaded journals (``journal_entries``); wallet payments from the uploaded journals, else the
imported wallet statement. The e-receipt link is the one the back office serves (its token made
with the terminal's back-office key, as the slip's QR code is).

A case is a ``recon_exceptions`` row keyed ``customer:<reference>`` (class charged_no_receipt or
refund_stuck by the claim), with what the customer said and what was found as its evidence, and
an audit row, in one transaction. The reference (``SS-XXXX-XXXX``) is what the customer keeps.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select

from tillroll.clock import local_day_bounds, merchant_zone, to_merchant_local
from tillroll.console.audit import record
from tillroll.crypto.backoffice import day_number, make_token
from tillroll.crypto.keystore import KeyStore
from tillroll.money import AmountError, parse_yuan
from tillroll.recon.model import ExceptionClass, ExceptionState
from tillroll.store.tables import (
    e_receipts,
    journal_entries,
    merchants,
    recon_exceptions,
    terminals,
    transactions,
    wallet_statement_rows,
)
from tillroll.web.intake import terminal_key

MAX_CANDIDATES = 20
_LAST4 = re.compile(r"\d{4}")
_ORDER = re.compile(r"[A-Za-z0-9_-]{6,40}")
_REF_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud over the phone
OPEN_REFUND_STATES = ("requested", "submitted", "unknown")
CASE_DEADLINE = timedelta(days=2)


class Claim(enum.StrEnum):
    NO_RECEIPT = "no_receipt"  # 已扣款但没有凭证 — charged but no receipt
    REFUND_MISSING = "refund_missing"  # 退款未到账 — my refund has not arrived


class Truth(enum.StrEnum):
    """A payment's true state, as the customer is told it."""

    PAID = "paid"
    REFUNDED = "refunded"  # wholly
    PARTLY_REFUNDED = "partly_refunded"
    REFUND_ON_ITS_WAY = "refund_on_its_way"  # a refund asked for, not final yet
    NOT_CHARGED = "not_charged"  # reversed, voided, cancelled, closed: nothing kept
    NOT_FINAL = "not_final"  # the terminal has not reported an end yet


class Finding(enum.StrEnum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    AMBIGUOUS = "ambiguous"


class SelfServiceInputError(ValueError):
    """What is wrong with the form, in 中文 and English."""


@dataclass(frozen=True)
class Query:
    claim: Claim
    amount_minor: int
    day: date
    last4: str | None = None
    order_no: str | None = None
    contact: str | None = None

    def given(self) -> dict[str, Any]:
        return {
            "claim": self.claim.value,
            "amount_minor": self.amount_minor,
            "day": self.day.isoformat(),
            "last4": self.last4,
            "order_no": self.order_no,
            "contact": self.contact,
        }


def parse_query(
    *, claim: str, amount: str, day: str, last4: str = "", order_no: str = "", contact: str = ""
) -> Query:
    try:
        c = Claim(claim)
    except ValueError:
        raise SelfServiceInputError("请选择您遇到的问题 / choose what happened") from None
    try:
        amount_minor = parse_yuan(amount)
    except AmountError:
        raise SelfServiceInputError("金额格式不对，例如 12.50 / write the amount like 12.50") from None
    if amount_minor <= 0:
        raise SelfServiceInputError("金额必须大于零 / the amount must be more than zero")
    try:
        d = date.fromisoformat(day.strip())
    except ValueError:
        raise SelfServiceInputError(
            "日期格式不对，例如 2026-12-02 / write the date like 2026-12-02"
        ) from None
    last4, order_no = last4.strip(), order_no.strip()
    if bool(last4) == bool(order_no):
        raise SelfServiceInputError(
            "请填写卡号后四位或订单号（二选一） / give either the card's last 4 digits or the order number"
        )
    if last4 and not _LAST4.fullmatch(last4):
        raise SelfServiceInputError("卡号后四位应为4位数字 / the card's last 4 digits are 4 digits")
    if order_no and not _ORDER.fullmatch(order_no):
        raise SelfServiceInputError("订单号格式不对 / the order number is letters and digits, 6-40 long")
    contact = contact.strip()[:255]
    return Query(c, amount_minor, d, last4 or None, order_no or None, contact or None)


@dataclass
class Payment:
    """What the customer is shown of the one payment found (nothing they did not give, but its
    state, time, merchant and e-receipt), and what the merchant's case needs."""

    rail: str  # card | wallet
    tid: str | None
    mid: str | None
    merchant_name: str
    reference: str  # card: batch.trace; wallet: the order number
    amount_minor: int
    at_utc: datetime
    at_local: str
    truth: Truth
    refunded_minor: int = 0
    refund_approved_at: str | None = None  # merchant-local time of the last approved refund
    refunds_open: int = 0
    rrn: str | None = None
    batch: str | None = None
    stan: str | None = None
    order_no: str | None = None
    card_last4: str | None = None
    receipt_url: str | None = None

    def evidence(self) -> dict[str, Any]:
        data = asdict(self)
        data["at_utc"] = self.at_utc.isoformat()
        data["truth"] = self.truth.value
        return data


@dataclass
class Lookup:
    finding: Finding
    payment: Payment | None = None
    candidates: int = 0
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @property
    def needs_case(self) -> bool:
        """Does what was found leave the customer's problem open? (a case is opened for them)"""
        p = self.payment
        if self.finding is not Finding.FOUND or p is None:
            return False
        if p.truth in (Truth.NOT_FINAL, Truth.REFUND_ON_ITS_WAY):
            return True
        return p.truth is Truth.PAID and p.receipt_url is None


def _local_text(instant: datetime | None, zone: tzinfo) -> str | None:
    return to_merchant_local(instant, zone).strftime("%Y-%m-%d %H:%M") if instant is not None else None


def _in_day(instant: datetime, tz_name: str, day: date) -> bool:
    return to_merchant_local(instant, merchant_zone(tz_name)).date() == day


def _window(day: date) -> tuple[datetime, datetime]:
    # every merchant zone's day lies within the UTC day around it (zones are within ±14 h)
    start, end = local_day_bounds(day, merchant_zone("UTC"))
    return start - timedelta(hours=14), end + timedelta(hours=14)


def _receipt_url(conn: Connection, keystore: KeyStore, base_url: str, tid: str, reference: str) -> str | None:
    row = conn.execute(
        select(e_receipts.c.at_utc).where(e_receipts.c.tid == tid, e_receipts.c.reference == reference)
    ).first()
    if row is None:
        return None
    key = terminal_key(conn, keystore, tid)
    if key is None:
        return None
    return f"{base_url.rstrip('/')}/r/{make_token(key, tid, reference, day_number(row.at_utc))}"


def lookup(conn: Connection, keystore: KeyStore, q: Query, *, base_url: str) -> Lookup:
    if q.last4 is not None:
        return _card(conn, keystore, q, base_url)
    return _wallet(conn, keystore, q, base_url)


def _card(conn: Connection, keystore: KeyStore, q: Query, base_url: str) -> Lookup:
    assert q.last4 is not None
    lo, hi = _window(q.day)
    rows = (
        conn.execute(
            select(transactions, merchants.c.tz, merchants.c.name.label("merchant_name"))
            .join(merchants, merchants.c.mid == transactions.c.mid)
            .where(
                transactions.c.kind == "sale",
                transactions.c.amount_minor == q.amount_minor,
                transactions.c.pan_masked.like(f"%{q.last4}"),
                transactions.c.created_at >= lo,
                transactions.c.created_at < hi,
                transactions.c.status.in_(("approved", "reversed", "voided")),
            )
            .limit(MAX_CANDIDATES)
        )
        .mappings()
        .all()
    )
    matches = [r for r in rows if _in_day(r["created_at"], r["tz"], q.day)]
    if len(matches) != 1:
        return Lookup(Finding.AMBIGUOUS if matches else Finding.NOT_FOUND, candidates=len(matches),
                      evidence=[{"rrn": r["rrn"], "tid": r["tid"]} for r in matches])  # fmt: skip
    sale = matches[0]
    refunded = conn.execute(
        select(
            func.coalesce(func.sum(transactions.c.amount_minor), 0), func.max(transactions.c.created_at)
        ).where(
            transactions.c.original_id == sale["id"],
            transactions.c.kind.in_(("refund", "auto_refund")),
            transactions.c.status == "approved",
        )
    ).one()
    refunded_minor, refunded_at = int(refunded[0]), refunded[1]
    sale_key = (
        select(journal_entries.c.entry_key)
        .where(journal_entries.c.tid == sale["tid"], journal_entries.c.rrn == sale["rrn"])
        .where(journal_entries.c.kind == "sale")
        .scalar_subquery()
    )
    refunds_open = conn.execute(
        select(func.count())
        .select_from(journal_entries)
        .where(
            journal_entries.c.tid == sale["tid"],
            journal_entries.c.kind == "refund",
            journal_entries.c.original_key == sale_key,
            journal_entries.c.state.in_(OPEN_REFUND_STATES),
        )
    ).scalar_one()
    if sale["status"] in ("reversed", "voided"):
        truth = Truth.NOT_CHARGED
    elif refunds_open:
        truth = Truth.REFUND_ON_ITS_WAY
    elif refunded_minor >= sale["amount_minor"]:
        truth = Truth.REFUNDED
    elif refunded_minor:
        truth = Truth.PARTLY_REFUNDED
    else:
        truth = Truth.PAID
    zone = merchant_zone(sale["tz"])
    reference = f"{sale['batch']}.{sale['stan']}"
    payment = Payment(
        rail="card",
        tid=sale["tid"],
        mid=sale["mid"],
        merchant_name=sale["merchant_name"],
        reference=reference,
        amount_minor=int(sale["amount_minor"]),
        at_utc=sale["created_at"],
        at_local=to_merchant_local(sale["created_at"], zone).strftime("%Y-%m-%d %H:%M"),
        truth=truth,
        refunded_minor=refunded_minor,
        refund_approved_at=_local_text(refunded_at, zone),
        refunds_open=int(refunds_open),
        rrn=sale["rrn"],
        batch=sale["batch"],
        stan=sale["stan"],
        card_last4=q.last4,
    )  # fmt: skip
    if truth is not Truth.NOT_CHARGED:
        payment.receipt_url = _receipt_url(conn, keystore, base_url, sale["tid"], reference)
    return Lookup(Finding.FOUND, payment, 1)


_WALLET_TRUTH = {
    "success": Truth.PAID,
    "revoked": Truth.NOT_CHARGED,
    "closed": Truth.NOT_CHARGED,
    "refused": Truth.NOT_CHARGED,
    "not_sent": Truth.NOT_CHARGED,
}


def _wallet(conn: Connection, keystore: KeyStore, q: Query, base_url: str) -> Lookup:
    assert q.order_no is not None
    lo, hi = _window(q.day)
    rows = (
        conn.execute(
            select(journal_entries, merchants.c.tz, merchants.c.mid, merchants.c.name.label("merchant_name"))
            .join(terminals, terminals.c.tid == journal_entries.c.tid)
            .join(merchants, merchants.c.mid == terminals.c.mid)
            .where(
                journal_entries.c.rail == "wallet",
                journal_entries.c.kind == "qr_pay",
                journal_entries.c.order_no == q.order_no,
                journal_entries.c.amount_minor == q.amount_minor,
                journal_entries.c.created_at >= lo,
                journal_entries.c.created_at < hi,
            )
            .limit(MAX_CANDIDATES)
        )
        .mappings()
        .all()
    )
    matches = [r for r in rows if _in_day(r["created_at"], r["tz"], q.day)]
    if len(matches) == 1:
        order = matches[0]
        refunds = conn.execute(
            select(
                journal_entries.c.state, journal_entries.c.amount_minor, journal_entries.c.updated_at
            ).where(
                journal_entries.c.tid == order["tid"],
                journal_entries.c.kind == "qr_refund",
                journal_entries.c.original_key == order["entry_key"],
            )
        ).all()
        approved = [r for r in refunds if r.state == "approved"]
        refunded_minor = sum(int(r.amount_minor or 0) for r in approved)
        refunds_open = sum(1 for r in refunds if r.state in OPEN_REFUND_STATES)
        truth = _WALLET_TRUTH.get(order["state"], Truth.NOT_FINAL)
        if truth is Truth.PAID:
            if refunds_open:
                truth = Truth.REFUND_ON_ITS_WAY
            elif refunded_minor >= int(order["amount_minor"]):
                truth = Truth.REFUNDED
            elif refunded_minor:
                truth = Truth.PARTLY_REFUNDED
        zone = merchant_zone(order["tz"])
        last = max((r.updated_at for r in approved), default=None)
        payment = Payment(
            rail="wallet", tid=order["tid"], mid=order["mid"], merchant_name=order["merchant_name"],
            reference=q.order_no, amount_minor=int(order["amount_minor"]), at_utc=order["created_at"],
            at_local=to_merchant_local(order["created_at"], zone).strftime("%Y-%m-%d %H:%M"), truth=truth,
            refunded_minor=refunded_minor,
            refund_approved_at=_local_text(last, zone),
            refunds_open=refunds_open, rrn=order["rrn"], batch=order["batch"], stan=order["stan"],
            order_no=q.order_no,
        )  # fmt: skip
        if truth is not Truth.NOT_CHARGED:
            payment.receipt_url = _receipt_url(conn, keystore, base_url, order["tid"], q.order_no)
        return Lookup(Finding.FOUND, payment, 1)
    if matches:
        return Lookup(Finding.AMBIGUOUS, candidates=len(matches))
    # Not in any uploaded journal: the wallet's own statement may still know it (charged, the
    # terminal never heard): found, with no merchant page of ours behind it.
    stmt = (
        conn.execute(
            select(wallet_statement_rows).where(
                wallet_statement_rows.c.out_trade_no == q.order_no,
                wallet_statement_rows.c.total_minor == q.amount_minor,
                wallet_statement_rows.c.trade_time >= lo,
                wallet_statement_rows.c.trade_time < hi,
            )
        )
        .mappings()
        .all()
    )
    if not stmt:
        return Lookup(Finding.NOT_FOUND)
    paid = [r for r in stmt if r["trade_state"] == "SUCCESS"]
    revoked = [r for r in stmt if r["trade_state"] == "REVOKED"]
    refunded_minor = sum(int(r["refund_minor"] or 0) for r in stmt if r["trade_state"] == "REFUND")
    first = stmt[0]
    truth = Truth.NOT_CHARGED if revoked else (Truth.PAID if paid else Truth.NOT_FINAL)
    if truth is Truth.PAID and refunded_minor:
        truth = Truth.REFUNDED if refunded_minor >= q.amount_minor else Truth.PARTLY_REFUNDED
    zone = merchant_zone("Asia/Shanghai")  # the statement's day is Beijing time (WALLET.md §4)
    payment = Payment(
        rail="wallet", tid=None, mid=None, merchant_name="", reference=q.order_no,
        amount_minor=q.amount_minor, at_utc=first["trade_time"],
        at_local=to_merchant_local(first["trade_time"], zone).strftime("%Y-%m-%d %H:%M"),
        truth=truth, refunded_minor=refunded_minor, order_no=q.order_no,
    )  # fmt: skip
    return Lookup(Finding.FOUND, payment, 1)


def new_reference() -> str:
    chars = "".join(secrets.choice(_REF_ALPHABET) for _ in range(8))
    return f"SS-{chars[:4]}-{chars[4:]}"


def open_case(conn: Connection, q: Query, found: Lookup, *, now: datetime) -> tuple[str, int]:
    """A case for the merchant (an open exception) with what the customer said and what was
    found; returns (the reference the customer keeps, the exception's id). In the caller's
    transaction, with its audit row."""
    reference = new_reference()
    p = found.payment
    klass = (
        ExceptionClass.REFUND_STUCK if q.claim is Claim.REFUND_MISSING else ExceptionClass.CHARGED_NO_RECEIPT
    )
    evidence = {
        "source": "customer",
        "reference": reference,
        "given": q.given(),
        "finding": found.finding.value,
        "candidates": found.candidates,
        "found": p.evidence() if p is not None else None,
        "planned": [],  # a person answers a customer's case
    }
    exc_id = conn.execute(
        insert(recon_exceptions)
        .values(
            **{"class": klass.value},
            key=f"customer:{reference}",
            business_date=q.day.isoformat(),
            state=ExceptionState.OPEN.value,
            mid=p.mid if p else None,
            tid=p.tid if p else None,
            rail=p.rail if p else ("card" if q.last4 else "wallet"),
            rrn=p.rrn if p else None,
            order_no=(p.order_no if p else q.order_no),
            batch=p.batch if p else None,
            stan=p.stan if p else None,
            amount_minor=q.amount_minor,
            owner=None,
            deadline=now + CASE_DEADLINE,
            evidence=json.dumps(evidence, ensure_ascii=False, sort_keys=True),
            created_at=now,
            updated_at=now,
        )
        .returning(recon_exceptions.c.id)
    ).scalar_one()
    record(
        conn,
        at=now,
        actor="customer",
        action="selfservice.case_opened",
        target=f"exception:{exc_id}",
        mid=p.mid if p else None,
        after={"reference": reference, "class": klass.value, "finding": found.finding.value},
    )
    return reference, int(exc_id)


def find_case(conn: Connection, reference: str) -> dict[str, Any] | None:
    """A case's state by its reference (what the customer may see: state and class only)."""
    row = conn.execute(
        select(recon_exceptions.c.state, recon_exceptions.c["class"], recon_exceptions.c.updated_at).where(
            and_(recon_exceptions.c.key == f"customer:{reference.strip().upper()}")
        )
    ).first()
    return None if row is None else {"state": row.state, "class": row[1], "updated_at": row.updated_at}
