"""The terminal's durable local journal: SQLite (WAL, synchronous=FULL) through SQLAlchemy Core.

What it keeps, and what it never keeps:

- every sale, void and balance inquiry with its STAN, batch and the request's fields **minus the
  PIN block** (field 52) **and minus the card number** (field 2); the PIN itself never reaches
  the terminal's storage at all;
- the card number of a sale, void or refund **sealed** under the device key (AES-GCM, bound to
  the entry's batch, trace and MTI), because a reversal, a void, a refund repeated as the same
  request and the batch upload must send it again (PROFILE §7). It is kept only while the batch
  may need it: once its batch is closed — settled, or closed by the host — and nothing pending
  refers to the entry (a reversal, an open refund), the sealed number is erased and only the
  masked one (first 6, last 4) remains. A balance inquiry's number is never kept. Erased content
  is overwritten (``secure_delete``) and the WAL is truncated after an erasure, so the file keeps
  no copy, not even a sealed one;
- one reversal row per sale/void, written in the same transaction as the request, before the
  first byte is sent;
- the response's references (RRN, authorization code, host date/time, issuer, acquirer) of an
  approval, from which the slip is built;
- the receipt state, alerts, the STAN and batch counters, and the current session (working keys
  sealed under the device key).

- every refund (kind ``refund``, MTI 0220) with its request, in the same ``txns`` table; its
  ``state`` column holds a :class:`RefundState` (its own machine), its ``note`` the cause of the
  last unknown outcome;
- every settlement: the totals sent, the host's answer, balanced or not, items uploaded.

Every state change is checked against the tables in :mod:`tillroll.terminal.states`.

- every closed batch (``batches``): settled by this terminal, or **closed by the host** (the
  sign-in answer named another batch: the host lost our journal's batch, or cut it over, PROFILE
  §6). A host-closed batch is never settled or uploaded by the terminal.

Schema: the tables are created by the journal itself (``metadata.create_all``), which adds any
table a journal file lacks; the version is kept in ``counters`` under ``schema``. Version 2
(refunds and settlement) only added ``settlements``. Version 3 adds ``txns.pan_sealed`` and
``batches``: :meth:`Journal._upgrade` seals the clear card numbers an older journal kept in
``request``, records the batches it had already left, and erases what those no longer need.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    event,
    exists,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)

from tillroll.crypto.keys import WorkingKeys
from tillroll.crypto.keystore import KeyStore
from tillroll.iso8583.field48 import SettlementTotals
from tillroll.iso8583.messages import Message
from tillroll.notify.outbox import add_outbox_tables
from tillroll.pan import mask_pan
from tillroll.store.engine import inserted_id, make_engine
from tillroll.terminal.states import (
    IN_FLIGHT,
    RECEIPT_TRANSITIONS,
    REFUND_OPEN,
    REFUND_TRANSITIONS,
    REVERSAL_TRANSITIONS,
    SETTLEMENT_TRANSITIONS,
    TXN_TRANSITIONS,
    AlertKind,
    ReceiptState,
    RefundState,
    ReversalReason,
    ReversalState,
    SettlementState,
    TxnKind,
    TxnState,
    check,
)

STAN_MAX = 999_999
ALERTS_KEPT_MAX = 10_000
PAN_FIELD = "2"  # kept sealed in its own column (pan_sealed), never in ``request``
SECRET_FIELDS = frozenset({"52", PAN_FIELD})  # never journalled in clear
# The entries whose card number may be sent again: reversal, void, refund repeat, batch upload.
KEEPS_PAN = frozenset({TxnKind.SALE, TxnKind.VOID, TxnKind.REFUND})
SCHEMA_VERSION = 3

metadata = MetaData()

counters = Table(
    "counters",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("value", Integer, nullable=False),
)

session_table = Table(
    "session",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch", String(6), nullable=False),
    Column("pik_sealed", Text, nullable=False),
    Column("mak_sealed", Text, nullable=False),
    Column("tdk_sealed", Text),
    Column("signed_in_at", DateTime, nullable=False),
)

txns = Table(
    "txns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(20), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("batch", String(6), nullable=False),
    Column("mti", String(4), nullable=False),
    Column("request", Text, nullable=False),  # JSON of the request's fields, field 52 removed
    Column("pan_masked", String(19), nullable=False),
    Column("expiry", String(4)),
    Column("entry_mode", String(1), nullable=False),
    Column("amount_minor", Integer),
    Column("operator", String(3), nullable=False),
    Column("orig_txn_id", Integer, ForeignKey("txns.id")),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("response_code", String(2)),
    Column("rrn", String(12)),
    Column("auth_code", String(6)),
    Column("host_date", String(4)),
    Column("host_time", String(6)),
    Column("issuer", String(40)),
    Column("acquirer", String(40)),
    Column("approved_at", DateTime),
    Column("balance_minor", Integer),
    Column("receipt", String(10), nullable=False),
    Column("e_receipt_path", Text),
    Column("prints", Integer, nullable=False, default=0),
    Column("note", Text),
    Column("pan_sealed", Text),  # hex of the sealed field 2 while the batch may need it
    Index("ix_txns_batch_stan", "batch", "stan"),
)

reversals = Table(
    "reversals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("txn_id", Integer, ForeignKey("txns.id"), nullable=False, unique=True),
    Column("state", String(10), nullable=False),
    Column("reason", String(2), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_code", String(2)),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

settlements_table = Table(
    "settlements",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch", String(6), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("state", String(16), nullable=False),
    Column("request", Text, nullable=False),  # JSON of the 0500's fields
    Column("debit_minor", Integer, nullable=False),
    Column("debit_count", Integer, nullable=False),
    Column("credit_minor", Integer, nullable=False),
    Column("credit_count", Integer, nullable=False),
    Column("host_totals", String(62)),  # the 0510's field 48
    Column("items_uploaded", Integer, nullable=False, default=0),
    Column("next_batch", String(6)),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("note", Text),
    Index("ix_settlements_batch", "batch"),
)

batches_table = Table(
    "batches",
    metadata,
    Column("batch", String(6), primary_key=True),
    Column("state", String(16), nullable=False),  # a BatchState
    Column("closed_at", DateTime),
    Column("next_batch", String(6)),
    Column("pans_erased", Boolean, nullable=False, default=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("txn_id", Integer),
    Column("text", Text, nullable=False),
)

# The terminal's outbox (tillroll.notify): what the customer and the merchant are to be told, written
# in the transaction of the fact it announces, relayed to the back office (channel BACKOFFICE).
outbox = add_outbox_tables(metadata)

# The customer's contact (phone or e-mail) given for a transaction (`--notify`), kept with it so
# that a fact announced later (a reversal answered in the background) still reaches them.
contacts = Table(
    "contacts",
    metadata,
    Column("txn_id", Integer, ForeignKey("txns.id"), primary_key=True),
    Column("contact", String(255), nullable=False),
)


class BatchState(enum.StrEnum):
    """How a batch this terminal has left was closed."""

    SETTLED = "settled"  # by this terminal's 0500 (and upload)
    CLOSED_BY_HOST = "closed_by_host"  # the host named another batch at sign-in (PROFILE §6)


# Settlement states in which the terminal's own 0500 was answered 00.
_ANSWERED_SETTLEMENT = (
    SettlementState.BALANCED.value,
    SettlementState.NOT_BALANCED.value,
    SettlementState.UPLOADED.value,
)


@dataclass(frozen=True)
class ClosedBatch:
    batch: str
    state: BatchState
    closed_at: datetime | None
    next_batch: str | None


@dataclass(frozen=True)
class Session:
    batch: str
    keys: WorkingKeys
    signed_in_at: datetime


@dataclass(frozen=True)
class Entry:
    """One journal entry (a row of ``txns`` joined with its reversal)."""

    id: int
    kind: TxnKind
    state: TxnState | RefundState  # a RefundState exactly when kind is REFUND
    stan: str
    batch: str
    request: Message
    pan_masked: str
    expiry: str | None
    entry_mode: str
    amount_minor: int | None
    operator: str
    orig_txn_id: int | None
    created_at: datetime
    response_code: str | None
    rrn: str | None
    auth_code: str | None
    host_date: str | None
    host_time: str | None
    issuer: str | None
    acquirer: str | None
    approved_at: datetime | None
    balance_minor: int | None
    receipt: ReceiptState
    e_receipt_path: str | None
    prints: int
    note: str | None
    reversal_state: ReversalState | None
    reversal_reason: ReversalReason | None
    reversal_attempts: int

    @property
    def pan(self) -> str:
        """The full PAN, for a void or a reversal only: never print or log it."""
        return self.request.get("2") or ""

    def __repr__(self) -> str:
        return f"Entry(id={self.id}, kind={self.kind}, stan={self.stan}, state={self.state})"


@dataclass(frozen=True)
class Alert:
    id: int
    at: datetime
    kind: str
    txn_id: int | None
    text: str


def _dump(fields: Mapping[str, str]) -> str:
    return json.dumps({k: v for k, v in fields.items() if k not in SECRET_FIELDS}, sort_keys=True)


def _pan_label(batch: str, stan: str, mti: str) -> bytes:
    """The sealed PAN is bound to its entry: moved to another row, it does not open."""
    return f"terminal:pan:{batch}:{stan}:{mti}".encode()


def _entry(row: RowMapping, pan: str | None) -> Entry:
    req = json.loads(row["request"])
    if pan:
        req[PAN_FIELD] = pan
    return Entry(
        id=row["id"],
        kind=TxnKind(row["kind"]),
        state=RefundState(row["state"]) if row["kind"] == TxnKind.REFUND else TxnState(row["state"]),
        stan=row["stan"],
        batch=row["batch"],
        request=Message(row["mti"], req),
        pan_masked=row["pan_masked"],
        expiry=row["expiry"],
        entry_mode=row["entry_mode"],
        amount_minor=row["amount_minor"],
        operator=row["operator"],
        orig_txn_id=row["orig_txn_id"],
        created_at=row["created_at"],
        response_code=row["response_code"],
        rrn=row["rrn"],
        auth_code=row["auth_code"],
        host_date=row["host_date"],
        host_time=row["host_time"],
        issuer=row["issuer"],
        acquirer=row["acquirer"],
        approved_at=row["approved_at"],
        balance_minor=row["balance_minor"],
        receipt=ReceiptState(row["receipt"]),
        e_receipt_path=row["e_receipt_path"],
        prints=row["prints"] or 0,
        note=row["note"],
        reversal_state=ReversalState(row["rev_state"]) if row["rev_state"] else None,
        reversal_reason=ReversalReason(row["rev_reason"]) if row["rev_reason"] else None,
        reversal_attempts=row["rev_attempts"] or 0,
    )


_ENTRY_SELECT = select(
    txns,
    reversals.c.state.label("rev_state"),
    reversals.c.reason.label("rev_reason"),
    reversals.c.attempts.label("rev_attempts"),
).select_from(txns.outerjoin(reversals, reversals.c.txn_id == txns.c.id))


@dataclass(frozen=True)
class Settlement:
    id: int
    batch: str
    stan: str
    state: SettlementState
    request: Message
    totals: SettlementTotals
    host_totals: str | None
    items_uploaded: int
    next_batch: str | None
    created_at: datetime
    note: str | None


def _settlement(row: RowMapping) -> Settlement:
    return Settlement(
        id=row["id"],
        batch=row["batch"],
        stan=row["stan"],
        state=SettlementState(row["state"]),
        request=Message("0500", json.loads(row["request"])),
        totals=SettlementTotals(
            row["debit_minor"], row["debit_count"], row["credit_minor"], row["credit_count"]
        ),
        host_totals=row["host_totals"],
        items_uploaded=row["items_uploaded"] or 0,
        next_batch=row["next_batch"],
        created_at=row["created_at"],
        note=row["note"],
    )


def _secure_delete(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


class Journal:
    def __init__(self, path: Path, keystore: KeyStore) -> None:
        self.path = path
        self.engine: Engine = make_engine(f"sqlite:///{path}")
        # Deleted content (an erased sealed PAN, the clear PAN of an upgraded journal) is
        # overwritten with zeros instead of lingering in free space.
        event.listen(self.engine, "connect", _secure_delete)
        self._keystore = keystore
        self._scrub_due = False
        metadata.create_all(self.engine)  # adds any table an older journal lacks
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring an older journal to :data:`SCHEMA_VERSION`. 1 -> 2 only added ``settlements``
        (done by ``create_all``). 2 -> 3: add ``txns.pan_sealed``, seal every clear card number
        kept in ``request`` (a balance inquiry's is dropped), record the batches already left
        (settled when their 0500 was answered, else closed by the host), and erase the sealed
        numbers those batches no longer need; then no page and no WAL frame holds a clear PAN."""
        columns = {c["name"] for c in inspect(self.engine).get_columns("txns")}
        with self.begin() as conn:
            if "pan_sealed" not in columns:
                conn.execute(text("ALTER TABLE txns ADD COLUMN pan_sealed TEXT"))
            if self._counter(conn, "schema", 1) < 3:
                self._seal_clear_pans(conn)
                self._record_left_batches(conn)
                self._erase_spent_pans(conn)
                self._scrub_due = True
            if self._counter(conn, "schema", 1) < SCHEMA_VERSION:
                self._set_counter(conn, "schema", SCHEMA_VERSION)
        self._scrub()

    def _seal_clear_pans(self, conn: Connection) -> None:
        rows = conn.execute(
            select(txns.c.id, txns.c.kind, txns.c.batch, txns.c.stan, txns.c.mti, txns.c.request)
        )
        for row in rows.all():
            fields = json.loads(row.request)
            pan = fields.pop(PAN_FIELD, None)
            if pan is None:
                continue
            sealed = self._seal_pan(pan, row.batch, row.stan, row.mti) if row.kind in KEEPS_PAN else None
            conn.execute(
                update(txns).where(txns.c.id == row.id).values(request=_dump(fields), pan_sealed=sealed)
            )

    def _record_left_batches(self, conn: Connection) -> None:
        current = f"{self._counter(conn, 'batch', 1):06d}"
        known = set(conn.execute(select(batches_table.c.batch)).scalars())
        for batch in conn.execute(select(txns.c.batch).distinct()).scalars().all():
            if batch != current and batch not in known:
                self._close_batch(conn, batch, None, None)

    def _seal_pan(self, pan: str, batch: str, stan: str, mti: str) -> str:
        return self._keystore.seal(pan.encode(), label=_pan_label(batch, stan, mti)).hex()

    def _entry(self, row: RowMapping) -> Entry:
        sealed = row["pan_sealed"]
        pan = None
        if sealed:
            label = _pan_label(row["batch"], row["stan"], row["mti"])
            pan = self._keystore.open(bytes.fromhex(sealed), label=label).decode()
        return _entry(row, pan)

    def schema_version(self) -> int:
        with self.begin() as conn:
            return self._counter(conn, "schema", 1)

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Journal({self.path})"

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn
        self._scrub()

    def _scrub(self) -> None:
        """After an erasure is committed: copy the WAL into the database and truncate it, so no
        frame keeps the erased value (secure_delete has zeroed it in the pages)."""
        if not self._scrub_due:
            return
        self._scrub_due = False
        raw = self.engine.raw_connection()  # outside any transaction: a checkpoint cannot run in one
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cur.close()
        finally:
            raw.close()

    # --- counters ---------------------------------------------------------------------------

    def _counter(self, conn: Connection, name: str, default: int) -> int:
        value = conn.execute(select(counters.c.value).where(counters.c.name == name)).scalar()
        if value is None:
            conn.execute(insert(counters).values(name=name, value=default))
            return default
        return int(value)

    def _set_counter(self, conn: Connection, name: str, value: int) -> None:
        self._counter(conn, name, value)
        conn.execute(update(counters).where(counters.c.name == name).values(value=value))

    def next_stan(self, conn: Connection) -> str:
        """The next trace number, 000001..999999 then 000001 again; persistent."""
        last = self._counter(conn, "stan", 0)
        stan = last % STAN_MAX + 1
        self._set_counter(conn, "stan", stan)
        return f"{stan:06d}"

    def batch(self) -> str:
        with self.begin() as conn:
            return f"{self._counter(conn, 'batch', 1):06d}"

    def set_batch(self, conn: Connection, batch: str, now: datetime | None = None) -> None:
        """Move to ``batch``. The batch left behind, if it holds entries, is closed: settled
        when its 0500 was answered 00, else closed by the host (PROFILE §6: the sign-in answer
        named another batch); its card numbers are erased once nothing pending needs them."""
        current = f"{self._counter(conn, 'batch', 1):06d}"
        self._set_counter(conn, "batch", int(batch))
        if batch == current:
            return
        has_entries = conn.execute(select(exists().where(txns.c.batch == current))).scalar()
        known = conn.execute(select(batches_table.c.batch).where(batches_table.c.batch == current)).first()
        if has_entries and known is None:
            self._close_batch(conn, current, batch, now)
        self._erase_spent_pans(conn)

    def _close_batch(
        self, conn: Connection, batch: str, next_batch: str | None, now: datetime | None
    ) -> None:
        answered = conn.execute(
            select(
                exists().where(
                    settlements_table.c.batch == batch, settlements_table.c.state.in_(_ANSWERED_SETTLEMENT)
                )
            )
        ).scalar()
        state = BatchState.SETTLED if answered else BatchState.CLOSED_BY_HOST
        conn.execute(
            insert(batches_table).values(
                batch=batch, state=state.value, closed_at=now, next_batch=next_batch, pans_erased=False
            )
        )
        if state is BatchState.CLOSED_BY_HOST and now is not None:
            conn.execute(
                insert(alerts).values(
                    at=now,
                    kind=AlertKind.BATCH_CLOSED_BY_HOST,
                    text=f"batch {batch} was closed by the host (the sign-in named batch {next_batch}): "
                    "it is not settled or uploaded by this terminal; its pending reversals are still sent",
                )
            )

    def closed_batches(self, limit: int = 100) -> list[ClosedBatch]:
        """Batches this terminal has left, newest first."""
        with self.begin() as conn:
            rows = conn.execute(
                select(batches_table)
                .order_by(batches_table.c.closed_at.desc(), batches_table.c.batch.desc())
                .limit(limit)
            ).mappings()
            return [
                ClosedBatch(r["batch"], BatchState(r["state"]), r["closed_at"], r["next_batch"]) for r in rows
            ]

    def batch_state(self, batch: str) -> BatchState | None:
        """How ``batch`` was closed; None while it is open (or was never used)."""
        with self.begin() as conn:
            value = conn.execute(select(batches_table.c.state).where(batches_table.c.batch == batch)).scalar()
        return BatchState(value) if value else None

    # --- card numbers -----------------------------------------------------------------------

    def _erase_spent_pans(self, conn: Connection) -> int:
        """Erase the sealed card number of every entry of a closed batch that nothing pending
        refers to (no pending reversal, not an open refund); returns how many were erased."""
        pending_reversal = exists().where(
            reversals.c.txn_id == txns.c.id, reversals.c.state == ReversalState.PENDING.value
        )
        open_refund = (txns.c.kind == TxnKind.REFUND.value) & txns.c.state.in_([s.value for s in REFUND_OPEN])
        closed = select(batches_table.c.batch).scalar_subquery()
        erased = conn.execute(
            update(txns)
            .where(
                txns.c.pan_sealed.is_not(None),
                txns.c.batch.in_(closed),
                ~pending_reversal,
                ~open_refund,
            )
            .values(pan_sealed=None)
        ).rowcount
        if erased:
            self._scrub_due = True
        still = select(txns.c.batch).where(txns.c.pan_sealed.is_not(None)).distinct().scalar_subquery()
        conn.execute(
            update(batches_table)
            .where(batches_table.c.pans_erased.is_(False), batches_table.c.batch.not_in(still))
            .values(pans_erased=True)
        )
        return erased

    def sealed_pan_count(self, batch: str | None = None) -> int:
        """Entries that still keep a sealed card number (of ``batch``, or of all)."""
        q = select(func.count()).select_from(txns).where(txns.c.pan_sealed.is_not(None))
        if batch is not None:
            q = q.where(txns.c.batch == batch)
        with self.begin() as conn:
            return int(conn.execute(q).scalar_one())

    # --- session ----------------------------------------------------------------------------

    def save_session(self, batch: str, keys: WorkingKeys, now: datetime) -> None:
        ks = self._keystore
        with self.begin() as conn:
            conn.execute(session_table.delete())
            conn.execute(
                insert(session_table).values(
                    id=1,
                    batch=batch,
                    pik_sealed=ks.seal(keys.pik, label=b"terminal:pik").hex(),
                    mak_sealed=ks.seal(keys.mak, label=b"terminal:mak").hex(),
                    tdk_sealed=ks.seal(keys.tdk, label=b"terminal:tdk").hex() if keys.tdk else None,
                    signed_in_at=now,
                )
            )
            self.set_batch(conn, batch, now)

    def load_session(self) -> Session | None:
        with self.begin() as conn:
            row = conn.execute(select(session_table)).mappings().first()
        if row is None:
            return None
        ks = self._keystore
        keys = WorkingKeys(
            pik=ks.open(bytes.fromhex(row["pik_sealed"]), label=b"terminal:pik"),
            mak=ks.open(bytes.fromhex(row["mak_sealed"]), label=b"terminal:mak"),
            tdk=ks.open(bytes.fromhex(row["tdk_sealed"]), label=b"terminal:tdk")
            if row["tdk_sealed"]
            else None,
        )
        return Session(batch=row["batch"], keys=keys, signed_in_at=row["signed_in_at"])

    def clear_session(self) -> None:
        with self.begin() as conn:
            conn.execute(session_table.delete())

    # --- entries ----------------------------------------------------------------------------

    def record_request(
        self,
        conn: Connection,
        *,
        kind: TxnKind,
        request: Message,
        entry_mode: str,
        operator: str,
        now: datetime,
        orig_txn_id: int | None = None,
    ) -> int:
        """Journal a request (and, for a sale or void, its pending reversal 06) in ``conn``'s
        transaction: the caller commits before sending."""
        amount = request.get("4")
        pan = request.get(PAN_FIELD)
        batch = request.field60.batch
        txn_id = inserted_id(
            conn.execute(
                insert(txns).values(
                    kind=kind.value,
                    state=(RefundState.REQUESTED if kind is TxnKind.REFUND else TxnState.PENDING).value,
                    stan=request["11"],
                    batch=batch,
                    mti=request.mti,
                    request=_dump(request.fields),
                    pan_masked=mask_pan(pan or ""),
                    pan_sealed=self._seal_pan(pan, batch, request["11"], request.mti)
                    if pan and kind in KEEPS_PAN
                    else None,
                    expiry=request.get("14"),
                    entry_mode=entry_mode,
                    amount_minor=int(amount) if amount else None,
                    operator=operator,
                    orig_txn_id=orig_txn_id,
                    created_at=now,
                    updated_at=now,
                    receipt=ReceiptState.NONE.value,
                    prints=0,
                )
            )
        )
        if kind in (TxnKind.SALE, TxnKind.VOID):
            conn.execute(
                insert(reversals).values(
                    txn_id=txn_id,
                    state=ReversalState.PENDING.value,
                    reason=ReversalReason.OTHER.value,
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        return txn_id

    def get(self, txn_id: int, conn: Connection | None = None) -> Entry:
        if conn is None:
            with self.begin() as c:
                return self.get(txn_id, c)
        row = conn.execute(_ENTRY_SELECT.where(txns.c.id == txn_id)).mappings().one()
        return self._entry(row)

    def move(self, conn: Connection, txn_id: int, new: TxnState, now: datetime, **values: Any) -> None:
        """Change an entry's state (checked against the transition table) and set columns."""
        current = TxnState(conn.execute(select(txns.c.state).where(txns.c.id == txn_id)).scalar_one())
        check(TXN_TRANSITIONS, current, new)
        conn.execute(
            update(txns).where(txns.c.id == txn_id).values(state=new.value, updated_at=now, **values)
        )

    def set_values(self, conn: Connection, txn_id: int, now: datetime, **values: Any) -> None:
        conn.execute(update(txns).where(txns.c.id == txn_id).values(updated_at=now, **values))

    # --- refunds ----------------------------------------------------------------------------

    def move_refund(
        self, conn: Connection, txn_id: int, new: RefundState, now: datetime, **values: Any
    ) -> None:
        """Change a refund's state (checked against its own table) and set columns."""
        row = conn.execute(select(txns.c.kind, txns.c.state).where(txns.c.id == txn_id)).one()
        if row.kind != TxnKind.REFUND:
            raise RuntimeError(f"entry {txn_id} is a {row.kind}, not a refund")
        check(REFUND_TRANSITIONS, RefundState(row.state), new)
        conn.execute(
            update(txns).where(txns.c.id == txn_id).values(state=new.value, updated_at=now, **values)
        )
        if new not in REFUND_OPEN:
            self._erase_spent_pans(conn)  # a refund finished in a closed batch

    def open_refunds(self, orig_rrn: str | None = None) -> list[Entry]:
        """Refunds not yet approved or declined (oldest first), optionally of one original."""
        q = _ENTRY_SELECT.where(
            txns.c.kind == TxnKind.REFUND.value, txns.c.state.in_([s.value for s in REFUND_OPEN])
        )
        with self.begin() as conn:
            rows = conn.execute(q.order_by(txns.c.id)).mappings()
            found = [self._entry(r) for r in rows]
        if orig_rrn is not None:
            found = [e for e in found if e.request.get("37") == orig_rrn]
        return found

    def find_sale_by_rrn(self, rrn: str) -> Entry | None:
        """This terminal's approved (or since voided/reversed) sale with that RRN, if any."""
        with self.begin() as conn:
            row = (
                conn.execute(
                    _ENTRY_SELECT.where(txns.c.kind == TxnKind.SALE.value, txns.c.rrn == rrn)
                    .order_by(txns.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return self._entry(row) if row else None

    # --- settlement ---------------------------------------------------------------------------

    def batch_items(self, batch: str) -> list[Entry]:
        """What settles in ``batch``: approved sales (not voided, not reversed) and approved
        refunds, in journal order."""
        with self.begin() as conn:
            rows = conn.execute(
                _ENTRY_SELECT.where(
                    txns.c.batch == batch,
                    txns.c.kind.in_([TxnKind.SALE.value, TxnKind.REFUND.value]),
                    txns.c.state == TxnState.APPROVED.value,  # == RefundState.APPROVED
                ).order_by(txns.c.id)
            ).mappings()
            return [self._entry(r) for r in rows]

    def totals(self, batch: str) -> SettlementTotals:
        items = self.batch_items(batch)
        sales = [e.amount_minor or 0 for e in items if e.kind is TxnKind.SALE]
        refunds = [e.amount_minor or 0 for e in items if e.kind is TxnKind.REFUND]
        return SettlementTotals(sum(sales), len(sales), sum(refunds), len(refunds))

    def record_settlement(
        self, conn: Connection, request: Message, totals: SettlementTotals, now: datetime
    ) -> int:
        return inserted_id(
            conn.execute(
                insert(settlements_table).values(
                    batch=request.field60.batch,
                    stan=request["11"],
                    state=SettlementState.REQUESTED.value,
                    request=_dump(request.fields),
                    debit_minor=totals.debit_minor,
                    debit_count=totals.debit_count,
                    credit_minor=totals.credit_minor,
                    credit_count=totals.credit_count,
                    items_uploaded=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        )

    def move_settlement(
        self, conn: Connection, settlement_id: int, new: SettlementState, now: datetime, **values: Any
    ) -> None:
        current = SettlementState(
            conn.execute(
                select(settlements_table.c.state).where(settlements_table.c.id == settlement_id)
            ).scalar_one()
        )
        check(SETTLEMENT_TRANSITIONS, current, new)
        conn.execute(
            update(settlements_table)
            .where(settlements_table.c.id == settlement_id)
            .values(state=new.value, updated_at=now, **values)
        )

    def set_settlement_values(self, settlement_id: int, now: datetime, **values: Any) -> None:
        with self.begin() as conn:
            conn.execute(
                update(settlements_table)
                .where(settlements_table.c.id == settlement_id)
                .values(updated_at=now, **values)
            )

    def settlements(self, limit: int = 100) -> list[Settlement]:
        with self.begin() as conn:
            rows = conn.execute(
                select(settlements_table).order_by(settlements_table.c.id.desc()).limit(limit)
            ).mappings()
            return [_settlement(r) for r in rows]

    def open_settlement(self, batch: str) -> Settlement | None:
        """A settlement of ``batch`` journalled but never answered: to be repeated as is."""
        with self.begin() as conn:
            row = (
                conn.execute(
                    select(settlements_table)
                    .where(
                        settlements_table.c.batch == batch,
                        settlements_table.c.state == SettlementState.REQUESTED.value,
                    )
                    .order_by(settlements_table.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return _settlement(row) if row else None

    # --- reversals --------------------------------------------------------------------------

    def _reversal_state(self, conn: Connection, txn_id: int) -> ReversalState:
        value = conn.execute(select(reversals.c.state).where(reversals.c.txn_id == txn_id)).scalar_one()
        return ReversalState(value)

    def set_reversal_reason(
        self, conn: Connection, txn_id: int, reason: ReversalReason, now: datetime
    ) -> None:
        if self._reversal_state(conn, txn_id) is not ReversalState.PENDING:
            raise RuntimeError(f"reversal of entry {txn_id} is not pending")
        conn.execute(
            update(reversals).where(reversals.c.txn_id == txn_id).values(reason=reason.value, updated_at=now)
        )

    def end_reversal(self, conn: Connection, txn_id: int, new: ReversalState, now: datetime) -> None:
        check(REVERSAL_TRANSITIONS, self._reversal_state(conn, txn_id), new)
        conn.execute(
            update(reversals).where(reversals.c.txn_id == txn_id).values(state=new.value, updated_at=now)
        )
        self._erase_spent_pans(conn)  # a reversal of a closed batch's entry answered at last

    def note_reversal_attempt(self, txn_id: int, code: str | None, now: datetime) -> None:
        with self.begin() as conn:
            conn.execute(
                update(reversals)
                .where(reversals.c.txn_id == txn_id)
                .values(attempts=reversals.c.attempts + 1, last_code=code, updated_at=now)
            )

    def pending_reversals(self) -> list[Entry]:
        with self.begin() as conn:
            rows = conn.execute(
                _ENTRY_SELECT.where(reversals.c.state == ReversalState.PENDING.value).order_by(txns.c.id)
            ).mappings()
            return [self._entry(r) for r in rows]

    # --- queries ----------------------------------------------------------------------------

    def in_flight(self) -> list[Entry]:
        with self.begin() as conn:
            rows = conn.execute(
                _ENTRY_SELECT.where(txns.c.state.in_([s.value for s in IN_FLIGHT])).order_by(txns.c.id)
            ).mappings()
            return [self._entry(r) for r in rows]

    def find(self, *, kind: TxnKind, stan: str, batch: str) -> Entry | None:
        with self.begin() as conn:
            row = (
                conn.execute(
                    _ENTRY_SELECT.where(txns.c.kind == kind.value, txns.c.stan == stan, txns.c.batch == batch)
                    .order_by(txns.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return self._entry(row) if row else None

    def find_receipted(self, stan: str | None) -> Entry | None:
        """The newest approval (sale or void) with that trace, or the newest approval of all."""
        q = _ENTRY_SELECT.where(txns.c.approved_at.is_not(None), txns.c.kind != TxnKind.BALANCE.value)
        if stan is not None:
            q = q.where(txns.c.stan == stan)
        with self.begin() as conn:
            row = conn.execute(q.order_by(txns.c.id.desc()).limit(1)).mappings().first()
        return self._entry(row) if row else None

    def approved_without_receipt(self) -> list[Entry]:
        with self.begin() as conn:
            rows = conn.execute(
                _ENTRY_SELECT.where(
                    txns.c.approved_at.is_not(None),
                    txns.c.kind != TxnKind.BALANCE.value,
                    txns.c.receipt == ReceiptState.NONE.value,
                )
            ).mappings()
            return [self._entry(r) for r in rows]

    def entries(self, limit: int = 200) -> list[Entry]:
        with self.begin() as conn:
            rows = conn.execute(_ENTRY_SELECT.order_by(txns.c.id.desc()).limit(limit)).mappings()
            return [self._entry(r) for r in rows]

    # --- receipts ---------------------------------------------------------------------------

    def set_receipt(
        self, txn_id: int, new: ReceiptState, now: datetime, *, e_receipt_path: str | None = None
    ) -> None:
        with self.begin() as conn:
            current = ReceiptState(
                conn.execute(select(txns.c.receipt).where(txns.c.id == txn_id)).scalar_one()
            )
            check(RECEIPT_TRANSITIONS, current, new)
            values: dict[str, Any] = {"receipt": new.value, "updated_at": now}
            if new is ReceiptState.PRINTED:
                values["prints"] = txns.c.prints + 1
            if e_receipt_path is not None:
                values["e_receipt_path"] = e_receipt_path
            conn.execute(update(txns).where(txns.c.id == txn_id).values(**values))

    # --- alerts -----------------------------------------------------------------------------

    def alert(
        self,
        kind: AlertKind,
        text: str,
        now: datetime,
        txn_id: int | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Record an alert; in ``conn``'s transaction when given (with the fact announcing it)."""
        if conn is None:
            with self.begin() as own:
                self.alert(kind, text, now, txn_id, own)
            return
        conn.execute(insert(alerts).values(at=now, kind=kind, txn_id=txn_id, text=text))
        count = conn.execute(select(func.count()).select_from(alerts)).scalar_one()
        if count > ALERTS_KEPT_MAX:
            oldest = select(alerts.c.id).order_by(alerts.c.id).limit(count - ALERTS_KEPT_MAX)
            conn.execute(alerts.delete().where(alerts.c.id.in_(oldest.scalar_subquery())))

    def alerts(self, limit: int = 100) -> list[Alert]:
        with self.begin() as conn:
            rows = conn.execute(select(alerts).order_by(alerts.c.id.desc()).limit(limit)).mappings()
            return [Alert(r["id"], r["at"], r["kind"], r["txn_id"], r["text"]) for r in rows]
