"""A payment's diagnosis, in words a merchant understands, from evidence only.

:func:`gather` finds everything the store holds about the payment a reference names — a
``batch.trace``, a trace (the newest with that number), an RRN (12 digits) or a wallet order
number — across the terminal's journal copy, the host's transactions, the ledger, the issuer,
the wallet statement, facts, notifications and their delivery attempts, e-receipts, terminal
commands and status, and reconciliation exceptions. :func:`diagnose` turns that evidence into a
few sentences in 中文 and English ("line 1 timed out at 19:02; third time today on T3; the
customer was charged and automatically refunded at 19:03; told by SMS"). Nothing is guessed: a
sentence is said only when a record shows it. Times are the merchant's local time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from tillroll.clock import DEFAULT_MERCHANT_TZ, TimeZoneError, merchant_zone, to_merchant_local
from tillroll.recon.action_effects import HOST_REVERSAL
from tillroll.recon.diagnose_words import sentences_for
from tillroll.recon.story import Diagnosis
from tillroll.store.tables import (
    audit_log,
    backoffice_facts,
    e_receipts,
    issuer_authorizations,
    issuer_messages,
    journal_entries,
    ledger_entries,
    ledger_postings,
    merchants,
    outbox,
    recon_actions,
    recon_exceptions,
    requests,
    terminal_commands,
    terminal_status,
    terminals,
    transactions,
    wallet_statement_rows,
)

Row = Any  # a RowMapping
_BATCH_TRACE = re.compile(r"^(\d{6})\.(\d{6})$")
_RRN = re.compile(r"^\d{12}$")
_TRACE = re.compile(r"^\d{1,6}$")


@dataclass
class Evidence:
    """Every record about one payment, each list oldest first."""

    reference: str
    tz: tzinfo
    tid: str | None = None
    mid: str | None = None
    journal: list[Row] = field(default_factory=list)
    host: list[Row] = field(default_factory=list)
    host_side: set[str] = field(default_factory=set)  # RRNs of reversals the back office made
    ledger: list[tuple[Row, list[Row]]] = field(default_factory=list)
    issuer: list[Row] = field(default_factory=list)  # the cardholder's messages
    statement: list[Row] = field(default_factory=list)
    facts: list[Row] = field(default_factory=list)
    messages: list[tuple[Row, list[Row]]] = field(default_factory=list)
    e_receipts: list[Row] = field(default_factory=list)
    commands: list[Row] = field(default_factory=list)
    exceptions: list[tuple[Row, list[Row]]] = field(default_factory=list)
    audit: list[Row] = field(default_factory=list)
    status: Row | None = None
    failures_today: int = 0  # failed payments on the terminal that local day, this one included

    @property
    def found(self) -> bool:
        return bool(self.journal or self.host or self.statement or self.exceptions)

    def local(self, at: datetime | None) -> datetime | None:
        return None if at is None else to_merchant_local(at, self.tz)


def _all(conn: Connection, query: Any) -> list[Row]:
    return list(conn.execute(query).mappings())


def _zone(conn: Connection, mid: str | None) -> tzinfo:
    name = (
        None if mid is None else conn.execute(select(merchants.c.tz).where(merchants.c.mid == mid)).scalar()
    )
    try:
        return merchant_zone(str(name or DEFAULT_MERCHANT_TZ))
    except TimeZoneError:
        return merchant_zone(DEFAULT_MERCHANT_TZ)


def _anchor_host(conn: Connection, reference: str) -> list[Row]:
    """The host rows the reference names directly (newest first)."""
    t = transactions
    if m := _BATCH_TRACE.match(reference):
        where: Any = and_(t.c.batch == m.group(1), t.c.stan == m.group(2))
    elif _RRN.match(reference):
        where = t.c.rrn == reference
    elif _TRACE.match(reference):
        where = t.c.stan == reference.zfill(6)
    else:
        return []
    return _all(conn, select(t).where(where).order_by(t.c.id.desc()).limit(1))


def _anchor_journal(conn: Connection, reference: str) -> list[Row]:
    j = journal_entries
    if m := _BATCH_TRACE.match(reference):
        where: Any = and_(j.c.batch == m.group(1), j.c.stan == m.group(2))
    elif _RRN.match(reference):
        where = j.c.rrn == reference
    elif _TRACE.match(reference):
        where = j.c.stan == reference.zfill(6)
    else:
        where = j.c.order_no == reference
    return _all(conn, select(j).where(where).order_by(j.c.updated_at.desc()).limit(1))


def _host_family(conn: Connection, first: Row) -> list[Row]:
    """A sale with everything given back against it; a refund or void brings its sale along."""
    t = transactions
    sale_id = first["original_id"] or first["id"]
    return _all(conn, select(t).where(or_(t.c.id == sale_id, t.c.original_id == sale_id)).order_by(t.c.id))


def _journal_family(conn: Connection, ev: Evidence, seed: list[Row]) -> list[Row]:
    """The journal copies of the payment: by the host rows' keys, and a seed entry with its
    original and its refunds. One query per key, so that each uses its index (an OR of them
    would read the whole table)."""
    j = journal_entries
    keys: list[Any] = [
        and_(j.c.tid == r["tid"], j.c.batch == r["batch"], j.c.stan == r["stan"]) for r in ev.host
    ]
    keys += [j.c.rrn == r["rrn"] for r in ev.host]
    for row in seed:
        keys.append(and_(j.c.tid == row["tid"], j.c.entry_key == row["entry_key"]))
        keys.append(and_(j.c.tid == row["tid"], j.c.original_key == row["entry_key"]))
        if row["original_key"]:
            keys.append(and_(j.c.tid == row["tid"], j.c.entry_key == row["original_key"]))
    found: dict[int, Row] = {}
    for key in keys:
        for row in _all(conn, select(j).where(key)):
            found[int(row["id"])] = row
    return sorted(found.values(), key=lambda r: (r["created_at"], r["id"]))


def _references(ev: Evidence) -> set[str]:
    refs = {f"{r['batch']}.{r['stan']}" for r in ev.journal + ev.host}
    refs |= {str(r["order_no"]) for r in ev.journal if r["order_no"]}
    return refs


def gather(conn: Connection, reference: str) -> Evidence:
    reference = reference.strip()
    host = _anchor_host(conn, reference)
    seed = _anchor_journal(conn, reference)
    if not host and seed and seed[0]["rail"] == "card":
        first = seed[0]
        t = transactions
        where = (
            t.c.rrn == first["rrn"]
            if first["rrn"]
            else and_(t.c.tid == first["tid"], t.c.batch == first["batch"], t.c.stan == first["stan"])
        )
        host = _all(conn, select(t).where(where).limit(1))
    tid = (seed[0]["tid"] if seed else None) or (host[0]["tid"] if host else None)
    mid = host[0]["mid"] if host else None
    if mid is None and tid is not None:
        mid = conn.execute(select(terminals.c.mid).where(terminals.c.tid == tid)).scalar()
    ev = Evidence(reference=reference, tz=_zone(conn, mid), tid=tid, mid=mid)
    if host:
        ev.host = _host_family(conn, host[0])
    ev.journal = _journal_family(conn, ev, seed)
    rrns = [str(r["rrn"]) for r in ev.host]
    orders = {str(r["order_no"]) for r in ev.journal if r["order_no"]}
    if not _RRN.match(reference) and not _BATCH_TRACE.match(reference) and not _TRACE.match(reference):
        orders.add(reference)
    if rrns:
        ev.host_side = set(
            conn.execute(
                select(requests.c.id).where(
                    requests.c.content_hash == HOST_REVERSAL, requests.c.id.in_([int(r) for r in rrns])
                )
            ).scalars()
        )
        ev.host_side = {f"{int(i):012d}" for i in ev.host_side}
        for entry in _all(conn, select(ledger_entries).where(ledger_entries.c.reference.in_(rrns))):
            postings = _all(conn, select(ledger_postings).where(ledger_postings.c.entry_id == entry["id"]))
            ev.ledger.append((entry, postings))
        auths = [int(r["issuer_ref"]) for r in ev.host if r["issuer_ref"] is not None]
        if auths:
            ev.issuer = _all(
                conn,
                select(issuer_messages, issuer_authorizations.c.reason, issuer_authorizations.c.amount_minor)
                .join(issuer_authorizations, issuer_authorizations.c.id == issuer_messages.c.authorization_id)
                .where(issuer_messages.c.authorization_id.in_(auths))
                .order_by(issuer_messages.c.id),
            )
    if orders:
        s = wallet_statement_rows
        ev.statement = _all(
            conn,
            select(s)
            .where(or_(s.c.out_trade_no.in_(orders), s.c.out_refund_no.in_(orders)))
            .order_by(s.c.line_no),
        )
    refs = _references(ev)
    if tid and refs:
        f = backoffice_facts
        ev.facts = _all(conn, select(f).where(f.c.tid == tid, f.c.reference.in_(refs)).order_by(f.c.id))
        r = e_receipts
        ev.e_receipts = _all(conn, select(r).where(r.c.tid == tid, r.c.reference.in_(refs)))
    x = recon_exceptions
    keys: list[Any] = []
    if rrns:
        keys.append(x.c.rrn.in_(rrns))
    if orders:
        keys.append(x.c.order_no.in_(orders))
    keys += [and_(x.c.tid == r["tid"], x.c.batch == r["batch"], x.c.stan == r["stan"]) for r in ev.journal]
    if keys:
        for exc in _all(conn, select(x).where(or_(*keys)).order_by(x.c.id)):
            acts = _all(
                conn,
                select(recon_actions)
                .where(recon_actions.c.exception_id == exc["id"])
                .order_by(recon_actions.c.id),
            )
            ev.exceptions.append((exc, acts))
    exc_ids = [int(e["id"]) for e, _ in ev.exceptions]
    fact_ids = [str(f["message_id"]) for f in ev.facts] + [f"recon-{i}-" for i in exc_ids]
    if fact_ids:
        m = outbox.messages
        likes = [m.c.payload.like(f'%"fact_id": "{fid}%') for fid in fact_ids]
        for msg in _all(conn, select(m).where(or_(*likes)).order_by(m.c.id)):
            a = outbox.attempts
            tries = _all(conn, select(a).where(a.c.message_pk == msg["id"]).order_by(a.c.id))
            ev.messages.append((msg, tries))
    if tid:
        c = terminal_commands
        where_cmd: list[Any] = [and_(c.c.tid == tid, c.c.reference.in_(refs))] if refs else []
        if exc_ids:
            where_cmd.append(c.c.exception_id.in_(exc_ids))
        if where_cmd:
            ev.commands = _all(conn, select(c).where(or_(*where_cmd)).order_by(c.c.id))
        ev.status = (
            conn.execute(select(terminal_status).where(terminal_status.c.tid == tid)).mappings().first()
        )
    targets = [f"recon_exception:{i}" for i in exc_ids] + [f"payment:{ref}" for ref in refs | set(rrns)]
    if targets:
        ev.audit = _all(
            conn, select(audit_log).where(audit_log.c.target.in_(targets)).order_by(audit_log.c.id)
        )
    ev.failures_today = _failures_today(conn, ev)
    return ev


_FAILED_STATES = (
    "unknown",
    "reversed",
    "not_processed",
    "reversal_pending",
    "reversing",
    "revoked",
    "closed",
)


def _failures_today(conn: Connection, ev: Evidence) -> int:
    """Failed payments on the same terminal, the same local day, up to this one."""
    own = [r for r in ev.journal if r["state"] in _FAILED_STATES]
    if not own or ev.tid is None:
        return 0
    at = own[0]["created_at"]
    day = to_merchant_local(at, ev.tz).date()
    start_utc = datetime.combine(day, time(), tzinfo=ev.tz).astimezone(UTC).replace(tzinfo=None)
    j = journal_entries
    return int(
        conn.execute(
            select(func.count()).where(
                j.c.tid == ev.tid,
                j.c.state.in_(_FAILED_STATES),
                j.c.created_at >= start_utc,
                j.c.created_at < start_utc + timedelta(days=1),
                j.c.created_at <= at,
            )
        ).scalar_one()
    )


def diagnose_evidence(ev: Evidence) -> Diagnosis:
    facts: dict[str, str | int | bool | None] = {"tid": ev.tid, "mid": ev.mid}
    sale = next((r for r in ev.host if r["kind"] == "sale"), ev.host[0] if ev.host else None)
    entry = ev.journal[0] if ev.journal else None
    if sale is not None:
        facts.update(rail="card", rrn=sale["rrn"], batch=sale["batch"], stan=sale["stan"])
        facts["amount_minor"] = int(sale["amount_minor"])
    elif entry is not None:
        facts.update(rail=entry["rail"], batch=entry["batch"], stan=entry["stan"], order_no=entry["order_no"])
        facts["amount_minor"] = None if entry["amount_minor"] is None else int(entry["amount_minor"])
    return Diagnosis(ev.reference, ev.found, sentences_for(ev), facts)


def diagnose(conn: Connection, reference: str) -> Diagnosis:
    """What happened to the payment ``reference`` names, in 中文 and English."""
    return diagnose_evidence(gather(conn, reference))


def status_alerts(status: Row | None) -> Sequence[dict[str, Any]]:
    """The alerts a terminal reported with its status (its JSON ``alerts`` list)."""
    if status is None:
        return []
    try:
        doc = json.loads(status["status"] or "{}")
    except ValueError:
        return []
    alerts = doc.get("alerts") if isinstance(doc, dict) else None
    return [a for a in alerts if isinstance(a, dict)] if isinstance(alerts, list) else []
