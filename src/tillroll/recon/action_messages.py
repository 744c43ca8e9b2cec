"""The exception service's messages: to the customer (e-receipt, follow-up, notice) and to the
merchant (alerts), through the back office's notify outbox in the action's transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from tillroll.crypto.backoffice import day_number, make_token
from tillroll.notify.contacts import ContactError, parse_contact
from tillroll.notify.facts import AlertKind, FactError
from tillroll.notify.outbox import Channel, MessageKind
from tillroll.notify.routing import fan_out
from tillroll.notify.templates import help_url
from tillroll.recon.action_effects import Effect, Env, Exc, entries_of, host_sale
from tillroll.recon.model import ActionKind, ActionOutcome
from tillroll.store.tables import backoffice_facts, e_receipts, merchants, recon_actions, terminals


@dataclass(frozen=True)
class Payment:
    mid: str | None
    tz: str | None
    amount_minor: int | None
    at: datetime
    card_masked: str | None


def payment_of(conn: Connection, exc: Exc) -> Payment:
    entries = entries_of(conn, exc)
    sale = host_sale(conn, exc) if exc.rail == "card" else None
    mid = exc.mid or (None if sale is None else str(sale["mid"]))
    if mid is None and exc.tid:
        mid = conn.execute(select(terminals.c.mid).where(terminals.c.tid == exc.tid)).scalar()
    tz = None if mid is None else conn.execute(select(merchants.c.tz).where(merchants.c.mid == mid)).scalar()
    first = entries[0] if entries else None
    amount = exc.amount_minor
    if amount is None and first is not None and first["amount_minor"] is not None:
        amount = int(first["amount_minor"])
    if amount is None and sale is not None:
        amount = int(sale["amount_minor"])
    at = None if first is None else (first["approved_at"] or first["created_at"])
    if at is None and sale is not None:
        at = sale["created_at"]
    masked = first["card_masked"] if first is not None else (None if sale is None else sale["pan_masked"])
    return Payment(mid, tz, amount, at or exc.created_at, masked or None)


def contact_of(conn: Connection, exc: Exc) -> str | None:
    """The customer's contact, as the cashier took it: the evidence, the journal copy, a fact."""
    given = exc.evidence.get("contact")
    if isinstance(given, str) and given.strip():
        return given.strip()
    for entry in entries_of(conn, exc):
        if entry["contact"]:
            return str(entry["contact"])
    if exc.tid and exc.reference:
        recipient = conn.execute(
            select(backoffice_facts.c.recipient)
            .where(
                backoffice_facts.c.tid == exc.tid,
                backoffice_facts.c.reference == exc.reference,
                backoffice_facts.c.recipient != "merchant",
            )
            .order_by(backoffice_facts.c.id.desc())
        ).scalar()
        if recipient:
            return str(recipient)
    return None


def _fact_id(env: Env, exc: Exc, what: str) -> str:
    """One fact per attempt: a person's resend is a new message, a replayed transaction is not."""
    count = env.conn.execute(
        select(recon_actions.c.id).where(
            recon_actions.c.exception_id == exc.id, recon_actions.c.action == what
        )
    ).all()
    return f"recon-{exc.id}-{what}-{len(count) + 1}"


_CHANNEL_WORDS = {Channel.SMS: ("短信", "SMS"), Channel.EMAIL: ("邮件", "e-mail")}


def _merchant_key(exc: Exc, pay: Payment) -> dict[str, Any]:
    """The terminal when known (the notifications look its merchant up), else the merchant."""
    return {"tid": exc.tid} if exc.tid else {"mid": pay.mid}


