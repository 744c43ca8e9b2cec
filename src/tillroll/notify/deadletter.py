"""What a dead letter raises: a merchant alert, written in the transaction that marks it dead.

An alert about a dead letter that is itself a dead-letter alert raises nothing (no loop), and
the alert skips the endpoint that is dead. Customer contacts appear in it masked.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from sqlalchemy import Connection

from tillroll.notify.contacts import ContactError, parse_contact
from tillroll.notify.endpoints import disable_endpoint
from tillroll.notify.facts import AlertKind, FactError
from tillroll.notify.outbox import Channel, MessageKind, OutboxTables, Outgoing, StoredMessage, enqueue
from tillroll.notify.relay import DeadHook
from tillroll.notify.routing import fan_out

log = logging.getLogger(__name__)
GONE = 410
MERCHANT = "merchant"  # a terminal's recipient of a merchant alert (as terminal.announce writes it)


def _is_dead_letter_alert(message: StoredMessage) -> bool:
    alert = message.payload.get("alert")
    return message.kind is MessageKind.MERCHANT_ALERT and alert == AlertKind.DEAD_LETTER


def _shown_recipient(message: StoredMessage) -> str:
    if message.channel in (Channel.EMAIL, Channel.SMS) and message.kind is not MessageKind.MERCHANT_ALERT:
        try:
            return parse_contact(message.recipient).masked()
        except ContactError:
            return "***"
    return message.recipient


def _dead_fact_id(message: StoredMessage) -> str:
    return "dead:" + hashlib.sha256(message.message_id.encode()).hexdigest()[:24]


def back_office_dead_letter(conn: Connection, message: StoredMessage, detail: str, now: datetime) -> None:
    """The back office's hook: fan a dead-letter alert out to the merchant's other endpoints."""
    if _is_dead_letter_alert(message):
        log.error("dead-letter alert %s is itself dead; not raising another", message.message_id)
        return
    mid = message.payload.get("mid")
    if not isinstance(mid, str):
        log.error("dead letter %s names no merchant; no alert raised", message.message_id)
        return
    extra = ""
    if message.channel is Channel.WEBHOOK and detail.startswith(f"HTTP {GONE}"):
        # Standard Webhooks: 410 Gone means "stop sending"; the endpoint is switched off.
        disable_endpoint(conn, mid=mid, channel=Channel.WEBHOOK, address=message.recipient)
        extra = " (endpoint disabled / 已停用)"
    fact = {
        "id": _dead_fact_id(message),
        "alert": AlertKind.DEAD_LETTER.value,
        "mid": mid,
        "at": now.isoformat(),
        "attempts": message.attempt,
        "detail": f"{message.kind.value} → {message.channel.value} {_shown_recipient(message)}: "
        f"{detail}{extra}",
        "skip_recipient": message.recipient,
        "dead_message_id": message.message_id,
    }
    try:
        fan_out(conn, MessageKind.MERCHANT_ALERT, fact, now)
    except FactError:
        log.exception("could not raise the dead-letter alert for %s", message.message_id)


def journal_dead_letter(tables: OutboxTables) -> DeadHook:
    """A terminal journal's hook: a merchant alert on its way to the back office."""

    def hook(conn: Connection, message: StoredMessage, detail: str, now: datetime) -> None:
        if _is_dead_letter_alert(message):
            log.error("dead-letter alert %s is itself dead; not raising another", message.message_id)
            return
        tid = str(message.payload.get("tid", ""))
        reference = _dead_fact_id(message)
        enqueue(
            conn,
            tables,
            Outgoing(
                message_id=f"{MessageKind.MERCHANT_ALERT.value}:{tid}:{reference}",
                kind=MessageKind.MERCHANT_ALERT,
                channel=Channel.BACKOFFICE,
                recipient=MERCHANT,
                payload={
                    "tid": tid,
                    "reference": reference,
                    "alert": AlertKind.DEAD_LETTER.value,
                    "at": now.isoformat(),
                    "attempts": message.attempt,
                    "detail": f"{message.kind.value} → {message.channel.value}: {detail}",
                    "dead_message_id": message.message_id,
                },
            ),
            now,
        )

    return hook
