"""A generated business day's rows, the way the real parts write them (``DayGenerator``), chunk
by chunk, and their bulk insert (``load``). The plan they follow: ``dayspec``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, Table

from tillroll.ledger.postings import CLEARING
from tillroll.recon.dayspec import (
    BEIJING,
    WALLET_MCH,
    DaySpec,
    Fault,
    is_wallet,
    mid_of,
    order,
    refund_order,
    refund_stan_of,
    rrn,
    stan_of,
    tid_of,
    utc_of,
)
from tillroll.store import tables as T


class _Rows:
    """One chunk's rows per table, with the id counters that run across chunks."""

    def __init__(self) -> None:
        self.by_table: dict[str, list[dict[str, Any]]] = {}

    def add(self, table: Table, **row: Any) -> None:
        self.by_table.setdefault(table.name, []).append(row)


@dataclass
class _Ids:
    txn: int = 0
    auth: int = 0
    entry: int = 0
    posting: int = 0
    journal: int = 0
    fact: int = 0


N_CARDS = 50


class DayGenerator:
    def __init__(self, spec: DaySpec, *, chunk: int = 50_000) -> None:
        self.spec, self.chunk = spec, chunk
        self.tz = ZoneInfo(spec.tz)
        day = spec.business_date
        self.lo = utc_of(datetime.combine(day, time()), self.tz)
        self.hi = utc_of(datetime.combine(day + timedelta(days=1), time()), self.tz)
        self.ids = _Ids()
        self.lines: dict[str, int] = {}

    def at(self, i: int) -> datetime:
        step = (self.hi - self.lo) / self.spec.payments
        return (self.lo + step * i + step / 2).replace(microsecond=0)

    def setup(self) -> _Rows:
        rows = _Rows()
        created = self.lo - timedelta(days=30)
        n = self.spec.n_terminals
        for m in sorted({mid_of(t) for t in range(n)}):
            rows.add(
                T.merchants,
                mid=m,
                name=f"店 {m[-4:]}",
                fee_rate_ppm=6000,
                created_at=created,
                tz=self.spec.tz,
            )
        sign_in = utc_of(datetime.combine(self.spec.business_date, time(7)), self.tz)
        for t in range(n):
            tid = f"T{t:07d}"
            rows.add(
                T.terminals,
                tid=tid,
                mid=mid_of(t),
                tmk_enc=b"\0" * 16,
                batch="000001",
                status="active",
                created_at=created,
            )
            rows.add(
                T.sessions,
                id=t + 1,
                tid=tid,
                batch="000001",
                pik_enc=b"\0",
                mak_enc=b"\0",
                tdk_enc=None,
                state="active",
                signed_in_at=sign_in,
                expires_at=sign_in + timedelta(days=1),
            )
        for c in range(1, N_CARDS + 1):
            rows.add(
                T.issuer_cards,
                id=c,
                pan=f"62220200{c:08d}",
                expiry="3012",
                pin_offset=None,
                pin_tries=0,
                status="active",
                balance_minor=10**12,
                limit_minor=None,
                currency="156",
                created_at=created,
            )
        if self.spec.statements:
            for d in (self.spec.business_date, self.spec.business_date + timedelta(days=1)):
                rows.add(
                    T.wallet_statement_imports,
                    mch_id=WALLET_MCH,
                    bill_date=d.strftime("%Y%m%d"),
                    rows=0,
                    problems=0,
                    sha256="0" * 64,
                    imported_at=self.hi + timedelta(hours=2),
                )
        return rows

    def chunks(self) -> Iterator[_Rows]:
        yield self.setup()
        extra_session = self.spec.n_terminals
        for start in range(0, self.spec.payments, self.chunk):
            rows = _Rows()
            for i in range(start, min(start + self.chunk, self.spec.payments)):
                fault = self.spec.faults.get(i)
                if is_wallet(i):
                    self._wallet(rows, i, fault)
                else:
                    self._card(rows, i, fault)
                if fault is Fault.SIGNIN_ALERT:
                    self._fact(
                        rows,
                        "merchant_alert",
                        tid_of(self.spec, i),
                        f"alert.{i}",
                        self.at(i),
                        {"alert": "sign_in_failures", "count": 3},
                    )
                elif fault is Fault.SESSION_EXPIRED:
                    extra_session += 1
                    expires = utc_of(datetime.combine(self.spec.business_date, time(14)), self.tz)
                    rows.add(
                        T.sessions,
                        id=extra_session,
                        tid=tid_of(self.spec, i),
                        batch="000001",
                        pik_enc=b"\0",
                        mak_enc=b"\0",
                        tdk_enc=None,
                        state="active",
                        signed_in_at=expires - timedelta(hours=12),
                        expires_at=expires,
                    )
            yield rows

    # --- one payment ---------------------------------------------------------------------

    def _journal(self, rows: _Rows, **row: Any) -> None:
        self.ids.journal += 1
        at = row.pop("at")
        base = {
            "id": self.ids.journal,
            "currency": "156",
            "response_code": "00",
            "receipt": "printed",
            "prints": 1,
            "contact": None,
            "note": None,
            "approved_at": at,
            "created_at": at,
            "updated_at": at,
            "received_at": at + timedelta(seconds=1),
            "rrn": None,
            "order_no": None,
            "original_key": None,
        }
        base.update(row)
        rows.add(T.journal_entries, **base)

    def _host(
        self,
        rows: _Rows,
        *,
        i: int,
        tid: str,
        at: datetime,
        kind: str,
        rrn_: str,
        stan: str,
        amount: int,
        status: str = "approved",
        original_id: int | None = None,
        ledger: int | None = None,
        pan: str = "",
    ) -> int:
        ids = self.ids
        ids.txn += 1
        ids.auth += 1
        card = i % N_CARDS + 1
        rows.add(
            T.transactions,
            id=ids.txn,
            rrn=rrn_,
            tid=tid,
            mid=mid_of(int(tid[1:])),
            batch="000001",
            stan=stan,
            kind=kind,
            status=status,
            response_code="00",
            amount_minor=amount,
            currency="156",
            pan_masked=pan,
            auth_code=f"{ids.auth % 1000000:06d}",
            issuer_ref=ids.auth,
            original_id=original_id,
            local_date=at.strftime("%m%d"),
            created_at=at,
            updated_at=at,
        )
        rows.add(
            T.issuer_authorizations,
            id=ids.auth,
            card_id=card,
            direction="debit" if kind == "sale" else "credit",
            amount_minor=amount,
            reason=kind,
            reference=rrn_,
            merchant_name="店",
            created_at=at,
        )
        if ledger is not None:
            ids.entry += 1
            rows.add(T.ledger_entries, id=ids.entry, kind=kind, reference=rrn_, created_at=at)
            for account, leg in ((f"cardholder:{card}", -ledger), (CLEARING, ledger)):
                ids.posting += 1
                rows.add(
                    T.ledger_postings,
                    id=ids.posting,
                    entry_id=ids.entry,
                    account=account,
                    amount_minor=leg,
                    currency="156",
                )
        return ids.txn

    def _fact(
        self, rows: _Rows, kind: str, tid: str, reference: str, at: datetime, payload: dict[str, Any]
    ) -> None:
        self.ids.fact += 1
        rows.add(
            T.backoffice_facts,
            id=self.ids.fact,
            message_id=f"{kind}:{tid}:{reference}",
            tid=tid,
            kind=kind,
            reference=reference,
            recipient="customer@example.com",
            payload=json.dumps(payload, ensure_ascii=False, sort_keys=True),
            received_at=at,
        )

    def _card(self, rows: _Rows, i: int, fault: Fault | None) -> None:
        spec, at = self.spec, self.at(i)
        tid, stan, amount = tid_of(spec, i), stan_of(spec, i), 100 + (i * 7919) % 99900
        pan = f"622202******{i % 10000:04d}"
        journal: dict[str, Any] = {
            "tid": tid,
            "entry_key": f"card:{i}",
            "rail": "card",
            "kind": "sale",
            "state": "approved",
            "batch": "000001",
            "stan": stan,
            "rrn": rrn(i),
            "amount_minor": amount,
            "card_masked": pan,
            "at": at,
        }
        status, ledger = "approved", amount
        if fault is Fault.CARD_NEVER_SAW:
            journal.update(
                state="unknown", rrn=None, response_code=None, receipt="none", prints=0, approved_at=None
            )
        elif fault is Fault.CARD_NO_SLIP:
            journal.update(receipt="owed", prints=0)
        elif fault is Fault.CARD_RECEIPT_REVERSED:
            status = "reversed"
        elif fault is Fault.CARD_TOLD_REVERSED:
            status = "reversed"
            journal.update(state="reversed", receipt="none", prints=0)
        elif fault is Fault.CARD_AMOUNT:
            journal.update(amount_minor=amount + 100)
        elif fault is Fault.LEDGER_AMOUNT:
            ledger = amount - 1
        if fault is not Fault.CARD_NO_JOURNAL:
            self._journal(rows, **journal)
        sale_id = self._host(
            rows,
            i=i,
            tid=tid,
            at=at,
            kind="sale",
            rrn_=rrn(i),
            stan=stan,
            amount=amount,
            status=status,
            ledger=None if fault is Fault.LEDGER_MISSING else ledger,
            pan=pan,
        )
        if i % 20 == 0 or fault is Fault.CARD_TOLD_REVERSED:
            self._fact(rows, "e_receipt", tid, f"000001.{stan}", at, {"rail": "card", "amount_minor": amount})
        later = at + timedelta(seconds=600)
        if i % 50 == 0 or fault is Fault.REFUNDS_EXCEED:
            parts = [amount // 2] if fault is None else [amount, 1]
            for n, part in enumerate(parts):
                r_stan = f"{int(refund_stan_of(spec, i)) + n * 100000:06d}"
                self._journal(
                    rows,
                    tid=tid,
                    entry_key=f"card_refund:{i}:{n}",
                    rail="card",
                    kind="refund",
                    state="approved",
                    batch="000001",
                    stan=r_stan,
                    rrn=rrn(i, 2 + n),
                    amount_minor=part,
                    card_masked=pan,
                    original_key=f"card:{i}",
                    at=later,
                )
                self._host(
                    rows,
                    i=i,
                    tid=tid,
                    at=later,
                    kind="refund",
                    rrn_=rrn(i, 2 + n),
                    stan=r_stan,
                    amount=part,
                    original_id=sale_id,
                    pan=pan,
                )
        elif fault is Fault.CARD_REFUND_STUCK:
            self._journal(
                rows,
                tid=tid,
                entry_key=f"card_refund:{i}:0",
                rail="card",
                kind="refund",
                state="unknown",
                batch="000001",
                stan=refund_stan_of(spec, i),
                amount_minor=amount // 2,
                card_masked=pan,
                original_key=f"card:{i}",
                response_code=None,
                receipt="none",
                prints=0,
                approved_at=None,
                at=later,
            )
        elif fault is Fault.CARD_DOUBLE_CHARGE:
            again = at + timedelta(seconds=30)
            d_stan = f"{int(stan_of(spec, i)) + 900000:06d}"
            self._journal(
                rows,
                tid=tid,
                entry_key=f"card_again:{i}",
                rail="card",
                kind="sale",
                state="approved",
                batch="000001",
                stan=d_stan,
                rrn=rrn(i, 4),
                amount_minor=amount,
                card_masked=pan,
                at=again,
            )
            self._host(
                rows,
                i=i,
                tid=tid,
                at=again,
                kind="sale",
                rrn_=rrn(i, 4),
                stan=d_stan,
                amount=amount,
                ledger=amount,
                pan=pan,
            )

    def _statement(self, rows: _Rows, at: datetime, **row: Any) -> None:
        bill = (at + BEIJING).strftime("%Y%m%d")
        self.lines[bill] = self.lines.get(bill, 1) + 1
        base = {
            "mch_id": WALLET_MCH,
            "bill_date": bill,
            "line_no": self.lines[bill],
            "trade_time": at,
            "brand": "wx",
            "out_refund_no": None,
            "refund_id": None,
            "refund_minor": None,
            "refund_status": None,
            "imported_at": self.hi + timedelta(hours=2),
        }
        base.update(row)
        rows.add(T.wallet_statement_rows, **base)

    def _wallet(self, rows: _Rows, i: int, fault: Fault | None) -> None:
        spec, at = self.spec, self.at(i)
        tid, amount, no = tid_of(spec, i), 100 + (i * 7919) % 99900, order(i)
        code = f"134567********{i % 10000:04d}"
        journal: dict[str, Any] = {
            "tid": tid,
            "entry_key": f"wallet:{i}",
            "rail": "wallet",
            "kind": "qr_pay",
            "state": "success",
            "batch": "000001",
            "stan": stan_of(spec, i),
            "order_no": no,
            "amount_minor": amount,
            "card_masked": code,
            "response_code": None,
            "at": at,
        }
        state, total = "SUCCESS", amount
        if fault is Fault.WALLET_NEVER_SAW:
            journal.update(state="unknown", receipt="none", prints=0, approved_at=None)
        elif fault is Fault.WALLET_NO_SLIP:
            journal.update(receipt="owed", prints=0)
        elif fault is Fault.WALLET_RECEIPT_REVOKED:
            state = "REVOKED"
        elif fault is Fault.WALLET_TOLD_REVOKED:
            state = "REVOKED"
            journal.update(state="revoked", receipt="none", prints=0)
        elif fault is Fault.WALLET_AMOUNT:
            total = amount + 1
        if fault is not Fault.WALLET_NO_JOURNAL:
            self._journal(rows, **journal)
        txn_id = f"4200{i:016d}"
        self._statement(
            rows, at, out_trade_no=no, transaction_id=txn_id, trade_state=state, total_minor=total
        )
        if fault is Fault.STATEMENT_DUPLICATE_LINE:
            self._statement(
                rows, at, out_trade_no=no, transaction_id=txn_id, trade_state=state, total_minor=total
            )
        if i % 20 == 0 or fault is Fault.WALLET_TOLD_REVOKED:
            self._fact(rows, "e_receipt", tid, no, at, {"rail": "wallet", "amount_minor": amount})
        later = at + timedelta(seconds=600)
        refund_faults = (Fault.WALLET_REFUND_FAILED, Fault.WALLET_REFUND_NOT_ON_STATEMENT)
        if i % 50 == 0 or fault in refund_faults:
            part = amount // 2
            self._journal(
                rows,
                tid=tid,
                entry_key=f"wallet_refund:{i}",
                rail="wallet",
                kind="qr_refund",
                state="approved",
                batch="000001",
                stan=refund_stan_of(spec, i),
                order_no=refund_order(i),
                amount_minor=part,
                card_masked=code,
                response_code=None,
                original_key=f"wallet:{i}",
                at=later,
            )
            if fault is not Fault.WALLET_REFUND_NOT_ON_STATEMENT:
                self._statement(
                    rows,
                    later,
                    out_trade_no=no,
                    transaction_id=txn_id,
                    trade_state="REFUND",
                    total_minor=amount,
                    out_refund_no=refund_order(i),
                    refund_id=f"5000{i:016d}",
                    refund_minor=part,
                    refund_status="CHANGE" if fault is Fault.WALLET_REFUND_FAILED else "SUCCESS",
                )


# Parents before children (foreign keys).
LOAD_ORDER = (
    T.merchants,
    T.terminals,
    T.sessions,
    T.issuer_cards,
    T.issuer_authorizations,
    T.transactions,
    T.ledger_entries,
    T.ledger_postings,
    T.journal_entries,
    T.wallet_statement_rows,
    T.wallet_statement_imports,
    T.backoffice_facts,
)


def load(engine: Engine, spec: DaySpec, *, chunk: int = 50_000) -> None:
    """Generate the day and bulk insert it (executemany), chunk by chunk."""
    gen = DayGenerator(spec, chunk=chunk)
    for rows in gen.chunks():
        with engine.begin() as conn:
            for table in LOAD_ORDER:
                batch = rows.by_table.get(table.name)
                if batch:
                    conn.execute(table.insert(), batch)
    advance_sequences(engine)


def advance_sequences(engine: Engine) -> None:
    """Move PostgreSQL's id sequences past the ids the generator wrote explicitly, so the real
    code that runs on the day afterwards (an action's reversal, a refund) takes fresh ids. SQLite
    takes max(id) + 1 by itself."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        for table in LOAD_ORDER:
            if "id" in table.c and table.c.id.primary_key and table.c.id.autoincrement:
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table.name}), 1))"
                )
