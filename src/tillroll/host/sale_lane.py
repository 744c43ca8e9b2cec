"""The sale lane: a group's ordinary sales decided in memory, then written as one statement per
table (prepare, then write).

A run is a stretch of sales of a group with no terminal and no card twice, so none of them can
see another's effect. For the whole run the lane reads, in one statement each, the terminals
(share-locked, as `card.open_batch_locked` does), their latest sessions, any stored requests of
the same keys and the cards (locked for update, in id order). Then each sale is decided from
those rows alone. A sale that is not ordinary — anything that would not be approved on the spot:
an unknown terminal, a session to renew, a MAC that fails, a retry, a wrong PIN, no money, a
malformed field — is left to the general steps (`HostPipeline._run`, in its own savepoint) after
the sales before it are written, so the rules for every refusal live in one place and the rows
come out in request order. The approved ones become rows: the request with its stored answer,
the card's new balance, the authorization, the cardholder's message, the ledger entry and its
postings, the host transaction.

The run is one savepoint, in plain SQL (`HotSql.savepoint`; SQLAlchemy's nested transaction was
~5 % of the database process's time), and the general steps' own savepoints nest inside it.
Should its writes fail (a racing host process on the same PostgreSQL took a request key first,
or anything else), the run is rolled back and each of its requests goes through the general
steps on its own, which replay, decline or answer 96 one by one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from tillroll import ledger
from tillroll.clock import Clock
from tillroll.crypto.keystore import KeyStore
from tillroll.crypto.pin import decrypt_pin
from tillroll.host import card
from tillroll.host.boundary import Answer, GroupRequest
from tillroll.host.config import HostConfig
from tillroll.host.context import RequestContext, response_for, stored_response
from tillroll.host.hot_sql import HotSql
from tillroll.host.offenders import describe
from tillroll.host.states import SessionState
from tillroll.host.store import key_label
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import DecodeError
from tillroll.iso8583.messages import CURRENCY_CNY, Field60, Kind, Message, mac_matches
from tillroll.issuer import bank
from tillroll.issuer.bank import Reason
from tillroll.pan import mask_pan
from tillroll.store.tables import (
    issuer_authorizations,
    issuer_keys,
    issuer_messages,
    ledger_entries,
    ledger_postings,
    requests,
    transactions,
)

RC = ResponseCode
SESSION_KEYS_MAX = 20_000  # opened session keys kept (a terminal's current session each)

_PVK = select(issuer_keys.c.key_enc).where(issuer_keys.c.name == bank.PVK_NAME)
# The tables whose ids a sale's other rows refer to (RRN, authorization, entry) before writing.
ALLOCATED = (requests.name, issuer_authorizations.name, ledger_entries.name)


class IdAllocator:
    """Primary keys of a sale's request, authorization and ledger entry (`ALLOCATED`), handed out
    before the rows are written, so that one statement per table writes a whole run; one
    statement a block, whatever the number of tables.

    PostgreSQL: blocks from the tables' own sequences (`nextval`), shared safely by every host
    process; unused ones are gaps, as with any sequence. SQLite: the next rowids after the
    tables' largest, valid while this transaction holds the write lock (BEGIN IMMEDIATE) and
    nothing else inserts; `forget` after anything else wrote."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._postgres = conn.dialect.name == "postgresql"
        self._free: list[tuple[int, ...]] = []
        self._next: tuple[int, ...] | None = None

    def take(self, *, block: int = 1) -> tuple[int, ...]:
        """The next ids, one per table of `ALLOCATED`; `block`: how many to reserve at once."""
        if self._postgres:
            if not self._free:
                columns = ", ".join(f"nextval(pg_get_serial_sequence('{t}', 'id'))" for t in ALLOCATED)
                rows = self._conn.exec_driver_sql(
                    f"SELECT {columns} FROM generate_series(1, %(n)s)", {"n": max(block, 1)}
                ).all()
                per_table = [sorted(int(r[i]) for r in rows) for i in range(len(ALLOCATED))]
                self._free = list(zip(*per_table, strict=True))[::-1]
            return self._free.pop()
        if self._next is None:
            largest = ", ".join(f"(SELECT coalesce(max(id), 0) + 1 FROM {t})" for t in ALLOCATED)
            self._next = tuple(int(v) for v in self._conn.exec_driver_sql(f"SELECT {largest}").one())
        ids, self._next = self._next, tuple(i + 1 for i in self._next)
        return ids

    def forget(self) -> None:
        """Something else inserted rows in this transaction (SQLite: ask again)."""
        self._next = None


