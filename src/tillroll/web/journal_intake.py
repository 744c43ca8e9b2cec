"""The intake of terminals' journals: ``POST /api/v1/terminals/{tid}/journal`` (docs/web.md).

A terminal (``tillroll.terminal.journal_upload``) sends a page of its journal entries, its status
and the outcomes of the commands it ran. The delivery is accepted only when signed with that
terminal's back-office key under the journal context (``tillroll-journal-v1``: a signed fact is
never a valid upload) and when **every** part of it is well-formed — one bad entry, or any full
card number or payment code, refuses the whole delivery and nothing is stored (a 4xx saying
what and where). Then, in one transaction:

- each entry is upserted by ``(tid, entry_key)``: stored when new, replaced when its
  ``updated_at`` is newer than the stored one, left alone when older or equal (a replayed or
  delayed upload changes nothing);
- the status replaces ``terminal_status`` when its ``reported_at`` is newer;
- each command outcome moves its ``terminal_commands`` row to done / failed (an audit row each);
- the commands still pending for the terminal are handed back, and (for a fresh upload, not a
  replay) marked delivered: a command handed back but not acknowledged is handed back again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tillroll.console import audit
from tillroll.crypto.backoffice import JOURNAL_PREFIX, fact_signature_ok
from tillroll.crypto.keystore import KeyStore
from tillroll.store.tables import journal_entries, terminal_commands, terminal_status, terminals
from tillroll.terminal.facts import MASKED_CARD, ContactError, has_card_number, parse_contact
from tillroll.terminal.journal_upload import (
    ALERTS_MAX,
    BODY_VERSION,
    CLOSED_BATCHES_MAX,
    COMMANDS_MAX,
    ENTRIES_MAX,
    NOTE_MAX,
    PRINTER_STATES,
    TEXT_MAX,
)
from tillroll.terminal.states import ReceiptState, RefundState, TxnState
from tillroll.terminal.wallet_states import WalletState
from tillroll.web.intake import Answer, terminal_key

log = logging.getLogger("tillroll.web")

AMOUNT_MAX_MINOR = 10**10
PRINTS_MAX = 1000
FUTURE_SLACK = timedelta(days=1)  # a terminal clock this far ahead is still believed

_BODY_KEYS = {"v", "tid", "entries", "status", "acks"}
ENTRY_KEYS = frozenset(
    {
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
        "contact",
        "note",
        "approved_at",
        "created_at",
        "updated_at",
    }
)
_STATUS_KEYS = {
    "batch",
    "signed_in",
    "signed_in_at",
    "pending_reversals",
    "open_refunds",
    "open_wallet_orders",
    "receipts_owed",
    "printer",
    "alerts",
    "closed_batches",
    "last_settlement",
    "reported_at",
}
_CARD_STATES = frozenset(s.value for s in TxnState)
_REFUND_STATES = frozenset(s.value for s in RefundState)
# entry_key prefix -> (rail, {kind: allowed states})
_KINDS: dict[str, tuple[str, dict[str, frozenset[str]]]] = {
    "card": (
        "card",
        {"sale": _CARD_STATES, "void": _CARD_STATES, "balance": _CARD_STATES, "refund": _REFUND_STATES},
    ),
    "wallet": ("wallet", {"qr_pay": frozenset(s.value for s in WalletState)}),
    "wallet_refund": ("wallet", {"qr_refund": _REFUND_STATES}),
}
_ENTRY_KEY = re.compile(r"^(?:card:[0-9]{6}\.[0-9]{6}|(?:wallet|wallet_refund):[A-Za-z0-9_-]{1,32})$")
_SIX = re.compile(r"^[0-9]{6}$")
_RRN = re.compile(r"^[0-9A-Za-z]{12}$")
_ORDER = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_CODE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$")
_ALERT_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ACK_STATES = frozenset({"done", "failed"})
_OPEN_COMMAND_STATES = ("pending", "delivered")


class Refused(ValueError):
    """The delivery is refused; ``where`` names the part (``entries.3.card_masked``)."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where
        self.detail = detail


@dataclass(frozen=True)
class Upload:
    entries: list[dict[str, Any]]
    status: dict[str, Any]
    acks: list[dict[str, Any]]


