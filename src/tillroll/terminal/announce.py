"""What the terminal tells the customer and the merchant: facts written to the journal's outbox.

A fact is announced in the same journal transaction that records it (an approval journalled, a
wallet order reversed, a refund approved, an alert raised), so a fact that did not commit is
never announced and one that did always is. The relay delivers each row to the back office
(``tillroll web``), which renders the messages (e-mail, SMS, webhook) from the fact; the terminal
only states what happened. The message id is the fact's natural key, so announcing it twice
writes one row and every receiver can deduplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from tillroll.notify.outbox import Channel, MessageKind, Outgoing, enqueue
from tillroll.terminal.journal import outbox

MERCHANT = "merchant"  # the recipient of a merchant alert (the back office knows the addresses)


def fact_message_id(kind: MessageKind, tid: str, reference: str) -> str:
    """``e_receipt:T0000001:000001.000123``: one message per fact, whatever retries happen."""
    return f"{kind.value}:{tid}:{reference}"


def announce(
    conn: Connection,
    *,
    kind: MessageKind,
    tid: str,
    reference: str,
    recipient: str | None,
    fact: Mapping[str, Any],
    now: datetime,
) -> bool:
    """Write the announcement of ``fact`` in the caller's journal transaction.

    ``reference`` is the fact's key within the terminal (``batch.trace`` on the card rail, the
    order number on the wallet rail, plus a suffix when one transaction has several facts);
    ``recipient`` is the customer's contact (phone or e-mail) or None for a merchant alert.
    ``fact`` holds no full card number or payment code. False when it was announced before."""
    payload = {"tid": tid, "reference": reference, **fact}
    message = Outgoing(
        message_id=fact_message_id(kind, tid, reference),
        kind=kind,
        channel=Channel.BACKOFFICE,
        recipient=recipient or MERCHANT,
        payload=payload,
    )
    return enqueue(conn, outbox, message, now)