@dataclass
class _Sale:
    """An ordinary sale, decided: everything needed to book it."""

    req: GroupRequest
    now: datetime
    f60: Field60
    pan: str
    amount_minor: int
    content_hash: str
    pik: bytes
    terminal: Mapping[str, Any]
    card: dict[str, Any]


@dataclass
class _Rows:
    """What one run writes, table by table, in request order."""

    requests: list[dict[str, object]]
    balances: list[tuple[int, int]]  # (balance, card id)
    authorizations: list[dict[str, object]]
    messages: list[dict[str, object]]
    entries: list[dict[str, object]]
    postings: list[dict[str, object]]
    transactions: list[dict[str, object]]

    @classmethod
    def empty(cls) -> _Rows:
        return cls([], [], [], [], [], [], [])

    def write(self, conn: Connection, sql: HotSql) -> None:
        if not self.requests:
            return
        sql.insert(conn, requests, self.requests)
        sql.set_balances(conn, self.balances)
        sql.insert(conn, issuer_authorizations, self.authorizations)
        sql.insert(conn, issuer_messages, self.messages)
        sql.insert(conn, ledger_entries, self.entries)
        sql.insert(conn, ledger_postings, self.postings)
        sql.insert(conn, transactions, self.transactions)
        for rows in vars(self).values():
            rows.clear()


SlowPath = Callable[[Connection, GroupRequest], Answer]
FaultPoint = Callable[[str, Message], None]


def lane_key(msg: Message) -> tuple[str, str] | None:
    """(terminal, card) of a sale the lane may take, else None (the general steps take it)."""
    if msg.kind is not Kind.SALE:
        return None
    tid, found = msg.get("41"), card.card_of(msg)
    if not tid or found is None:
        return None
    return tid, found[0]