def _time(value: Any, where: str, now: datetime, *, nullable: bool = False) -> datetime | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not _TIME.match(value):
        raise Refused(where, "must be a UTC time like 2026-11-29T06:05:09.123456Z")
    try:
        instant = datetime.fromisoformat(value[:-1])
    except ValueError:
        raise Refused(where, "is not a real date and time") from None
    if instant > now + FUTURE_SLACK:
        raise Refused(where, "is more than a day ahead of the back office's clock: set the terminal's clock")
    return instant


def _free_text(value: Any, where: str, limit: int, *, nullable: bool = True) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise Refused(where, "must be a string")
    if len(value) > limit:
        raise Refused(where, f"is longer than {limit} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise Refused(where, "holds control characters")
    if has_card_number(value):
        raise Refused(where, "holds what looks like a full card number or payment code: send it masked")
    return value


def _pattern(
    value: Any, where: str, pattern: re.Pattern[str], what: str, *, nullable: bool = False
) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise Refused(where, f"must be {what}")
    return value


def _count(value: Any, where: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise Refused(where, f"must be a whole number 0..{limit}")
    return value


def check_entry(doc: Any, where: str, now: datetime) -> dict[str, Any]:
    """One entry as the ``journal_entries`` columns, or :class:`Refused`."""
    if not isinstance(doc, Mapping):
        raise Refused(where, "must be a JSON object")
    if set(doc) != ENTRY_KEYS:
        wrong = sorted(set(doc) ^ ENTRY_KEYS)[0]
        raise Refused(
            f"{where}.{wrong}", "is missing" if wrong in ENTRY_KEYS else "is not a field of an entry"
        )
    key = _pattern(
        doc["entry_key"],
        f"{where}.entry_key",
        _ENTRY_KEY,
        "card:<batch>.<trace>, wallet:<order> or wallet_refund:<refund>",
    )
    assert key is not None
    rail, kinds = _KINDS[key.split(":")[0]]
    if doc["rail"] != rail:
        raise Refused(f"{where}.rail", f"must be {rail} for {key}")
    if doc["kind"] not in kinds:
        raise Refused(f"{where}.kind", f"must be one of {sorted(kinds)} for {key}")
    if doc["state"] not in kinds[doc["kind"]]:
        raise Refused(f"{where}.state", f"is not a state of a {doc['kind']}")
    # the card number first: a full number is refused as such, whatever else is wrong
    if (
        not isinstance(doc["card_masked"], str)
        or not MASKED_CARD.match(doc["card_masked"])
        or len(doc["card_masked"]) > 24
    ):
        raise Refused(f"{where}.card_masked", "must be masked (first 6 and last 4 at most, the rest *)")
    amount = doc["amount_minor"]
    if amount is not None and (
        isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= AMOUNT_MAX_MINOR
    ):
        raise Refused(f"{where}.amount_minor", f"must be null or an integer of fen, 1..{AMOUNT_MAX_MINOR}")
    if amount is None and doc["kind"] != "balance":
        raise Refused(f"{where}.amount_minor", "is required (only a balance inquiry has none)")
    contact = doc["contact"]
    if contact is not None:
        try:
            ok = isinstance(contact, str) and parse_contact(contact) == contact
        except ContactError:
            ok = False
        if not ok:
            raise Refused(f"{where}.contact", "must be a normalised mobile number (+8613800138000) or e-mail")
    for name in ("order_no", "response_code"):  # formats that digits alone could pass
        if isinstance(doc[name], str) and has_card_number(doc[name]):
            raise Refused(f"{where}.{name}", "holds what looks like a full card number or payment code")
    original = _pattern(
        doc["original_key"], f"{where}.original_key", _ENTRY_KEY, "an entry key", nullable=True
    )
    created = _time(doc["created_at"], f"{where}.created_at", now)
    updated = _time(doc["updated_at"], f"{where}.updated_at", now)
    assert created is not None and updated is not None
    if updated < created:
        raise Refused(f"{where}.updated_at", "is before created_at")
    batch = _pattern(doc["batch"], f"{where}.batch", _SIX, "6 digits")
    stan = _pattern(doc["stan"], f"{where}.stan", _SIX, "6 digits")
    suffix = key.split(":", 1)[1]
    if rail == "card" and suffix != f"{batch}.{stan}":
        raise Refused(f"{where}.entry_key", "must be card:<batch>.<stan> of the entry")
    if rail == "wallet" and suffix != doc["order_no"]:
        raise Refused(f"{where}.entry_key", "must name the entry's order_no")
    return {
        "entry_key": key,
        "rail": rail,
        "kind": doc["kind"],
        "state": doc["state"],
        "batch": batch,
        "stan": stan,
        "rrn": _pattern(doc["rrn"], f"{where}.rrn", _RRN, "12 letters or digits", nullable=True),
        "order_no": _pattern(doc["order_no"], f"{where}.order_no", _ORDER, "an order number", nullable=True),
        "original_key": original,
        "amount_minor": amount,
        "currency": _pattern(doc["currency"], f"{where}.currency", re.compile(r"^[0-9]{3}$"), "like 156"),
        "card_masked": doc["card_masked"],
        "response_code": _pattern(
            doc["response_code"], f"{where}.response_code", _CODE, "a response or error code", nullable=True
        ),
        "receipt": _pattern(
            doc["receipt"],
            f"{where}.receipt",
            re.compile("^(" + "|".join(s.value for s in ReceiptState) + ")$"),
            "none, owed or printed",
        ),
        "prints": _count(doc["prints"], f"{where}.prints", PRINTS_MAX),
        "contact": contact,
        "note": _free_text(doc["note"], f"{where}.note", NOTE_MAX),
        "approved_at": _time(doc["approved_at"], f"{where}.approved_at", now, nullable=True),
        "created_at": created,
        "updated_at": updated,
    }


def check_status(doc: Any, now: datetime) -> dict[str, Any]:
    """The status as ``terminal_status`` columns (``status``: the rest, as JSON), or :class:`Refused`."""
    if not isinstance(doc, Mapping):
        raise Refused("status", "must be a JSON object")
    if set(doc) != _STATUS_KEYS:
        wrong = sorted(set(doc) ^ _STATUS_KEYS)[0]
        raise Refused(f"status.{wrong}", "is missing" if wrong in _STATUS_KEYS else "is not a status field")
    if not isinstance(doc["signed_in"], bool):
        raise Refused("status.signed_in", "must be true or false")
    if doc["printer"] not in PRINTER_STATES:
        raise Refused("status.printer", f"must be one of {list(PRINTER_STATES)}")
    _time(doc["signed_in_at"], "status.signed_in_at", now, nullable=True)
    for key in ("open_refunds", "open_wallet_orders", "receipts_owed", "pending_reversals"):
        _count(doc[key], f"status.{key}", 10**6)
    if not isinstance(doc["alerts"], list) or len(doc["alerts"]) > ALERTS_MAX:
        raise Refused("status.alerts", f"must be a list of at most {ALERTS_MAX}")
    for i, a in enumerate(doc["alerts"]):
        if not isinstance(a, Mapping) or set(a) != {"at", "kind", "text"}:
            raise Refused(f"status.alerts.{i}", "must be an object with exactly at, kind, text")
        _time(a["at"], f"status.alerts.{i}.at", now)
        _pattern(a["kind"], f"status.alerts.{i}.kind", _ALERT_KIND, "a lower-case word")
        _free_text(a["text"], f"status.alerts.{i}.text", TEXT_MAX, nullable=False)
    if not isinstance(doc["closed_batches"], list) or len(doc["closed_batches"]) > CLOSED_BATCHES_MAX:
        raise Refused("status.closed_batches", f"must be a list of at most {CLOSED_BATCHES_MAX}")
    for i, b in enumerate(doc["closed_batches"]):
        if not isinstance(b, Mapping) or set(b) != {"batch", "state", "closed_at", "next_batch"}:
            raise Refused(
                f"status.closed_batches.{i}", "must be an object with batch, state, closed_at, next_batch"
            )
        _pattern(b["batch"], f"status.closed_batches.{i}.batch", _SIX, "6 digits")
        _pattern(b["next_batch"], f"status.closed_batches.{i}.next_batch", _SIX, "6 digits", nullable=True)
        if b["state"] not in ("settled", "closed_by_host"):
            raise Refused(f"status.closed_batches.{i}.state", "must be settled or closed_by_host")
        _time(b["closed_at"], f"status.closed_batches.{i}.closed_at", now, nullable=True)
    last = doc["last_settlement"]
    if last is not None:
        if not isinstance(last, Mapping) or set(last) != {"batch", "state", "at"}:
            raise Refused("status.last_settlement", "must be null or an object with batch, state, at")
        _pattern(last["batch"], "status.last_settlement.batch", _SIX, "6 digits")
        _pattern(last["state"], "status.last_settlement.state", _ALERT_KIND, "a settlement state")
        _time(last["at"], "status.last_settlement.at", now)
    reported = _time(doc["reported_at"], "status.reported_at", now)
    rest = {k: doc[k] for k in sorted(_STATUS_KEYS - {"batch", "signed_in", "pending_reversals", "printer"})}
    return {
        "batch": _pattern(doc["batch"], "status.batch", _SIX, "6 digits"),
        "signed_in": 1 if doc["signed_in"] else 0,
        "pending_reversals": doc["pending_reversals"],
        "printer": doc["printer"],
        "status": json.dumps(rest, ensure_ascii=False, sort_keys=True),
        "reported_at": reported,
    }


def check_upload(tid: str, body: bytes, now: datetime) -> Upload:
    """The whole delivery checked (nothing stored yet), or :class:`Refused`."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused("body", "is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or set(doc) != _BODY_KEYS:
        raise Refused("body", f"must be an object with exactly {sorted(_BODY_KEYS)}")
    if doc["v"] != BODY_VERSION or isinstance(doc["v"], bool):
        raise Refused("v", f"must be {BODY_VERSION}")
    if doc["tid"] != tid:
        raise Refused("tid", "is not the terminal of the address")
    raw = doc["entries"]
    if not isinstance(raw, list) or len(raw) > ENTRIES_MAX:
        raise Refused("entries", f"must be a list of at most {ENTRIES_MAX}")
    entries = [check_entry(e, f"entries.{i}", now) for i, e in enumerate(raw)]
    keys = [e["entry_key"] for e in entries]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise Refused("entries", f"{dup} appears more than once")
    status = check_status(doc["status"], now)
    acks = doc["acks"]
    if not isinstance(acks, list) or len(acks) > COMMANDS_MAX:
        raise Refused("acks", f"must be a list of at most {COMMANDS_MAX}")
    seen: set[int] = set()
    for i, a in enumerate(acks):
        if not isinstance(a, Mapping) or set(a) != {"id", "state", "outcome"}:
            raise Refused(f"acks.{i}", "must be an object with exactly id, state, outcome")
        if isinstance(a["id"], bool) or not isinstance(a["id"], int) or a["id"] in seen:
            raise Refused(f"acks.{i}.id", "must be a command id, once")
        seen.add(a["id"])
        if a["state"] not in _ACK_STATES:
            raise Refused(f"acks.{i}.state", "must be done or failed")
        _free_text(a["outcome"], f"acks.{i}.outcome", 500, nullable=False)
    return Upload(entries, status, [dict(a) for a in acks])


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _upsert_entries(conn: Connection, tid: str, entries: list[dict[str, Any]], now: datetime) -> int:
    """One statement for the page (executemany): each row inserted when new, replaced when its
    ``updated_at`` is newer than the stored one; returns how many were stored."""
    if not entries:
        return 0
    stmt = _insert(conn)(journal_entries)
    changed = {k: stmt.excluded[k] for k in ENTRY_KEYS if k != "entry_key"}
    changed["received_at"] = stmt.excluded.received_at
    stmt = stmt.on_conflict_do_update(
        index_elements=["tid", "entry_key"],
        set_=changed,
        where=journal_entries.c.updated_at < stmt.excluded.updated_at,
    ).returning(journal_entries.c.id)
    rows = [{"tid": tid, "received_at": now, **e} for e in entries]
    return len(conn.execute(stmt, rows).all())


def _upsert_status(conn: Connection, tid: str, status: Mapping[str, Any], now: datetime) -> bool:
    stmt = _insert(conn)(terminal_status).values(tid=tid, received_at=now, **status)
    changed = {k: stmt.excluded[k] for k in status}
    changed["received_at"] = stmt.excluded.received_at
    stmt = stmt.on_conflict_do_update(
        index_elements=["tid"], set_=changed, where=terminal_status.c.reported_at < stmt.excluded.reported_at
    ).returning(terminal_status.c.tid)
    return conn.execute(stmt).first() is not None


def _acknowledge(
    conn: Connection, tid: str, mid: str | None, acks: list[dict[str, Any]], now: datetime
) -> list[int]:
    done: list[int] = []
    for ack in acks:
        row = (
            conn.execute(
                select(terminal_commands).where(
                    terminal_commands.c.id == ack["id"], terminal_commands.c.tid == tid
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise Refused(f"acks.{ack['id']}", "is not a command of this terminal")
        done.append(ack["id"])
        if row["state"] not in _OPEN_COMMAND_STATES:
            continue  # acknowledged before (the terminal did not see our answer): nothing changes
        conn.execute(
            update(terminal_commands)
            .where(terminal_commands.c.id == ack["id"])
            .values(state=ack["state"], outcome=ack["outcome"], updated_at=now)
        )
        audit.record(
            conn,
            at=now,
            actor=f"terminal:{tid}",
            action=f"terminal_command.{ack['state']}",
            target=f"terminal_command:{ack['id']}",
            mid=mid,
            before={"state": row["state"], "command": row["command"], "reference": row["reference"]},
            after={"state": ack["state"], "outcome": ack["outcome"]},
        )
    return done


def _hand_over(
    conn: Connection, tid: str, acknowledged: list[int], fresh: bool, now: datetime
) -> list[dict[str, Any]]:
    q = (
        select(terminal_commands.c.id, terminal_commands.c.command, terminal_commands.c.reference)
        .where(terminal_commands.c.tid == tid, terminal_commands.c.state.in_(_OPEN_COMMAND_STATES))
        .order_by(terminal_commands.c.id)
        .limit(COMMANDS_MAX + len(acknowledged))
    )
    out = [
        {"id": r.id, "command": r.command, "reference": r.reference}
        for r in conn.execute(q)
        if r.id not in acknowledged
    ][:COMMANDS_MAX]
    if out and fresh:
        conn.execute(
            update(terminal_commands)
            .where(terminal_commands.c.id.in_([c["id"] for c in out]), terminal_commands.c.state == "pending")
            .values(state="delivered", updated_at=now)
        )
    return out


def accept_journal(
    engine: Engine, keystore: KeyStore, *, tid: str, body: bytes, signature: str | None, now: datetime
) -> Answer:
    """Check and store one upload (see the module docstring)."""
    with engine.connect() as conn:
        key = terminal_key(conn, keystore, tid)
        mid = conn.execute(select(terminals.c.mid).where(terminals.c.tid == tid)).scalar()
    # An unknown terminal and a wrong signature look the same from outside.
    if key is None or not fact_signature_ok(key, tid, body, signature, prefix=JOURNAL_PREFIX):
        return Answer(
            401,
            {"error": "bad_signature", "detail": "the signature is not this terminal's journal signature"},
        )
    try:
        upload = check_upload(tid, body, now)
    except Refused as exc:
        log.warning("terminal %s: journal upload refused: %s", tid, exc)
        status = 400 if exc.where == "body" and "JSON" in exc.detail else 422
        return Answer(status, {"error": "bad_upload", "detail": exc.detail, "field": exc.where})
    try:
        with engine.begin() as conn:
            stored = _upsert_entries(conn, tid, upload.entries, now)
            fresh = _upsert_status(conn, tid, upload.status, now)
            acknowledged = _acknowledge(conn, tid, mid, upload.acks, now)
            commands = _hand_over(conn, tid, acknowledged, fresh, now)
    except Refused as exc:  # an acknowledgement of another terminal's command: all rolled back
        log.warning("terminal %s: journal upload refused: %s", tid, exc)
        return Answer(422, {"error": "bad_upload", "detail": exc.detail, "field": exc.where})
    return Answer(
        200,
        {
            "status": "accepted",
            "stored": stored,
            "unchanged": len(upload.entries) - stored,
            "acknowledged": acknowledged,
            "commands": commands,
        },
    )