def _failures(conn: Connection, exc: Exc) -> int | None:
    """How many sign-in failures in a row: the evidence's count, else the terminal's own alert."""
    for name in ("failures", "count"):
        value = exc.evidence.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if not exc.tid:
        return None
    payload = conn.execute(
        select(backoffice_facts.c.payload)
        .where(
            backoffice_facts.c.tid == exc.tid,
            backoffice_facts.c.kind == MessageKind.MERCHANT_ALERT.value,
            backoffice_facts.c.payload.like('%"alert": "sign_in_failures"%'),
        )
        .order_by(backoffice_facts.c.id.desc())
    ).scalar()
    try:
        doc = json.loads(payload) if payload else {}
    except ValueError:
        return None
    value = doc.get("count", doc.get("attempts")) if isinstance(doc, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _customer_fact(env: Env, exc: Exc, what: str, contact: str, pay: Payment) -> dict[str, Any]:
    fact: dict[str, Any] = {
        "id": _fact_id(env, exc, what),
        "at": pay.at.isoformat(),
        **_merchant_key(exc, pay),
        "amount_minor": pay.amount_minor,
        "contact": contact,
        "tid": exc.tid,
        "reference": exc.reference or exc.key,
        "help": help_url(env.base_url),
    }
    if pay.tz:
        fact["tz"] = pay.tz
    if pay.card_masked:
        fact["pan_masked"] = pay.card_masked
    return fact


def _send(env: Env, kind: MessageKind, fact: Mapping[str, Any], contact: str | None) -> Effect:
    try:
        written = fan_out(env.conn, kind, fact, env.now)
    except (FactError, ContactError) as exc:
        return Effect.failed(f"消息无法发出：{exc}", f"the message cannot be sent: {exc}")
    if contact is None:
        return Effect.queued("", "", message_ids=[m.message_id for m in written])
    direct = [m for m in written if m.channel in _CHANNEL_WORDS]
    if not direct:
        return Effect.skipped("这条消息之前已发出。", "this message was sent before")
    shown = parse_contact(contact).masked()
    zh, en = _CHANNEL_WORDS[direct[0].channel]
    return Effect.queued(
        f"已通过{zh}通知顾客（{shown}），正在投递。",
        f"the customer is told by {en} ({shown}); delivery is under way",
        message_ids=[m.message_id for m in written],
    )


_NO_CONTACT = (
    "不知道顾客的联系方式（收银时未留手机号或邮箱），无法通知；请当面或电话联系顾客。",
    "no contact is known for this customer (none was taken at the till): tell them in person or by phone",
)


def tell_customer(env: Env, exc: Exc, kind: MessageKind) -> Effect:
    contact = contact_of(env.conn, exc)
    if contact is None:
        return Effect.failed(*_NO_CONTACT)
    pay = payment_of(env.conn, exc)
    if pay.amount_minor is None:
        return Effect.failed(
            "不知道这笔交易的金额，无法通知顾客。",
            "the payment's amount is not known: cannot tell the customer",
        )
    action = ActionKind.CONTACT_CUSTOMER if kind is MessageKind.PAYMENT_FOLLOW_UP else ActionKind.SEND_NOTICE
    return _send(env, kind, _customer_fact(env, exc, action.value, contact, pay), contact)


def send_e_receipt(env: Env, exc: Exc) -> Effect:
    """The e-receipt's link (/r/<token>, signed with the terminal's back-office key) to the
    customer; only for a receipt the terminal delivered (else the link would show nothing)."""
    from tillroll.web.intake import terminal_key  # the web's own key lookup

    conn = env.conn
    reference = exc.reference
    receipt = None
    if exc.tid and reference:
        receipt = conn.execute(
            select(e_receipts.c.at_utc).where(
                e_receipts.c.tid == exc.tid, e_receipts.c.reference == reference
            )
        ).first()
    if receipt is None or exc.tid is None or reference is None:
        return Effect.failed(
            "终端尚未送达这笔交易的电子小票，无法发送链接；请先请终端补打小票。",
            "the terminal has not delivered this payment's e-receipt yet: no link to send; ask it to reprint",
        )
    contact = contact_of(conn, exc)
    if contact is None:
        return Effect.failed(*_NO_CONTACT)
    key = terminal_key(conn, env.keystore, exc.tid)
    if key is None:
        return Effect.failed(
            f"终端{exc.tid}没有后台密钥，无法生成小票链接。",
            f"terminal {exc.tid} has no back-office key: no link can be made",
        )
    token = make_token(key, exc.tid, reference, day_number(receipt.at_utc))
    pay = payment_of(conn, exc)
    fact = _customer_fact(env, exc, ActionKind.SEND_E_RECEIPT.value, contact, pay)
    fact["link"] = f"{env.base_url.rstrip('/')}/r/{token}"
    return _send(env, MessageKind.E_RECEIPT, fact, contact)


def alert_merchant(env: Env, exc: Exc, alert: AlertKind) -> Effect:
    pay = payment_of(env.conn, exc)
    if pay.mid is None:
        return Effect.failed("不知道是哪家商户，无法提醒。", "the merchant is not known: no one to alert")
    count = _failures(env.conn, exc) if alert is AlertKind.SIGN_IN_FAILURES else None
    detail = f"{exc.klass.value} {exc.reference or exc.key}"
    if alert is AlertKind.SIGN_IN_FAILURES and count is None:
        # no count of failures in the evidence: a key session expired in business hours
        alert, detail = (
            AlertKind.RECON_FOUND,
            "密钥会话在营业时间内过期 / key session expired in business hours",
        )
    fact: dict[str, Any] = {
        "id": _fact_id(env, exc, alert.value),
        "at": env.now.isoformat(),
        **_merchant_key(exc, pay),
        "alert": alert.value,
        "count": "" if count is None else count,
        "reference": exc.reference or exc.key,
        "detail": detail,
    }
    if pay.tz:
        fact["tz"] = pay.tz
    sent = _send(env, MessageKind.MERCHANT_ALERT, fact, None)
    if sent.outcome is not ActionOutcome.QUEUED:
        return sent
    if not sent.data.get("message_ids"):
        return Effect.failed(
            "商户没有登记任何通知地址，提醒无法发出；请用 tillroll notify add-endpoint 登记。",
            "the merchant has no notification address: add one with `tillroll notify add-endpoint`",
        )
    return Effect.queued(
        "已提醒商户（所有登记的通知地址）。",
        "the merchant is alerted (every registered address)",
        **sent.data,
    )