class SaleLane:
    def __init__(self, keystore: KeyStore, clock: Clock, config: HostConfig) -> None:
        self.keystore = keystore
        self.clock = clock
        self.config = config
        # Opened working keys by session row: its id and sealed keys (a session's keys never
        # change; a new sign-in is a new row, read afresh from the store for every run).
        self._session_keys: dict[tuple[int, bytes, bytes], tuple[bytes, bytes]] = {}
        self._pvk: bytes | None = None  # the issuer's PIN verification key never changes
        self._hot_sql: HotSql | None = None
        self.stats = {"runs": 0, "laned": 0, "deferred": 0, "fallbacks": 0, "key_hits": 0, "key_misses": 0}

    def summary(self) -> str:
        st = self.stats
        keys = st["key_hits"] + st["key_misses"]
        hit_rate = st["key_hits"] / keys if keys else 0.0
        return (
            f"sale lane: {st['laned']} sales in {st['runs']} runs, {st['deferred']} to the general steps, "
            f"{st['fallbacks']} runs fell back; session keys cache hit rate {hit_rate:.1%}"
        )

    # --- a run ---------------------------------------------------------------------------

    def run(
        self, conn: Connection, reqs: list[GroupRequest], slow: SlowPath, fault: FaultPoint
    ) -> dict[int, Answer]:
        """Answer a run of sales (distinct terminals and cards), in request order."""
        self.stats["runs"] += 1
        sql = self._sql(conn)
        sql.savepoint(conn)
        try:
            answers = self._run(conn, reqs, slow, fault)
        except Exception:
            sql.rollback_to_savepoint(conn)  # if even this fails, the group is broken: the boundary answers
            self.stats["fallbacks"] += 1
            return {req.index: slow(conn, req) for req in reqs}
        sql.release_savepoint(conn)
        return answers

    def _run(
        self, conn: Connection, reqs: list[GroupRequest], slow: SlowPath, fault: FaultPoint
    ) -> dict[int, Answer]:
        sql = self._sql(conn)
        tids = sorted({req.msg["41"] for req in reqs})
        found_terminals = sql.terminals(conn, tids)
        latest = sql.latest_sessions(conn, tids)
        stored = sql.stored_keys(conn, [k for k in (_request_key(req.msg) for req in reqs) if k is not None])
        cards = sql.cards(conn, sorted({p for p in (_pan(req.msg) for req in reqs) if p is not None}))
        pvk = self._pin_key(conn) if any("52" in req.msg for req in reqs) else None

        # One instant for the run: its sales are decided and written together, and its stamps
        # (fields 12/13/15, local date, stored datetimes) are then formatted once.
        now = self.clock.now()
        ids = IdAllocator(conn)
        rows = _Rows.empty()
        answers: dict[int, Answer] = {}
        for position, req in enumerate(reqs):
            sale = self._decide(req, now, found_terminals, latest, stored, cards, pvk)
            if sale is None:
                rows.write(conn, sql)
                answers[req.index] = slow(conn, req)
                ids.forget()
                self.stats["deferred"] += 1
                continue
            try:
                fault("before_commit", req.msg)
            except Exception as exc:  # a test's injected failure: this request only
                req.failed(f"request rolled back, answering 96: {describe(exc)}", exc)
                malfunction = response_for(req.msg, RC.SYSTEM_MALFUNCTION, self.clock.now(), self.config.zone)
                answers[req.index] = Answer(malfunction, req.verified.get("mak"))
                continue
            answers[req.index] = self._book(conn, sale, ids, rows, block=len(reqs) - position)
            self.stats["laned"] += 1
        rows.write(conn, sql)
        return answers

    # --- deciding one sale (reads nothing: the run's rows only) -----------------------------

    def _decide(
        self,
        req: GroupRequest,
        now: datetime,
        found_terminals: Mapping[str, Mapping[str, Any]],
        latest: Mapping[str, Mapping[str, Any]],
        stored: set[tuple[Any, ...]],
        cards: Mapping[str, dict[str, Any]],
        pvk: bytes | None,
    ) -> _Sale | None:
        """The sale, when it is approved on the spot exactly as the general steps would approve
        it; None for anything else (they then decide it, refusals and all)."""
        msg = req.msg
        tid = msg["41"]
        terminal = found_terminals.get(tid)
        if terminal is None or terminal["status"] != "active" or msg.get("42") != terminal["mid"]:
            return None
        key = _request_key(msg)
        session = latest.get(tid)
        if key is None or session is None or key in stored:
            return None
        f60 = msg.field60
        if (
            session["state"] != SessionState.ACTIVE
            or now >= session["expires_at"]
            or f60.batch != session["batch"]
            or f60.batch != terminal["batch"]
        ):
            return None
        mak, pik = self._keys(tid, session)
        if not mac_matches(req.frame.message, mak):
            return None
        found = card.card_of(msg)
        amount = msg.get("4")
        if found is None or amount is None or msg.get("49", CURRENCY_CNY) != CURRENCY_CNY:
            return None
        pan, expiry = found
        holder = cards.get(pan)
        if holder is None or bank.card_refusal(holder, expiry, now) is not None:
            return None
        block = msg.get("52")
        if block is not None:
            try:
                pin = decrypt_pin(pik, bytes.fromhex(block), pan)
            except ValueError:  # PinBlockError and a block that is not hex: the steps answer
                return None
            if holder["pin_tries"] or not bank.pin_ok(pvk, holder, pin):
                return None
        if bank.debit_refusal(holder, int(amount)) is not None:
            return None
        req.verified["mak"] = mak
        content_hash = self.keystore.digest(json.dumps(msg.content_key()).encode())
        return _Sale(req, now, f60, pan, int(amount), content_hash, pik, terminal, holder)

    def _keys(self, tid: str, session: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """The session's MAK and PIK, opened once per session row."""
        cache_key = (int(session["id"]), bytes(session["mak_enc"]), bytes(session["pik_enc"]))
        keys = self._session_keys.get(cache_key)
        if keys is not None:
            self.stats["key_hits"] += 1
            return keys
        self.stats["key_misses"] += 1
        keys = (
            self.keystore.open(cache_key[1], label=key_label(tid, "mak")),
            self.keystore.open(cache_key[2], label=key_label(tid, "pik")),
        )
        if len(self._session_keys) >= SESSION_KEYS_MAX:
            self._session_keys.clear()  # old sessions' keys: the current ones come back at once
        self._session_keys[cache_key] = keys
        return keys

    def _sql(self, conn: Connection) -> HotSql:
        if self._hot_sql is None:
            self._hot_sql = HotSql(conn.dialect)
        return self._hot_sql

    def _pin_key(self, conn: Connection) -> bytes | None:
        if self._pvk is None:
            sealed = conn.execute(_PVK).scalar()
            if sealed is not None:
                self._pvk = self.keystore.open(sealed, label=bank.PVK_LABEL)
        return self._pvk

    # --- booking one decided sale ----------------------------------------------------------

    def _book(self, conn: Connection, sale: _Sale, ids: IdAllocator, rows: _Rows, *, block: int) -> Answer:
        """The rows the general steps would write for this sale, and its answer."""
        msg, now, amount = sale.req.msg, sale.now, sale.amount_minor
        request_id, authorization_id, entry_id = ids.take(block=block)
        ctx = RequestContext(
            conn=conn,
            msg=msg,
            f60=sale.f60,
            rrn=f"{request_id:012d}",
            pik=sale.pik,
            mid=str(sale.terminal["mid"]),
            merchant_name=str(sale.terminal["name"]),
            fee_rate_ppm=int(sale.terminal["fee_rate_ppm"]),
            now=now,
            config=self.config,
            keystore=self.keystore,
        )
        holder = sale.card
        card_id = int(holder["id"])
        balance = int(holder["balance_minor"]) - amount
        holder["balance_minor"] = balance
        rows.balances.append((balance, card_id))
        authorization = bank.authorization_row(
            card_id, "debit", amount, Reason.SALE, ctx.rrn, ctx.merchant_name, now
        )
        rows.authorizations.append({"id": authorization_id, **authorization})
        rows.messages.append(
            bank.message_row(holder, authorization_id, Reason.SALE, amount, balance, ctx.merchant_name, now)
        )
        legs = ledger.transfer_legs(ledger.cardholder(card_id), ledger.CLEARING, amount)
        entry, postings = ledger.entry_rows(entry_id, ledger.EntryKind.SALE, ctx.rrn, legs, now)
        rows.entries.append(entry)
        rows.postings.extend(postings)
        code = card.auth_code(authorization_id)
        rows.transactions.append(
            card.transaction_row(
                ctx,
                kind=card.TxnKind.SALE,
                code=RC.APPROVED,
                amount_minor=amount,
                pan_masked=mask_pan(sale.pan),
                auth=code,
                issuer_ref=authorization_id,
            )
        )
        response = ctx.respond(RC.APPROVED, code)
        rows.requests.append(
            {
                "id": request_id,
                "tid": ctx.tid,
                "batch": sale.f60.batch,
                "stan": ctx.stan,
                "mti": msg.mti,
                "content_hash": sale.content_hash,
                "response": stored_response(response),
                "created_at": now,
            }
        )
        return Answer(response, sale.req.verified["mak"])


def _request_key(msg: Message) -> tuple[str, str, str, str] | None:
    """The idempotency key (tid, batch, stan, mti), when its parts are well formed."""
    stan = msg.get("11")
    try:
        batch = msg.field60.batch
    except DecodeError:
        return None
    if not stan or not stan.isdigit():
        return None
    return msg["41"], batch, stan, msg.mti


def _pan(msg: Message) -> str | None:
    found = card.card_of(msg)
    return None if found is None else found[0]


def runs(work: Iterable[GroupRequest], *, enabled: bool) -> Iterable[tuple[list[GroupRequest], bool]]:
    """The group cut into runs for the lane (True) and single requests for the general steps
    (False), in order: a run ends before a request for a terminal or card it has already."""
    run: list[GroupRequest] = []
    tids: set[str] = set()
    pans: set[str] = set()
    for req in work:
        key = lane_key(req.msg) if enabled else None
        if key is None or key[0] in tids or key[1] in pans:
            if run:
                yield run, True
                run, tids, pans = [], set(), set()
            if key is None:
                yield [req], False
                continue
        run.append(req)
        tids.add(key[0])
        pans.add(key[1])
    if run:
        yield run, True
