"""Uploading the journal to the back office: ``POST /api/v1/terminals/{tid}/journal`` (docs/web.md).

The back office keeps a copy of every entry of both rails (card ``txns``, ``wallet_orders``,
``wallet_refunds``) for reconciliation and the console, and the terminal's status. An upload is a
page of entries changed since the last one, the status, and the outcomes of the back office's
commands the terminal has run; the answer hands over the commands still to run (``reprint REF``,
``retry_refunds [REF]``).

- **Watermark, no rescans.** Every change of an entry sets its ``updated_at`` (the journal's own
  clock), so the entries to send are those after the last one sent, in the order
  ``(updated_at, rail, id)``; the watermark is that key, kept in the journal's ``counters`` and
  moved **only when the back office answered 200**. A failed upload loses nothing: the next one
  sends the same entries again (the back office keeps an entry only when it is newer).
  ``updated_at`` indexes make the page a range read.
- **Keys are natural**: ``card:<batch>.<trace>`` (the host's own idempotency key, PROFILE §3),
  ``wallet:<out_trade_no>``, ``wallet_refund:<out_refund_no>`` — never the journal's row ids, which
  a replaced device (a lost journal, PROFILE §6) starts again from 1: its entries must not
  overwrite its predecessor's at the back office.
- **Never in the sale's way.** After a transaction the engine uploads with a short timeout
  (:data:`AFTER_TRANSACTION_TIMEOUT_S`), skips it while an earlier failure's backoff runs, and
  swallows any failure: the sale's outcome is already journalled and final.
- **Commands** are journalled (``upload_commands``) when received, run once, and their outcome is
  reported in every upload until the back office has acknowledged it; a command handed over again
  (its acknowledgement was lost) is not run again, only reported again.

A clock set back on the device would hide the changes made before it catches up:
``tillroll pos upload --all`` sends every entry again (idempotent at the back office).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    and_,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from tillroll.clock import Clock
from tillroll.crypto.backoffice import JOURNAL_PREFIX, SIGNATURE_HEADER, backoffice_key, sign_fact
from tillroll.terminal.journal import (
    Journal,
    alerts,
    batches_table,
    contacts,
    counters,
    metadata,
    session_table,
    settlements_table,
    txns,
)
from tillroll.terminal.journal import reversals as reversals_table
from tillroll.terminal.printer import Printer, PrinterStatus
from tillroll.terminal.states import REFUND_OPEN, ReceiptState, ReversalState
from tillroll.terminal.wallet_journal import wallet_orders, wallet_refunds
from tillroll.terminal.wallet_states import WALLET_OPEN

log = logging.getLogger("tillroll.terminal")

BODY_VERSION = 1
ENTRIES_MAX = 50  # per upload, and fewer when they would not fit in BODY_MAX_BYTES
BODY_MAX_BYTES = 56 * 1024  # under the back office's 64 KiB body limit, whatever the notes hold
ALERTS_MAX = 20
CLOSED_BATCHES_MAX = 10
COMMANDS_MAX = 20  # handed over per answer; acknowledgements per upload
NOTE_MAX = 300
TEXT_MAX = 300
PAGES_MAX = 40  # per round: 2,000 entries, then the next round goes on
AFTER_TRANSACTION_TIMEOUT_S = 1.0
MIN_TIMEOUT_S = 0.2
BACKOFF_FIRST_S = 5
BACKOFF_MAX_S = 300
EPOCH = datetime(1970, 1, 1)

RAIL_RANK = {"card": 0, "wallet": 1, "wallet_refund": 2}  # the order of entries with one updated_at
PRINTER_STATES = ("unknown", "ok", "paper_out", "jammed", "offline", "none")
COMMANDS = frozenset({"reprint", "retry_refunds"})
REFUSED_ALERT = "journal_upload_refused"  # an alert kind of the journal (alerts.kind)

_W_AT, _W_RANK, _W_ID = "upl_at_us", "upl_rank", "upl_id"
_FAILURES, _RETRY_AT, _PRINTER = "upl_fail", "upl_retry_at", "upl_printer"

# The back office's commands as this terminal received them, and what running them did.
upload_commands = Table(
    "upload_commands",
    metadata,
    Column("id", Integer, primary_key=True),  # the back office's terminal_commands.id
    Column("command", String(16), nullable=False),
    Column("reference", String(64)),
    Column("state", String(8), nullable=False),  # received | done | failed
    Column("outcome", Text),
    Column("received_at", DateTime, nullable=False),
    Column("done_at", DateTime),
    Column("reported", Integer, nullable=False, default=0),  # 1: the back office acknowledged it
)

# (command, reference) -> (done, what happened in words)
CommandRunner = Callable[[str, str | None], tuple[bool, str]]


def card_key(batch: str, stan: str) -> str:
    """A card entry's key at the back office: ``card:<batch>.<trace>``."""
    return f"card:{batch}.{stan}"


