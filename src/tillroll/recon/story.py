"""One payment's whole story, for the console's payment page and the evidence bundle (PDF + JSON).

:func:`payment_story` gathers, for one reference (batch.trace, trace, RRN or order number), every
record the stack keeps about that payment — the terminal's journal copy, the host's transactions
(card numbers only masked), ledger postings, what the issuer told the cardholder, wallet
statement rows, notifications with their delivery attempts, e-receipts, terminal commands, the
reconciliation's exceptions with their actions, audit rows — and the diagnosis, and puts it in
time order.

The result is a **plain, JSON-serialisable dataclass tree**: every leaf is ``str``, ``int``,
``bool`` or ``None`` (instants are ISO 8601 strings, naive UTC, as stored), containers are
``list`` and ``dict``. ``dataclasses.asdict(story)`` or :meth:`Story.to_json` is the bundle's
JSON; a renderer needs nothing else. Nothing in it is secret: no keys, no full card numbers, and
customer contacts only masked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from sqlalchemy import Connection

# A leaf value of a record: what a JSON document can hold without conversion.
Scalar = str | int | bool | None


@dataclass(frozen=True)
class Sentence:
    """One statement of a diagnosis, in both languages."""

    zh: str
    en: str


@dataclass(frozen=True)
class Diagnosis:
    """What happened to a payment, in words a merchant understands, from evidence only."""

    reference: str
    found: bool  # False: nothing in the store answers to the reference
    sentences: list[Sentence] = field(default_factory=list)
    # the payment's identity as the evidence shows it: rail, tid, batch, trace, rrn, order_no ...
    facts: dict[str, Scalar] = field(default_factory=dict)

    def text(self, lang: str = "zh") -> str:
        """The diagnosis as one paragraph in ``lang`` ("zh" or "en")."""
        if lang == "en":
            return " ".join(s.en for s in self.sentences)
        return "".join(s.zh for s in self.sentences)


@dataclass(frozen=True)
class Record:
    """One row of one source, as shown: ``fields`` holds its columns (masked, JSON scalars)."""

    source: str  # journal | host | ledger | issuer | wallet_statement | notification | e_receipt
    # | terminal_command | exception | action | audit | terminal_alert
    at: str | None  # ISO 8601, naive UTC; None when the source has no time
    title_zh: str
    title_en: str
    fields: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    """A message sent about the payment, with every delivery attempt."""

    message_id: str
    kind: str
    channel: str
    recipient: str  # masked (a***@example.com, +86138****8000); a webhook's URL as is
    state: str  # pending | delivered | dead
    created_at: str
    delivered_at: str | None
    attempts: list[dict[str, Scalar]] = field(default_factory=list)  # attempt, outcome, detail, at


@dataclass(frozen=True)
class ExceptionRecord:
    """A reconciliation exception about the payment, with the actions taken on it."""

    id: int
    klass: str  # ExceptionClass
    key: str
    state: str  # ExceptionState
    owner: str | None
    business_date: str
    deadline: str | None
    evidence: dict[str, object]  # as the matcher wrote it (JSON)
    actions: list[dict[str, Scalar]] = field(default_factory=list)  # action, actor, outcome, detail, at


@dataclass(frozen=True)
class Story:
    reference: str
    found: bool
    identity: dict[str, Scalar]  # rail, tid, mid, batch, stan, rrn, order_no, amount_minor
    timeline: list[Record]  # every record below, in time order (those without a time last)
    journal: list[Record]
    host: list[Record]
    ledger: list[Record]
    issuer: list[Record]
    wallet_statement: list[Record]
    notifications: list[Notification]
    e_receipts: list[Record]
    terminal_commands: list[Record]
    exceptions: list[ExceptionRecord]
    audit: list[Record]
    diagnosis: Diagnosis

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, indent=2)


def payment_story(conn: Connection, reference: str) -> Story:
    """Everything about the payment ``reference`` names (see the module docstring)."""
    from tillroll.recon.diagnose import build_story  # the gathering lives with the diagnosis

    return build_story(conn, reference)
