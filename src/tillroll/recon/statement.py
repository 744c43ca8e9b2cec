"""The wallet provider's daily statement (WALLET.md §4): read its CSV, import it, fetch it.

Reading is strict and loses nothing: every line becomes either a statement row or a problem with
its line number and reason (bad header, wrong column count, bad time, bad amount, unknown state,
a refund row without its refund columns, a duplicate line...). Amounts are yuan with exactly two
decimals, converted to fen through Decimal; anything else is a problem, never a rounded guess.
Importing a day replaces that (merchant, day)'s rows and problems in one transaction.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

import httpx
from sqlalchemy import Engine, delete, insert

from tillroll.store.tables import statement_problems, wallet_statement_imports, wallet_statement_rows
from tillroll.wallet.bill import HEADER
from tillroll.wallet.sign import new_nonce, signed

BEIJING = timedelta(hours=8)  # statement times are Beijing time (UTC+8), whatever the merchant's zone
STATES = frozenset({"SUCCESS", "REVOKED", "REFUND"})
REFUND_STATUSES = frozenset({"PROCESSING", "SUCCESS", "CHANGE"})
BRANDS = frozenset({"wx", "ali"})
_YUAN = re.compile(r"[0-9]{1,10}\.[0-9]{2}")  # exactly two decimals, ASCII digits
_ORDER = re.compile(r"[A-Za-z0-9_-]{1,32}")
_DAY = re.compile(r"[0-9]{8}")
_LONG_DIGITS = re.compile(r"\d{12,}")  # a stray card number or payment code in a bad line


class StatementError(ValueError):
    """The statement as a whole cannot be used (not its lines: those become problems)."""


@dataclass(frozen=True)
class StatementRow:
    line_no: int
    trade_time: datetime  # UTC
    mch_id: str
    out_trade_no: str
    transaction_id: str
    trade_state: str
    brand: str
    total_minor: int
    out_refund_no: str | None
    refund_id: str | None
    refund_minor: int | None
    refund_status: str | None


@dataclass(frozen=True)
class Problem:
    line_no: int
    reason: str
    line_text: str


@dataclass
class Statement:
    rows: list[StatementRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def yuan_to_fen(text: str) -> int:
    """'12.50' -> 1250, exactly; raises ValueError unless digits with exactly two decimals."""
    if not _YUAN.fullmatch(text):
        raise ValueError(f"amount {text!r} is not yuan with exactly two decimals (like 12.50)")
    try:
        fen = Decimal(text) * 100
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"amount {text!r} is not a number") from exc
    if fen != fen.to_integral_value():  # pragma: no cover - two decimals always give whole fen
        raise ValueError(f"amount {text!r} is not a whole number of fen")
    return int(fen)


def _beijing_time(text: str) -> datetime:
    if not re.fullmatch(r"[0-9]{14}", text):
        raise ValueError(f"trade_time {text!r} is not yyyyMMddHHmmss")
    try:
        local = datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError as exc:
        raise ValueError(f"trade_time {text!r} is not a real date and time") from exc
    return local - BEIJING


def _masked(text: str) -> str:
    return _LONG_DIGITS.sub(lambda m: m.group(0)[:6] + "*" * (len(m.group(0)) - 10) + m.group(0)[-4:], text)


def _read_line(line_no: int, cols: list[str], mch_id: str) -> StatementRow:
    """One data line as a row; ValueError says what is wrong with it."""
    if len(cols) != len(HEADER):
        raise ValueError(f"{len(cols)} columns, the statement has {len(HEADER)}")
    (time_s, mch, order, txn_id, state, brand, total_s, refund_no, refund_id, refund_s, refund_status) = (
        c.strip() for c in cols
    )
    at = _beijing_time(time_s)
    if mch != mch_id:
        raise ValueError(f"mch_id {mch!r} is not this statement's merchant {mch_id!r}")
    if not _ORDER.fullmatch(order):
        raise ValueError(f"out_trade_no {order!r} is not 1-32 characters [A-Za-z0-9_-]")
    if not txn_id:
        raise ValueError("transaction_id is empty")
    if state not in STATES:
        raise ValueError(f"unknown trade_state {state!r} (SUCCESS, REVOKED or REFUND)")
    if brand not in BRANDS:
        raise ValueError(f"unknown brand {brand!r} (wx or ali)")
    try:
        total = yuan_to_fen(total_s)
    except ValueError as exc:
        raise ValueError(f"total_fee: {exc}") from None
    refund_cols = (refund_no, refund_id, refund_s, refund_status)
    if state != "REFUND":
        if any(refund_cols):
            raise ValueError(f"a {state} row has refund columns filled")
        return StatementRow(line_no, at, mch, order, txn_id, state, brand, total, None, None, None, None)
    if not all(refund_cols):
        raise ValueError(
            "a REFUND row without its refund columns (out_refund_no, refund_id, refund_fee, status)"
        )
    if not _ORDER.fullmatch(refund_no):
        raise ValueError(f"out_refund_no {refund_no!r} is not 1-32 characters [A-Za-z0-9_-]")
    try:
        refund = yuan_to_fen(refund_s)
    except ValueError as exc:
        raise ValueError(f"refund_fee: {exc}") from None
    if refund_status not in REFUND_STATUSES:
        raise ValueError(f"unknown refund_status {refund_status!r} (PROCESSING, SUCCESS or CHANGE)")
    if refund > total:
        raise ValueError(f"refund_fee {refund_s} is more than the order's total_fee {total_s}")
    return StatementRow(
        line_no, at, mch, order, txn_id, state, brand, total, refund_no, refund_id, refund, refund_status
    )


def parse_statement(text: str, *, mch_id: str) -> Statement:
    """Every line of the CSV as a row or a problem. A bad header makes every line a problem
    (the columns cannot be trusted), with the header itself as line 1's problem. A row of another
    day is kept: the matcher judges rows by their time, not by the file they came in."""
    out = Statement()
    lines = text.splitlines()
    if not lines:
        out.problems.append(Problem(1, "empty statement: not even the header line", ""))
        return out
    header = lines[0].lstrip("\ufeff").strip()
    good_header = header.split(",") == list(HEADER)
    if not good_header:
        out.problems.append(Problem(1, f"bad header: expected {','.join(HEADER)}", _masked(lines[0])[:500]))
    seen: dict[tuple[str, str], int] = {}
    for index, line in enumerate(lines[1:], start=2):
        if not line.strip():
            out.problems.append(Problem(index, "empty line", ""))
            continue
        if not good_header:
            out.problems.append(
                Problem(index, "not read: the header is not the statement's", _masked(line)[:500])
            )
            continue
        try:
            cols = next(csv.reader([line]))
            row = _read_line(index, cols, mch_id)
        except (ValueError, csv.Error) as exc:
            out.problems.append(Problem(index, str(exc)[:200], _masked(line)[:500]))
            continue
        key = (
            row.trade_state if row.trade_state == "REFUND" else "PAY",
            row.out_refund_no or row.out_trade_no,
        )
        if key in seen:  # kept as a row too: the duplicate class is the matcher's to open
            out.problems.append(
                Problem(index, f"duplicate of line {seen[key]} ({key[1]})", _masked(line)[:500])
            )
        else:
            seen[key] = index
        out.rows.append(row)
    return out


@dataclass(frozen=True)
class ImportResult:
    rows: int
    problems: list[Problem]


def import_statement(
    engine: Engine, text: str, *, mch_id: str, bill_date: str, now: datetime
) -> ImportResult:
    """Parse and store one (merchant, day)'s statement, replacing what an earlier import stored."""
    if not _DAY.fullmatch(bill_date):
        raise StatementError(f"bill date {bill_date!r} is not YYYYMMDD")
    parsed = parse_statement(text, mch_id=mch_id)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    day = (wallet_statement_rows.c.mch_id == mch_id) & (wallet_statement_rows.c.bill_date == bill_date)
    with engine.begin() as conn:
        conn.execute(delete(wallet_statement_rows).where(day))
        conn.execute(
            delete(statement_problems).where(
                (statement_problems.c.mch_id == mch_id) & (statement_problems.c.bill_date == bill_date)
            )
        )
        conn.execute(
            delete(wallet_statement_imports).where(
                (wallet_statement_imports.c.mch_id == mch_id)
                & (wallet_statement_imports.c.bill_date == bill_date)
            )
        )
        if parsed.rows:
            conn.execute(
                insert(wallet_statement_rows),
                [
                    {
                        "mch_id": mch_id,
                        "bill_date": bill_date,
                        "line_no": r.line_no,
                        "trade_time": r.trade_time,
                        "out_trade_no": r.out_trade_no,
                        "transaction_id": r.transaction_id,
                        "trade_state": r.trade_state,
                        "brand": r.brand,
                        "total_minor": r.total_minor,
                        "out_refund_no": r.out_refund_no,
                        "refund_id": r.refund_id,
                        "refund_minor": r.refund_minor,
                        "refund_status": r.refund_status,
                        "imported_at": now,
                    }
                    for r in parsed.rows
                ],
            )
        if parsed.problems:
            conn.execute(
                insert(statement_problems),
                [
                    {
                        "mch_id": mch_id,
                        "bill_date": bill_date,
                        "line_no": p.line_no,
                        "reason": p.reason,
                        "line_text": p.line_text,
                        "imported_at": now,
                    }
                    for p in parsed.problems
                ],
            )
        conn.execute(
            insert(wallet_statement_imports).values(
                mch_id=mch_id,
                bill_date=bill_date,
                rows=len(parsed.rows),
                problems=len(parsed.problems),
                sha256=digest,
                imported_at=now,
            )
        )
    return ImportResult(len(parsed.rows), parsed.problems)


def fetch_statement(base_url: str, *, mch_id: str, key: str, bill_date: str, timeout_s: float = 30.0) -> str:
    """The statement CSV from a running provider (signed GET /v1/bill)."""
    params = signed({"mch_id": mch_id, "bill_date": bill_date, "nonce_str": new_nonce()}, key)
    try:
        answer = httpx.get(
            base_url.rstrip("/") + "/v1/bill",
            params={k: str(v) for k, v in params.items()},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise StatementError(
            f"the wallet at {base_url} could not be reached ({exc}); try again later"
        ) from exc
    if answer.status_code != 200:
        raise StatementError(
            f"the wallet answered HTTP {answer.status_code} for the statement of {bill_date}"
        )
    if not answer.headers.get("content-type", "").startswith("text/csv"):
        try:
            doc = answer.json()
        except ValueError:
            doc = {}
        what = doc.get("err_code_des") or doc.get("return_msg") or answer.text[:200]
        raise StatementError(f"the wallet refused the statement of {bill_date}: {what}")
    return answer.text
