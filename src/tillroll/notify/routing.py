"""Fan-out: a committed fact becomes the messages that announce it, in the same transaction.

The back office calls :func:`fan_out` in the transaction that stores a fact relayed from a
terminal; the host calls it in the transaction that detects a journal loss or closes a batch at
cut-over. Customer facts go to the customer's contact (e-mail or SMS) and, as events, to the
merchant's webhooks; merchant alerts go to every endpoint of the merchant. Each message id is
derived from the fact's id, the channel and the recipient, so a fact fanned out twice is sent
once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from tillroll.notify.contacts import parse_contact
from tillroll.notify.endpoints import merchant_endpoints
from tillroll.notify.facts import AlertKind, Fact, FactError, parse_fact
from tillroll.notify.outbox import MESSAGE_ID_MAX, Channel, MessageKind, Outgoing, enqueue
from tillroll.notify.templates import render, webhook_event
from tillroll.store.tables import merchants, outbox, terminals

log = logging.getLogger(__name__)
# No "." in an id: Standard Webhooks signs "id.timestamp.body" and asks ids to be free of dots.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_HASH_CHARS = 16


def message_id(fact_id: str, channel: Channel, recipient: str) -> str:
    """``<fact id, [A-Za-z0-9_-] only>_<channel>_<hash>``: stable for one (fact, channel,
    recipient), distinct otherwise (the hash covers the raw values), usable as a webhook-id and
    in an e-mail Message-ID."""
    digest = hashlib.sha256(f"{fact_id}\0{channel.value}\0{recipient}".encode()).hexdigest()[:_HASH_CHARS]
    tail = f"_{channel.value}_{digest}"
    head = _UNSAFE.sub("-", fact_id).strip("-")[: MESSAGE_ID_MAX - len(tail)]
    return head + tail


def _with_merchant(conn: Connection, fact: Fact) -> Fact:
    mid = fact.mid
    if mid is None:
        tid = fact.details.get("tid")
        if tid is not None:
            mid = conn.execute(select(terminals.c.mid).where(terminals.c.tid == str(tid))).scalar()
    if mid is None:
        raise FactError(f"fact {fact.fact_id} names no merchant (mid, or a registered tid)")
    name = fact.merchant_name or conn.execute(select(merchants.c.name).where(merchants.c.mid == mid)).scalar()
    if name is None:
        raise FactError(f"fact {fact.fact_id}: merchant {mid} is not registered")
    return fact.with_merchant(str(mid), str(name))


def _direct(fact: Fact, channel: Channel, recipient: str) -> Outgoing:
    """An e-mail or SMS: the rendered text travels in the payload (what is sent is what is stored)."""
    rendered = render(fact)
    payload: dict[str, Any] = {"fact_id": fact.fact_id, "mid": fact.mid, "text": rendered.text}
    if channel is Channel.EMAIL:
        payload["subject"] = rendered.subject
    if fact.alert is not None:
        payload["alert"] = fact.alert.value
    return Outgoing(message_id(fact.fact_id, channel, recipient), fact.kind, channel, recipient, payload)


def _webhook(fact: Fact, url: str) -> Outgoing:
    event = webhook_event(fact)
    payload: dict[str, Any] = {
        "fact_id": fact.fact_id,
        "mid": fact.mid,
        # The exact body bytes that are signed and sent, fixed once.
        "body": json.dumps(event, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
    }
    if fact.alert is not None:
        payload["alert"] = fact.alert.value
    return Outgoing(message_id(fact.fact_id, Channel.WEBHOOK, url), fact.kind, Channel.WEBHOOK, url, payload)


def messages_for(conn: Connection, kind: MessageKind, fact: Mapping[str, Any]) -> list[Outgoing]:
    """The messages that announce ``fact`` (nothing written). Raises FactError or ContactError."""
    parsed = _with_merchant(conn, parse_fact(kind, fact))
    out: list[Outgoing] = []
    if kind is not MessageKind.MERCHANT_ALERT and parsed.contact:
        contact = parse_contact(parsed.contact)
        out.append(_direct(parsed, contact.channel, contact.address))
    # A dead-letter alert is not sent to the endpoint that is dead.
    skip = parsed.details.get("skip_recipient") if parsed.alert is AlertKind.DEAD_LETTER else None
    assert parsed.mid is not None
    for endpoint in merchant_endpoints(conn, parsed.mid):
        if endpoint.address == skip:
            continue
        if endpoint.channel is Channel.WEBHOOK:
            out.append(_webhook(parsed, endpoint.address))
        elif kind is MessageKind.MERCHANT_ALERT:
            out.append(_direct(parsed, endpoint.channel, endpoint.address))
    if kind is MessageKind.MERCHANT_ALERT and not out:
        log.warning("merchant %s has no notification endpoint: alert %s not sent", parsed.mid, parsed.fact_id)
    return out


def fan_out(conn: Connection, kind: MessageKind, fact: Mapping[str, Any], now: datetime) -> list[Outgoing]:
    """Write the messages announcing ``fact`` to the back office's outbox, in the caller's
    transaction; returns those newly written (none when the fact was fanned out before).

    Raises :class:`~tillroll.notify.facts.FactError` (a missing field, a state that is not
    final, a full card number) or :class:`~tillroll.notify.contacts.ContactError` (a contact
    that is neither an e-mail address nor a phone number) and writes nothing then."""
    messages = messages_for(conn, kind, fact)
    return [m for m in messages if enqueue(conn, outbox, m, now)]
