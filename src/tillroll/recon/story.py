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
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from tillroll.notify.contacts import ContactError, parse_contact

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
    from tillroll.recon.diagnose import diagnose_evidence, gather  # the gathering is the diagnosis's

    ev = gather(conn, reference)
    return _story(ev, diagnose_evidence(ev))


def _iso(value: object) -> str | None:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else None


def _scalar(value: object) -> Scalar:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, bytes):
        return None  # never shown (a signature image, a sealed key)
    return str(value)


def _fields(row: Any, keep: tuple[str, ...]) -> dict[str, Scalar]:
    return {k: _scalar(row[k]) for k in keep if k in row}


def _masked_contact(text: object) -> Scalar:
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_contact(text).masked()
    except ContactError:
        return "***"


_JOURNAL = (
    "tid",
    "entry_key",
    "rail",
    "kind",
    "state",
    "batch",
    "stan",
    "rrn",
    "order_no",
    "original_key",
    "amount_minor",
    "currency",
    "card_masked",
    "response_code",
    "receipt",
    "prints",
    "note",
    "approved_at",
    "created_at",
    "updated_at",
    "received_at",
)
_HOST = (
    "rrn",
    "tid",
    "mid",
    "batch",
    "stan",
    "kind",
    "status",
    "response_code",
    "amount_minor",
    "currency",
    "pan_masked",
    "auth_code",
    "local_date",
    "created_at",
    "updated_at",
)
_STATEMENT = (
    "mch_id",
    "bill_date",
    "line_no",
    "trade_time",
    "out_trade_no",
    "transaction_id",
    "trade_state",
    "brand",
    "total_minor",
    "out_refund_no",
    "refund_id",
    "refund_minor",
    "refund_status",
)


def _story(ev: Any, diagnosis: Diagnosis) -> Story:
    journal = []
    for e in ev.journal:
        f = _fields(e, _JOURNAL)
        f["contact"] = _masked_contact(e["contact"])
        journal.append(
            Record("journal", _iso(e["updated_at"]), f"终端日志 {e['kind']}", f"journal {e['kind']}", f)
        )
    host = [
        Record("host", _iso(r["created_at"]), f"主机 {r['kind']}", f"host {r['kind']}", _fields(r, _HOST))
        for r in ev.host
    ]
    ledger = []
    for entry, postings in ev.ledger:
        for p in postings:
            f = {
                "entry_kind": entry["kind"],
                "reference": entry["reference"],
                **_fields(p, ("account", "amount_minor", "currency")),
            }
            ledger.append(Record("ledger", _iso(entry["created_at"]), "记账", "ledger posting", f))
    issuer = [
        Record(
            "issuer",
            _iso(m["created_at"]),
            "银行通知持卡人",
            "bank message to the cardholder",
            _fields(m, ("text", "reason", "amount_minor")),
        )
        for m in ev.issuer
    ]
    statement = [
        Record(
            "wallet_statement",
            _iso(s["trade_time"]),
            "钱包对账单",
            "wallet statement row",
            _fields(s, _STATEMENT),
        )
        for s in ev.statement
    ]
    notes = []
    for msg, tries in ev.messages:
        recipient = str(msg["recipient"])
        shown = recipient if msg["channel"] == "webhook" else str(_masked_contact(recipient))
        notes.append(
            Notification(
                message_id=str(msg["message_id"]),
                kind=str(msg["kind"]),
                channel=str(msg["channel"]),
                recipient=shown,
                state=str(msg["state"]),
                created_at=str(_iso(msg["created_at"])),
                delivered_at=_iso(msg["delivered_at"]),
                attempts=[_fields(a, ("attempt", "outcome", "detail", "at")) for a in tries],
            )
        )
    receipts = [
        Record(
            "e_receipt",
            _iso(r["created_at"]),
            "电子小票",
            "e-receipt",
            _fields(r, ("tid", "reference", "rail", "trans_type", "amount_minor", "card_masked", "at_local")),
        )
        for r in ev.e_receipts
    ]
    commands = [
        Record(
            "terminal_command",
            _iso(c["created_at"]),
            f"终端指令 {c['command']}",
            f"terminal command {c['command']}",
            _fields(c, ("tid", "command", "reference", "state", "requested_by", "outcome", "updated_at")),
        )
        for c in ev.commands
    ]
    exceptions = []
    for exc, actions in ev.exceptions:
        try:
            evidence = json.loads(exc["evidence"] or "{}")
        except ValueError:
            evidence = {}
        exceptions.append(
            ExceptionRecord(
                id=int(exc["id"]),
                klass=str(exc["class"]),
                key=str(exc["key"]),
                state=str(exc["state"]),
                owner=exc["owner"],
                business_date=str(exc["business_date"]),
                deadline=_iso(exc["deadline"]),
                evidence=evidence if isinstance(evidence, dict) else {},
                actions=[_fields(a, ("id", "action", "actor", "outcome", "detail", "at")) for a in actions],
            )
        )
    audit_rows = [
        Record(
            "audit",
            _iso(a["at"]),
            f"审计 {a['action']}",
            f"audit {a['action']}",
            _fields(a, ("id", "actor", "action", "target", "before", "after", "hash")),
        )
        for a in ev.audit
    ]
    moments = [
        Record(
            "exception",
            _iso(x["created_at"]),
            "对账异常",
            "reconciliation exception",
            _fields(x, ("id", "class", "state", "owner")),
        )
        for x, _ in ev.exceptions
    ]
    moments += [
        Record(
            "action",
            _iso(a["at"]),
            f"处理 {a['action']}",
            f"action {a['action']}",
            _fields(a, ("exception_id", "action", "actor", "outcome")),
        )
        for _, acts in ev.exceptions
        for a in acts
    ]
    moments += [
        Record(
            "notification",
            n.created_at,
            f"通知 {n.channel}",
            f"notification {n.channel}",
            {"message_id": n.message_id, "state": n.state, "attempts": len(n.attempts)},
        )
        for n in notes
    ]
    everything = journal + host + ledger + issuer + statement + receipts + commands + audit_rows + moments
    timeline = sorted(everything, key=lambda r: (r.at is None, r.at or ""))
    identity = {k: v for k, v in diagnosis.facts.items()}
    return Story(
        reference=ev.reference,
        found=ev.found,
        identity=identity,
        timeline=timeline,
        journal=journal,
        host=host,
        ledger=ledger,
        issuer=issuer,
        wallet_statement=statement,
        notifications=notes,
        e_receipts=receipts,
        terminal_commands=commands,
        exceptions=exceptions,
        audit=audit_rows,
        diagnosis=diagnosis,
    )