def iso_us(instant: datetime) -> str:
    """``2026-11-29T06:05:09.123456Z``: microseconds kept, the order of changes depends on them."""
    aware = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _us(instant: datetime) -> int:
    return (instant - EPOCH) // timedelta(microseconds=1)


def _from_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


@dataclass(frozen=True)
class UploadRound:
    uploads: int  # requests answered 200
    entries: int  # entries sent in them
    caught_up: bool  # nothing left after the watermark
    commands_run: int
    failed: str | None = None  # why the last upload failed (the entries wait in the journal)


def _get(conn: Connection, name: str) -> int | None:
    value = conn.execute(select(counters.c.value).where(counters.c.name == name)).scalar()
    return None if value is None else int(value)


def _set(conn: Connection, name: str, value: int) -> None:
    if not conn.execute(update(counters).where(counters.c.name == name).values(value=value)).rowcount:
        conn.execute(insert(counters).values(name=name, value=value))


def _text(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    clean = "".join(ch if ch >= " " else " " for ch in value)
    return clean[:limit]


class JournalUploader:
    """One terminal's uploads (see the module docstring). Not thread-safe, like the terminal."""

    def __init__(
        self,
        journal: Journal,
        *,
        tid: str,
        tmk: bytes,
        base_url: str,
        timeout_s: float,
        clock: Clock,
        printer: Printer | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.journal = journal
        self.tid = tid
        self.url = f"{base_url.rstrip('/')}/api/v1/terminals/{tid}/journal"
        self.timeout_s = timeout_s
        self.clock = clock
        self.printer = printer
        self._key = backoffice_key(tmk)
        self._client = client
        metadata.create_all(journal.engine, tables=[upload_commands, wallet_orders, wallet_refunds])
        with journal.begin() as conn:  # the watermark's range reads (IF NOT EXISTS: once per file)
            for table in ("txns", "wallet_orders", "wallet_refunds"):
                conn.execute(
                    text(f"CREATE INDEX IF NOT EXISTS ix_{table}_updated ON {table} (updated_at, id)")
                )

    def __repr__(self) -> str:
        return f"JournalUploader({self.url})"

    # --- the backoff after a failure ----------------------------------------------------------

    def due(self) -> bool:
        """False while the backoff after a failed upload runs (the after-transaction upload
        waits it out; ``pos upload`` and ``pos run`` do not)."""
        with self.journal.begin() as conn:
            retry_at = _get(conn, _RETRY_AT)
        return retry_at is None or _us(self.clock.now()) // 1_000_000 >= retry_at

    def _failed(self, why: str, refused: bool) -> None:
        now = self.clock.now()
        with self.journal.begin() as conn:
            failures = (_get(conn, _FAILURES) or 0) + 1
            _set(conn, _FAILURES, failures)
            wait_s = min(BACKOFF_FIRST_S * 2 ** min(failures - 1, 10), BACKOFF_MAX_S)
            _set(conn, _RETRY_AT, _us(now) // 1_000_000 + wait_s)
            if refused and failures == 1:  # once per streak: the journal says why uploads stopped
                conn.execute(
                    insert(alerts).values(
                        at=now,
                        kind=REFUSED_ALERT,
                        text=f"the back office refused the journal upload: {why}"[:500],
                    )
                )
        log.warning("terminal %s: journal upload failed: %s", self.tid, why)

    def _succeeded(self, conn: Connection) -> None:
        if _get(conn, _FAILURES):
            _set(conn, _FAILURES, 0)
            _set(conn, _RETRY_AT, 0)

    # --- what is sent -----------------------------------------------------------------------

    def reset(self) -> None:
        """Send everything again from the first entry (``pos upload --all``)."""
        with self.journal.begin() as conn:
            conn.execute(counters.delete().where(counters.c.name.in_([_W_AT, _W_RANK, _W_ID])))

    def _watermark(self, conn: Connection) -> tuple[datetime, int, int] | None:
        at = _get(conn, _W_AT)
        if at is None:
            return None
        return _from_us(at), _get(conn, _W_RANK) or 0, _get(conn, _W_ID) or 0

    @staticmethod
    def _after(table: Table, rank: int, mark: tuple[datetime, int, int] | None) -> Any:
        if mark is None:
            return True
        at, mark_rank, mark_id = mark
        col = table.c.updated_at
        if rank > mark_rank:
            return col >= at
        if rank < mark_rank:
            return col > at
        return or_(col > at, and_(col == at, table.c.id > mark_id))

    def pending_page(self, conn: Connection, limit: int = ENTRIES_MAX) -> list[dict[str, Any]]:
        """The next entries to send (at most ``limit``), oldest change first."""
        mark = self._watermark(conn)
        rows: list[dict[str, Any]] = []
        rows += self._card_rows(conn, self._after(txns, RAIL_RANK["card"], mark), limit)
        rows += self._order_rows(conn, self._after(wallet_orders, RAIL_RANK["wallet"], mark), limit)
        rows += self._refund_rows(conn, self._after(wallet_refunds, RAIL_RANK["wallet_refund"], mark), limit)
        rows.sort(key=lambda e: (e["updated_at"], RAIL_RANK[e["entry_key"].split(":")[0]], e["_id"]))
        return rows[:limit]

    def _card_rows(self, conn: Connection, after: Any, limit: int) -> list[dict[str, Any]]:
        orig = txns.alias("orig")
        q = (
            select(txns, contacts.c.contact, orig.c.batch.label("orig_batch"), orig.c.stan.label("orig_stan"))
            .select_from(
                txns.outerjoin(contacts, contacts.c.txn_id == txns.c.id).outerjoin(
                    orig, orig.c.id == txns.c.orig_txn_id
                )
            )
            .where(after)
            .order_by(txns.c.updated_at, txns.c.id)
            .limit(limit)
        )
        out = []
        for r in conn.execute(q).mappings():
            request = json.loads(r["request"])
            out.append(
                {
                    "_id": r["id"],
                    "entry_key": card_key(r["batch"], r["stan"]),
                    "rail": "card",
                    "kind": r["kind"],
                    "state": r["state"],
                    "batch": r["batch"],
                    "stan": r["stan"],
                    "rrn": r["rrn"],
                    "order_no": None,
                    "original_key": card_key(r["orig_batch"], r["orig_stan"]) if r["orig_batch"] else None,
                    "amount_minor": r["amount_minor"],
                    "currency": request.get("49") or "156",
                    "card_masked": r["pan_masked"],  # masked when journalled (first 6, last 4)
                    "response_code": r["response_code"],
                    "receipt": r["receipt"],
                    "prints": r["prints"] or 0,
                    "contact": r["contact"],
                    "note": _text(r["note"], NOTE_MAX),
                    "approved_at": r["approved_at"],
                    "created_at": r["created_at"],
                    "updated_at": r["updated_at"],
                }
            )
        return out

    def _order_rows(self, conn: Connection, after: Any, limit: int) -> list[dict[str, Any]]:
        q = select(wallet_orders).where(after).order_by(wallet_orders.c.updated_at, wallet_orders.c.id)
        return [
            _wallet_entry(
                r,
                key=f"wallet:{r['out_trade_no']}",
                kind="qr_pay",
                order_no=r["out_trade_no"],
                original_key=None,
                approved_at=r["paid_at"],
            )
            for r in conn.execute(q.limit(limit)).mappings()
        ]

    def _refund_rows(self, conn: Connection, after: Any, limit: int) -> list[dict[str, Any]]:
        q = (
            select(wallet_refunds, wallet_orders.c.code_masked, wallet_orders.c.out_trade_no)
            .select_from(wallet_refunds.join(wallet_orders, wallet_orders.c.id == wallet_refunds.c.order_id))
            .where(after)
            .order_by(wallet_refunds.c.updated_at, wallet_refunds.c.id)
            .limit(limit)
        )
        return [
            _wallet_entry(
                r,
                key=f"wallet_refund:{r['out_refund_no']}",
                kind="qr_refund",
                order_no=r["out_refund_no"],
                original_key=f"wallet:{r['out_trade_no']}",
                approved_at=r["approved_at"],
            )
            for r in conn.execute(q).mappings()
        ]

    def printer_state(self, *, query: bool) -> str:
        """``none`` without a printer; a live status query (bounded by the printer's own timeout)
        when ``query``, else the state found by the last query."""
        if self.printer is None:
            return "none"
        if not query:
            with self.journal.begin() as conn:
                return PRINTER_STATES[_get(conn, _PRINTER) or 0]
        try:
            status = self.printer.status()
        except OSError:
            status = PrinterStatus.OFFLINE
        state = {
            PrinterStatus.READY: "ok",
            PrinterStatus.PAPER_OUT: "paper_out",
            PrinterStatus.JAMMED: "jammed",
            PrinterStatus.OFFLINE: "offline",
        }[status]
        with self.journal.begin() as conn:
            _set(conn, _PRINTER, PRINTER_STATES.index(state))
        return state

    def status(self, conn: Connection, printer: str) -> dict[str, Any]:
        """What the terminal says about itself (``terminal_status`` at the back office)."""
        now = self.clock.now()
        batch = f"{_get(conn, 'batch') or 1:06d}"
        session = conn.execute(select(session_table.c.signed_in_at)).first()
        pending = conn.execute(
            select(func.count())
            .select_from(reversals_table)
            .where(reversals_table.c.state == ReversalState.PENDING.value)
        ).scalar_one()
        open_states = [s.value for s in REFUND_OPEN]
        open_refunds = (
            conn.execute(
                select(func.count())
                .select_from(txns)
                .where(txns.c.kind == "refund", txns.c.state.in_(open_states))
            ).scalar_one()
            + conn.execute(
                select(func.count())
                .select_from(wallet_refunds)
                .where(wallet_refunds.c.state.in_(open_states))
            ).scalar_one()
        )
        open_orders = conn.execute(
            select(func.count())
            .select_from(wallet_orders)
            .where(wallet_orders.c.state.in_([s.value for s in WALLET_OPEN]))
        ).scalar_one()
        owed = sum(
            conn.execute(
                select(func.count()).select_from(t).where(t.c.receipt == ReceiptState.OWED.value)
            ).scalar_one()
            for t in (txns, wallet_orders, wallet_refunds)
        )
        recent = conn.execute(select(alerts).order_by(alerts.c.id.desc()).limit(ALERTS_MAX)).mappings()
        closed = conn.execute(
            select(batches_table).order_by(batches_table.c.batch.desc()).limit(CLOSED_BATCHES_MAX)
        ).mappings()
        last = (
            conn.execute(select(settlements_table).order_by(settlements_table.c.id.desc()).limit(1))
            .mappings()
            .first()
        )
        return {
            "batch": batch,
            "signed_in": session is not None,
            "signed_in_at": iso_us(session.signed_in_at) if session is not None else None,
            "pending_reversals": int(pending),
            "open_refunds": int(open_refunds),
            "open_wallet_orders": int(open_orders),
            "receipts_owed": int(owed),
            "printer": printer,
            "alerts": [
                {"at": iso_us(a["at"]), "kind": a["kind"], "text": _text(a["text"], TEXT_MAX) or ""}
                for a in recent
            ],
            "closed_batches": [
                {
                    "batch": b["batch"],
                    "state": b["state"],
                    "closed_at": iso_us(b["closed_at"]) if b["closed_at"] else None,
                    "next_batch": b["next_batch"],
                }
                for b in closed
            ],
            "last_settlement": {
                "batch": last["batch"],
                "state": last["state"],
                "at": iso_us(last["updated_at"]),
            }
            if last is not None
            else None,
            "reported_at": iso_us(now),
        }

    def _acks(self, conn: Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            select(upload_commands)
            .where(upload_commands.c.state != "received", upload_commands.c.reported == 0)
            .order_by(upload_commands.c.id)
            .limit(COMMANDS_MAX)
        ).mappings()
        return [{"id": r["id"], "state": r["state"], "outcome": r["outcome"] or ""} for r in rows]

    def body(
        self, entries: Sequence[Mapping[str, Any]], status: Mapping[str, Any], acks: list[dict[str, Any]]
    ) -> bytes:
        def wire(e: Mapping[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in e.items() if not k.startswith("_")}
            for k in ("approved_at", "created_at", "updated_at"):
                if out[k] is not None:
                    out[k] = iso_us(out[k])
            return out

        doc = {
            "v": BODY_VERSION,
            "tid": self.tid,
            "entries": [wire(e) for e in entries],
            "status": dict(status),
        }
        doc["acks"] = acks
        return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")

    # --- one round ----------------------------------------------------------------------------

    def upload(
        self,
        *,
        budget_s: float,
        run_command: CommandRunner | None = None,
        query_printer: bool = True,
    ) -> UploadRound:
        """Upload pages until caught up, the budget is spent or an upload fails; with
        ``run_command``, run the commands handed over and report them in the same round."""
        deadline = self.clock.monotonic() + budget_s
        printer = self.printer_state(query=query_printer)
        uploads = sent = ran = 0
        client = self._client or httpx.Client(trust_env=False)
        try:
            status: dict[str, Any] | None = None  # once per round, again after commands ran
            for _ in range(PAGES_MAX):
                with self.journal.begin() as conn:
                    candidates = self.pending_page(conn, ENTRIES_MAX + 1)  # one more: is there more?
                    page = candidates[:ENTRIES_MAX]
                    acks = self._acks(conn)
                    status = status or self.status(conn, printer)
                body = self.body(page, status, acks)
                while len(body) > BODY_MAX_BYTES and len(page) > 1:  # long notes: a shorter page
                    page = page[: len(page) // 2]
                    body = self.body(page, status, acks)
                left_s = deadline - self.clock.monotonic()
                if left_s < MIN_TIMEOUT_S and uploads:
                    return UploadRound(uploads, sent, False, ran)
                answer = self._post(client, body, max(MIN_TIMEOUT_S, min(self.timeout_s, left_s)))
                if isinstance(answer, str):
                    return UploadRound(uploads, sent, False, ran, failed=answer)
                uploads += 1
                sent += len(page)
                self._accepted(page, acks, answer)
                if run_command is not None and (done := self._run(run_command)):
                    ran += done  # their outcomes (and the entries they changed) go in the next upload
                    status = None
                with self.journal.begin() as conn:
                    more = len(candidates) > len(page) or bool(self._acks(conn)) or status is None
                if not more:
                    return UploadRound(uploads, sent, True, ran)
            return UploadRound(uploads, sent, False, ran)
        finally:
            if self._client is None:
                client.close()

    def _post(self, client: httpx.Client, body: bytes, timeout_s: float) -> Mapping[str, Any] | str:
        headers = {
            SIGNATURE_HEADER: sign_fact(self._key, self.tid, body, prefix=JOURNAL_PREFIX),
            "Content-Type": "application/json",
        }
        try:
            resp = client.post(self.url, content=body, headers=headers, timeout=httpx.Timeout(timeout_s))
        except httpx.HTTPError as exc:
            why = f"back office not reached: {type(exc).__name__}"
            self._failed(why, refused=False)
            return why
        if resp.status_code != 200:
            why = f"back office answered {resp.status_code}: {resp.text[:200]}"
            self._failed(why, refused=400 <= resp.status_code < 500 and resp.status_code not in (401, 404))
            return why
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("commands", []), list):
            why = "back office answered 200 without a JSON answer"
            self._failed(why, refused=False)
            return why
        return answer

    def _accepted(
        self, page: Sequence[Mapping[str, Any]], acks: list[dict[str, Any]], answer: Mapping[str, Any]
    ) -> int:
        """After a 200: move the watermark, mark the acknowledged outcomes, journal the commands
        handed over; returns how many of those are new to this terminal."""
        now = self.clock.now()
        fresh = 0
        with self.journal.begin() as conn:
            if page:
                last = page[-1]
                rank = RAIL_RANK[last["entry_key"].split(":")[0]]
                _set(conn, _W_AT, _us(last["updated_at"]))
                _set(conn, _W_RANK, rank)
                _set(conn, _W_ID, int(last["_id"]))
            if acks:
                ids = [a["id"] for a in acks]
                conn.execute(update(upload_commands).where(upload_commands.c.id.in_(ids)).values(reported=1))
            self._succeeded(conn)
            for cmd in answer.get("commands", [])[:COMMANDS_MAX]:
                if not isinstance(cmd, dict) or cmd.get("command") not in COMMANDS:
                    continue
                cid, ref = cmd.get("id"), cmd.get("reference")
                if not isinstance(cid, int) or not (ref is None or isinstance(ref, str)):
                    continue
                known = conn.execute(
                    select(upload_commands.c.state).where(upload_commands.c.id == cid)
                ).scalar()
                if known is None:
                    conn.execute(
                        insert(upload_commands).values(
                            id=cid,
                            command=cmd["command"],
                            reference=(ref or None) and ref[:64],
                            state="received",
                            received_at=now,
                            reported=0,
                        )
                    )
                    fresh += 1
                elif known != "received":  # run before; the acknowledgement was lost: report again
                    conn.execute(
                        update(upload_commands).where(upload_commands.c.id == cid).values(reported=0)
                    )
        return fresh

    def _run(self, run_command: CommandRunner) -> int:
        with self.journal.begin() as conn:
            todo = conn.execute(
                select(upload_commands.c.id, upload_commands.c.command, upload_commands.c.reference)
                .where(upload_commands.c.state == "received")
                .order_by(upload_commands.c.id)
            ).all()
        for cid, command, reference in todo:
            try:
                ok, outcome = run_command(command, reference)
            except Exception as exc:  # a command that breaks is reported failed, never retried blindly
                log.exception("terminal %s: command %s %s failed", self.tid, command, reference)
                ok, outcome = False, f"the terminal failed running it: {type(exc).__name__}"
            with self.journal.begin() as conn:
                conn.execute(
                    update(upload_commands)
                    .where(upload_commands.c.id == cid)
                    .values(
                        state="done" if ok else "failed",
                        outcome=_text(outcome, 500),
                        done_at=self.clock.now(),
                        reported=0,
                    )
                )
        return len(todo)

    def has_work(self) -> bool:
        """Entries after the watermark, or command outcomes not yet acknowledged (range reads)."""
        with self.journal.begin() as conn:
            return bool(self.pending_page(conn)) or bool(self._acks(conn))

    def commands(self) -> list[dict[str, Any]]:
        """The commands this terminal received, newest first (``pos upload`` shows them)."""
        with self.journal.begin() as conn:
            rows = conn.execute(
                select(upload_commands).order_by(upload_commands.c.id.desc()).limit(50)
            ).mappings()
            return [dict(r) for r in rows]


def _wallet_entry(
    r: Any, *, key: str, kind: str, order_no: str, original_key: str | None, approved_at: Any
) -> dict[str, Any]:
    """A wallet order's or refund's entry: the columns both tables share, and what differs."""
    return {
        "_id": r["id"],
        "entry_key": key,
        "rail": "wallet",
        "kind": kind,
        "state": r["state"],
        "batch": r["batch"],
        "stan": r["stan"],
        "rrn": None,
        "order_no": order_no,
        "original_key": original_key,
        "amount_minor": r["amount_minor"],
        "currency": "156",
        "card_masked": r["code_masked"],  # the payment code, masked when journalled
        "response_code": r["err_code"],
        "receipt": r["receipt"],
        "prints": r["prints"] or 0,
        "contact": r["contact"],
        "note": _text(r["note"], NOTE_MAX),
        "approved_at": approved_at,
        "created_at": r["created_at"],
        "updated_at": r["updated_at"],
    }
