"""Delivering the journal's facts to the back office (``tillroll web``), over HTTP.

:class:`BackOfficeSender` is the :class:`tillroll.notify.outbox.Sender` of channel BACKOFFICE:
one outbox row is one ``POST /api/v1/terminals/{tid}/facts``, signed with the terminal's
back-office key (``crypto/backoffice.py``), with bounded timeouts. The back office stores each
message id once and answers a repeat as the first, so a row sent twice (a crash between the send
and the mark) is harmless.

:func:`relay` runs one round of the notifications' relay (:class:`tillroll.notify.relay.Relay`)
over the journal's outbox with this sender, bounded in time: a delivered row is marked delivered;
a row the back office refuses for good (400, 409, 413, 422: the fact itself is wrong) goes to the
dead letters with a journal alert; anything else (the back office down, slow, 401, 5xx) leaves it
pending, retried on the relay's patient back-office schedule (5 s, 30 s, 2 min … over a day).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

import httpx
from sqlalchemy import Connection, func, insert, select

from tillroll.clock import Clock
from tillroll.crypto.backoffice import SIGNATURE_HEADER, backoffice_key, sign_fact
from tillroll.notify.deadletter import journal_dead_letter
from tillroll.notify.outbox import Channel, DeliveryFailed, MessageState, StoredMessage
from tillroll.notify.relay import DeadHook, Relay, RelayConfig
from tillroll.terminal.journal import Journal, outbox
from tillroll.terminal.journal import alerts as journal_alerts
from tillroll.terminal.states import AlertKind

log = logging.getLogger("tillroll.terminal")

ROWS_PER_ROUND_MAX = 200
MIN_TIMEOUT_S = 0.2
_FOR_GOOD = frozenset({400, 409, 413, 422})  # the fact itself is refused: sending it again cannot help


def fact_body(message: StoredMessage) -> bytes:
    """The JSON body of one delivery (docs/web.md, "Intake")."""
    doc = {
        "message_id": message.message_id,
        "kind": message.kind.value,
        "recipient": message.recipient,
        "payload": dict(message.payload),
    }
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


class BackOfficeSender:
    channel = Channel.BACKOFFICE

    def __init__(
        self,
        base_url: str,
        tid: str,
        tmk: bytes,
        *,
        timeout_s: float,
        clock: Clock,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/api/v1/terminals/{tid}/facts"
        self.tid = tid
        self._key = backoffice_key(tmk)
        self.timeout_s = timeout_s
        self.deadline_s: float | None = None  # clock.monotonic(): no delivery waits past it
        self._clock = clock
        self._client = client or httpx.Client(trust_env=False)

    def __repr__(self) -> str:
        return f"BackOfficeSender({self.url})"

    def close(self) -> None:
        self._client.close()

    def send(self, message: StoredMessage) -> None:
        timeout_s = self.timeout_s
        if self.deadline_s is not None:
            timeout_s = min(timeout_s, max(MIN_TIMEOUT_S, self.deadline_s - self._clock.monotonic()))
        body = fact_body(message)
        headers = {SIGNATURE_HEADER: sign_fact(self._key, self.tid, body), "Content-Type": "application/json"}
        try:
            resp = self._client.post(
                self.url, content=body, headers=headers, timeout=httpx.Timeout(timeout_s)
            )
        except httpx.HTTPError as exc:
            raise DeliveryFailed(
                message.message_id, f"back office not reached: {type(exc).__name__}"
            ) from None
        if resp.status_code == 200:
            return
        detail = f"back office answered {resp.status_code}: {resp.text[:120]}"
        raise DeliveryFailed(message.message_id, detail, retryable=resp.status_code not in _FOR_GOOD)


@dataclass(frozen=True)
class RelayRound:
    delivered: int
    dead: int
    pending: int  # left pending after the round (waiting for a retry, or not reached in the budget)


def _dead_letter(journal: Journal) -> DeadHook:
    """A fact the back office refused for good (or after every retry): the notifications' own
    journal hook (a merchant alert on its way to the back office) and an alert in the journal,
    both in the relay's transaction."""
    announce_alert = journal_dead_letter(outbox)

    def hook(conn: Connection, message: StoredMessage, detail: str, now: datetime) -> None:
        announce_alert(conn, message, detail, now)
        text = f"the back office refused {message.message_id}: {detail}"[:500]
        conn.execute(insert(journal_alerts).values(at=now, kind=AlertKind.FACT_REFUSED, text=text))

    return hook


def relay(journal: Journal, sender: BackOfficeSender, clock: Clock, *, budget_s: float) -> RelayRound:
    """One round of deliveries through the notifications' :class:`Relay`, for at most about
    ``budget_s``: each delivery's timeout ends with the budget, and the relay gives back unsent
    what it cannot start within half its lease (the lease is twice the budget)."""
    sender.deadline_s = clock.monotonic() + budget_s
    config = RelayConfig(lease_s=2 * budget_s, batch_max=ROWS_PER_ROUND_MAX)
    report = Relay(
        journal.engine,
        outbox,
        {Channel.BACKOFFICE: sender},
        clock=clock,
        config=config,
        on_dead=_dead_letter(journal),
    ).run_once()
    m = outbox.messages
    with journal.begin() as conn:
        pending = conn.execute(
            select(func.count()).where(
                m.c.state == MessageState.PENDING.value, m.c.channel == Channel.BACKOFFICE.value
            )
        ).scalar_one()
    return RelayRound(report.delivered, report.dead, int(pending))
