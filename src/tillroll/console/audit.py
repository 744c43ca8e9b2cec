"""The audit log: append-only, tamper-evident by hash chaining.

Every action a person (or the automatic reconciliation) takes through the console or the CLI is
one row: who, what, when, on which target, the state before and after. Each row's ``hash`` is
SHA-256 over the previous row's hash and the row's own content in canonical JSON, so changing,
removing or reordering any row breaks every hash after it; :func:`verify` walks the chain and
names the first row that does not hold.

Appending reads the newest row's hash in the caller's transaction, so two writers must not both
read the same tail: on PostgreSQL a transaction-scoped advisory lock serialises appends; on SQLite
the database's single writer does (the store opens write transactions with BEGIN IMMEDIATE).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, text

from tillroll.store.tables import audit_log

GENESIS = "0" * 64
_PG_AUDIT_LOCK = 0x7711_A0D1  # pg_advisory_xact_lock key of the audit chain


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def row_hash(
    prev_hash: str,
    *,
    at: datetime,
    actor: str,
    mid: str | None,
    action: str,
    target: str,
    before: str | None,
    after: str | None,
) -> str:
    content = _canonical(
        {
            "at": at.isoformat(timespec="microseconds"),
            "actor": actor,
            "mid": mid,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
        }
    )
    return hashlib.sha256((prev_hash + "\n" + content).encode()).hexdigest()


def record(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    mid: str | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> str:
    """Append one row in the caller's transaction (it commits or rolls back with the action);
    returns the row's hash."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    prev = conn.execute(select(audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)).scalar()
    prev_hash = prev or GENESIS
    before_json = None if before is None else _canonical(before)
    after_json = None if after is None else _canonical(after)
    digest = row_hash(
        prev_hash,
        at=at,
        actor=actor,
        mid=mid,
        action=action,
        target=target,
        before=before_json,
        after=after_json,
    )
    conn.execute(
        insert(audit_log).values(
            at=at,
            actor=actor,
            mid=mid,
            action=action,
            target=target,
            before=before_json,
            after=after_json,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    return digest


@dataclass(frozen=True)
class ChainReport:
    rows: int
    first_bad_id: int | None  # None: the chain holds
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.first_bad_id is None


def verify(conn: Connection, *, batch_rows: int = 5000) -> ChainReport:
    """Walk the chain in id order; the first row whose link or hash does not hold is named."""
    prev_hash = GENESIS
    count = 0
    last_id = 0
    while True:
        rows = (
            conn.execute(
                select(audit_log).where(audit_log.c.id > last_id).order_by(audit_log.c.id).limit(batch_rows)
            )
            .mappings()
            .all()
        )
        if not rows:
            return ChainReport(count, None, None)
        for row in rows:
            count += 1
            last_id = row["id"]
            if row["prev_hash"] != prev_hash:
                return ChainReport(
                    count,
                    row["id"],
                    "its link to the row before does not match (a row was removed, inserted or reordered)",
                )
            expected = row_hash(
                prev_hash,
                at=row["at"],
                actor=row["actor"],
                mid=row["mid"],
                action=row["action"],
                target=row["target"],
                before=row["before"],
                after=row["after"],
            )
            if row["hash"] != expected:
                return ChainReport(count, row["id"], "its content does not match its hash (it was changed)")
            prev_hash = row["hash"]
