"""The POS terminal engine: sign-in, balance inquiry, sale, void, reversals and receipts.

Rules it keeps (PROFILE §3-§6, DESIGN F1/F4/F5):

- **Durable before visible.** A sale or void is journalled with its STAN, batch, the request's
  fields (never field 52, never the PIN) and a pending reversal (reason 06), and committed,
  before the first byte is sent.
- **Only a MAC-verified 00 is "approved".** No answer in time → reversal 98; an answer whose MAC
  fails (or that should carry one and does not) → reversal A0 and a new sign-in; an approval the
  terminal cannot complete (unusable approval data, or the journal cannot record it) → 96. A
  verified non-approval cancels the reversal; a verified approval cancels it in the same journal
  transaction that records the approval.
- **Reversals are never dropped.** They go out right away, before every later transaction and on
  :meth:`Terminal.recover`, each time with at most ``reversal_retries_max`` tries; after that they
  stay pending, the journal gets an alert, and no new transaction starts until they are answered
  00 (any answer 00, a repeat included, is done).
- **Sessions.** The terminal signs in by itself when it has no session, before the session's key
  lifetime runs out (``key_lifetime_s - sign_in_margin_s``), and after 77 or A0. A transaction
  the host did not process (77, or header processing requirement 3) is sent again with a new
  STAN, at most ``resend_max`` times; one answered A0 is reversed instead (it could have been
  approved). A verified 96 ("nothing was done") repeats the same request unchanged, at most
  ``retry_96_max`` times.
- **Two lines.** The host link tries the backup address when the active one cannot be reached;
  a request whose outcome is unknown is reversed, never re-sent on the other line.
- **Receipts** are built from the journal entry of the approval, never from the request; if the
  printer is not READY or the job fails, the sale stands, the receipt is owed, and an e-receipt
  (HTML) is written at once; :meth:`Terminal.reprint` prints it later marked REPRINT.

- **Refunds are not reversed.** A refund (0220) is journalled (``requested``) before it is
  sent and then retried as the *same* request (same STAN, same fields: the host replays its
  stored answer, so it never pays twice) while its outcome is unknown — no answer, a cut line,
  a bad MAC, 96, 77 (after a new sign-in) — at most ``refund_retries_max`` times with a short
  backoff. Still unknown, it stays ``unknown`` with an alert; :meth:`Terminal.recover` (and the
  next refund of the same sale, and settlement) send it again. It is never dropped, and the
  cashier's line names the cause and the next step.
- **Settlement** (0500) sends the journal's totals; "not balanced" is followed by the batch
  upload (0320, 60.3 201, then 202). Either way the terminal moves to the next batch and signs
  in again. Pending reversals and open refunds go out first; settlement waits while any stays
  open. An unanswered settlement is repeated as the same request.

Card entry (profile choice of this terminal): the card number is keyed in, so requests carry the
PAN in field 2 and the expiry in field 14 with entry mode ``01`` — field 22 is ``011`` with a PIN,
``012`` without — and the slip shows entry mode ``M``. No track data (35/36) is ever sent.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from tillroll.clock import Clock, SystemClock
from tillroll.crypto.keys import KeyCheckError, unwrap_working_keys
from tillroll.crypto.pin import encrypt_pin_block
from tillroll.iso8583 import builders
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import CodecError, DecodeError
from tillroll.iso8583.field48 import (
    UPLOAD_ITEMS_MAX,
    SettlementFlag,
    SettlementTotals,
    UploadItem,
    settlement_flag,
)
from tillroll.iso8583.messages import (
    CURRENCY_CNY,
    Field60,
    Field61,
    Message,
    Mti,
    has_mac,
    mac_matches,
    pack,
    sign,
    unpack,
)
from tillroll.money import AMOUNT_MAX_MINOR, format_yuan
from tillroll.pan import mask_pan
from tillroll.terminal.config import E_RECEIPT_DIR, JOURNAL_FILE, TerminalConfig, device_keystore, load_config
from tillroll.terminal.hostlink import HostLink, LinkStatus, SocketFactory, TcpHostLink
from tillroll.terminal.journal import Alert, Entry, Journal, Session, Settlement
from tillroll.terminal.printer import Printer, PrintError, PrinterStatus, open_printer
from tillroll.terminal.receipt import Copy, Slip, TransType
from tillroll.terminal.states import (
    Outcome,
    ReceiptState,
    RefundState,
    ReversalReason,
    ReversalState,
    SettlementState,
    TxnKind,
    TxnState,
)

log = logging.getLogger("tillroll.terminal")
log.addHandler(logging.NullHandler())  # the application decides where logs go

P = ParamSpec("P")
R = TypeVar("R")

SLIP_ENTRY_MODE = "M"
# Answers from a host that stopped before checking the MAC (PROFILE §3): they carry none and
# mean the host did nothing with the request.
NOT_PROCESSED_CODES = frozenset({"30", "03", "97"})
SIGN_IN_ATTEMPTS = 2
LOCK_FILE = "terminal.lock"
LOCK_WAIT_S = 5.0

EReceiptWriter = Callable[[Slip, Path], Path]

_PAN = re.compile(r"^\d{13,19}$")
_EXPIRY = re.compile(r"^\d{2}(0[1-9]|1[0-2])$")
_PIN = re.compile(r"^\d{4,12}$")
_TRACE = re.compile(r"^\d{1,6}$")
_RRN = re.compile(r"^[0-9A-Za-z]{12}$")
_MMDD = re.compile(r"^(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$")


class InputError(ValueError):
    """Something typed in (amount, card, expiry, PIN, trace) is not valid; the message says what
    to do. Raised before anything is journalled or sent."""


class TerminalError(RuntimeError):
    """An IO failure of the device itself (journal, disk), translated at the public boundary."""


def parse_pan(text: str) -> str:
    pan = text.strip().replace(" ", "")
    if not _PAN.match(pan):
        raise InputError("card number must be 13 to 19 digits: check the card and type it again")
    return pan


def parse_expiry(text: str) -> str:
    exp = text.strip()
    if not _EXPIRY.match(exp):
        raise InputError(f"expiry {text!r} is not YYMM (e.g. 3012 for December 2030): check the card")
    return exp


def parse_pin(text: str) -> str:
    if not _PIN.match(text):
        raise InputError("PIN must be 4 to 12 digits: ask the cardholder to enter it again")
    return text


def parse_trace(text: str) -> str:
    t = text.strip()
    if not _TRACE.match(t) or int(t) == 0:
        raise InputError(f"trace {text!r} is not a voucher number 000001..999999: read it off the slip")
    return t.zfill(6)


def parse_rrn(text: str) -> str:
    r = text.strip()
    if not _RRN.match(r):
        raise InputError(
            f"reference number {text!r} is not the 12-character RRN (参考号) of the slip: read it off"
        )
    return r


def parse_mmdd(text: str) -> str:
    d = text.strip()
    if not _MMDD.match(d):
        raise InputError(f"date {text!r} is not MMDD (e.g. 1129): the original slip's date")
    return d


def parse_batch(text: str) -> str:
    b = text.strip()
    if not _TRACE.match(b) or int(b) == 0:
        raise InputError(f"batch {text!r} is not a batch number 000001..999999: read it off the slip")
    return b.zfill(6)


def check_amount(amount_minor: int) -> int:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise InputError("amount must be an integer number of fen")
    if not 0 < amount_minor <= AMOUNT_MAX_MINOR:
        raise InputError("amount must be more than 0.00 and at most 9999999999.99 yuan")
    return amount_minor


@dataclass(frozen=True)
class Result:
    """What one terminal operation ended in. ``text`` is what the cashier's screen shows."""

    outcome: Outcome
    code: ResponseCode | None = None
    raw_code: str | None = None
    trace: str | None = None
    batch: str | None = None
    amount_minor: int | None = None
    rrn: str | None = None
    auth_code: str | None = None
    balance_minor: int | None = None
    receipt: ReceiptState | None = None
    e_receipt: Path | None = None
    detail: str = ""
    txn_id: int | None = None

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    @property
    def text(self) -> str:
        if self.outcome is Outcome.DECLINED:
            why = self.code.text if self.code is not None else (self.raw_code or "??")
            return f"{Outcome.DECLINED.text} — {why}" + (f" ({self.detail})" if self.detail else "")
        base = self.outcome.text
        return f"{base} ({self.detail})" if self.detail else base


# ---------------------------------------------------------------------------------------------
# pure helpers


def build_reversal(original: Message, reason: ReversalReason, auth_code: str | None = None) -> Message:
    """PROFILE §3 (see `builders.reversal`), with the terminal's typed reason."""
    return builders.reversal(original, reason.value, auth_code)


class VerdictKind:
    NOT_SENT = "not_sent"
    UNKNOWN = "unknown"
    APPROVED = "approved"
    DECLINED = "declined"
    RETRY_SAME = "retry_same"
    RESEND_NEW_STAN = "resend_new_stan"


@dataclass(frozen=True)
class Verdict:
    kind: str
    reason: ReversalReason | None = None  # for UNKNOWN
    code: str | None = None
    response: Message | None = None
    sign_in: bool = False  # the session must be renewed


@dataclass(frozen=True)
class Reply:
    status: LinkStatus
    response: Message | None = None
    raw: bytes = b""
    must_sign_in: bool = False
    matched: bool = True


def judge(request: Message, reply: Reply, mak: bytes) -> Verdict:
    """Classify the reply to a MAC'd request. Pure."""
    if reply.status is LinkStatus.NOT_SENT:
        return Verdict(VerdictKind.NOT_SENT)
    if reply.status is LinkStatus.NO_ANSWER:
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.NO_RESPONSE)
    resp = reply.response
    if resp is None or not reply.matched:
        if reply.raw and not mac_matches(reply.raw, mak):  # e.g. a MAC damaged past decoding
            return Verdict(VerdictKind.UNKNOWN, ReversalReason.MAC_FAILED, sign_in=True)
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.OTHER)
    code = resp.get("39") or ""
    if code == ResponseCode.SIGN_IN_AGAIN:  # the host stopped before the transaction: not processed
        return Verdict(VerdictKind.RESEND_NEW_STAN, code=code, response=resp, sign_in=True)
    if code == ResponseCode.MAC_FAILED:  # the host says so; reverse anyway, it could have been approved
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.MAC_FAILED, code, resp, sign_in=True)
    if not has_mac(reply.raw):
        if code in NOT_PROCESSED_CODES:
            return Verdict(VerdictKind.DECLINED, code=code, response=resp, sign_in=reply.must_sign_in)
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.MAC_FAILED, code, resp, sign_in=True)
    if not mac_matches(reply.raw, mak):
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.MAC_FAILED, code, resp, sign_in=True)
    if code == ResponseCode.APPROVED:
        return Verdict(VerdictKind.APPROVED, code=code, response=resp, sign_in=reply.must_sign_in)
    if code == ResponseCode.SYSTEM_MALFUNCTION:
        return Verdict(VerdictKind.RETRY_SAME, code=code, response=resp, sign_in=reply.must_sign_in)
    return Verdict(VerdictKind.DECLINED, code=code, response=resp, sign_in=reply.must_sign_in)


def response_code(code: str | None) -> ResponseCode | None:
    try:
        return ResponseCode(code) if code else None
    except ValueError:
        return None


def host_time(now: datetime, mmdd: str | None, hhmmss: str | None) -> datetime:
    """The host's date (13) and time (12) in the year nearest to the terminal's clock."""
    if not (mmdd and hhmmss and mmdd.isdigit() and hhmmss.isdigit()):
        return now.replace(microsecond=0)
    best: datetime | None = None
    for year in (now.year - 1, now.year, now.year + 1):
        try:
            cand = datetime(
                year, int(mmdd[:2]), int(mmdd[2:]), int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:])
            )
        except ValueError:
            continue
        if best is None or abs(cand - now) < abs(best - now):
            best = cand
    return best or now.replace(microsecond=0)


def parse_balance(f54: str | None) -> int | None:
    """Field 54: account type 2 + amount type 2 + currency 3 + sign C/D + n12."""
    if not f54 or len(f54) < 20 or not f54[8:20].isdigit():
        return None
    amount = int(f54[8:20])
    return -amount if f54[7] == "D" else amount


# What a refund's decline means for the cashier, beside the response code's own text.
REFUND_DECLINE_TEXT = {
    "61": "超出可退金额 exceeds what is left to refund of this sale: refund at most what is left",
    "64": "退货金额大于原交易金额 more than the original amount: check the amount",
    "12": "原交易已撤销或冲正，不能退货 the original was voided or reversed: nothing to refund",
    "25": "原交易不存在 original not found: check the RRN, date, trace and batch on the slip",
    "94": "重复交易 the host holds another request with this trace: call the acquirer",
}

_CAUSE_NOT_SENT = "无法连接主机 the host cannot be reached on either line"
_CAUSE_SIGN_IN = "签到失败 sign-in failed, so it could not be sent"
_CAUSE_NO_ANSWER = "主机无应答 no answer from the host in time"
_CAUSE_MAC = "应答校验失败 the answer failed its MAC check (keys renewed)"
_CAUSE_96 = "主机故障(96)，未处理 the host had a malfunction (96) and did nothing"
_CAUSE_77 = "需重新签到(77) the host asked for a new sign-in"
_CAUSE_OTHER = "应答不可用 the answer could not be read"
_CAUSE_BATCH_CLOSED = (
    "批次已由主机关闭 the host has moved to a new batch: call the acquirer with the trace to confirm"
)


def _refund_cause(verdict: Verdict) -> str:
    """Why a refund's (or settlement's) outcome is not known, for the cashier and the alert."""
    if verdict.kind == VerdictKind.NOT_SENT:
        return _CAUSE_NOT_SENT
    if verdict.kind == VerdictKind.RETRY_SAME:
        return _CAUSE_96
    if verdict.kind == VerdictKind.RESEND_NEW_STAN:
        return _CAUSE_77
    if verdict.reason is ReversalReason.NO_RESPONSE:
        return _CAUSE_NO_ANSWER
    if verdict.reason is ReversalReason.MAC_FAILED:
        return _CAUSE_MAC
    return _CAUSE_OTHER


def _settlement_summary(
    batch: str, totals: SettlementTotals, host48: str, balanced: bool, uploaded: int, next_batch: str
) -> str:
    ours = (
        f"借记 DEBITS {totals.debit_count} 笔 RMB {format_yuan(totals.debit_minor)}, "
        f"贷记 CREDITS {totals.credit_count} 笔 RMB {format_yuan(totals.credit_minor)}"
    )
    text = f"批次 BATCH {batch}: 终端 TERMINAL {ours}"
    try:
        host: SettlementTotals | None = SettlementTotals.parse(host48)
    except DecodeError:
        host = None
    if host is not None and not balanced:
        text += (
            f"; 主机 HOST 借记 DEBITS {host.debit_count} 笔 RMB {format_yuan(host.debit_minor)}, "
            f"贷记 CREDITS {host.credit_count} 笔 RMB {format_yuan(host.credit_minor)}"
            f"; 上送 UPLOADED {uploaded} 笔 items"
        )
    return text + f"; 新批次 NEXT BATCH {next_batch}"


def _default_e_receipt_writer(slip: Slip, directory: Path) -> Path:
    module = importlib.import_module("tillroll.terminal.ereceipt")
    path: Path = module.write_e_receipt(slip, directory)
    return path


def _boundary(fn: Callable[P, R]) -> Callable[P, R]:
    """The one place where the device's own IO failures become :class:`TerminalError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise TerminalError(
                f"the journal cannot be read or written ({type(exc).__name__}): check the disk; "
                "pending reversals stay in the journal"
            ) from exc
        except OSError as exc:
            raise TerminalError(f"device IO failed ({type(exc).__name__}): {exc.strerror or exc}") from exc

    return wrapper


class _DeviceLock:
    """One Terminal per data dir at a time (two cashier commands at once would each take the
    other's in-flight entry for an interrupted one). Waits at most ``wait_s``."""

    def __init__(self, path: Path, wait_s: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.release()
                    raise TerminalError(
                        f"another `tillroll pos` command is using the terminal in {path.parent}: "
                        "wait for it to finish, then try again"
                    ) from None
                time.sleep(0.05)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


# ---------------------------------------------------------------------------------------------
# the terminal


class Terminal:
    """One POS terminal over its data dir. Not thread-safe: one cashier at a time."""

    def __init__(
        self,
        config: TerminalConfig,
        data_dir: Path,
        *,
        clock: Clock | None = None,
        printer: Printer | None = None,
        link: HostLink | None = None,
        socket_factory: SocketFactory | None = None,
        e_receipt_writer: EReceiptWriter | None = None,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.clock: Clock = clock or SystemClock()
        self._lock = _DeviceLock(self.data_dir / LOCK_FILE)
        try:
            self.journal = Journal(self.data_dir / JOURNAL_FILE, device_keystore(self.data_dir))
            if printer is None and config.printer_url:
                printer = open_printer(
                    config.printer_url,
                    timeout_s=config.printer_timeout_s,
                    width_cols=config.printer_width_cols,
                )
            self.printer = printer
            self.link: HostLink = link or TcpHostLink(
                config.host.pair,
                config.backup_host.pair if config.backup_host else None,
                connect_timeout_s=config.connect_timeout_s,
                response_timeout_s=config.response_timeout_s,
                socket_factory=socket_factory,
            )
            self._write_e_receipt: EReceiptWriter = e_receipt_writer or _default_e_receipt_writer
            self._session: Session | None = self.journal.load_session()
        except BaseException:
            self._lock.release()
            raise

    @classmethod
    def open(cls, data_dir: Path, **kwargs: Any) -> Terminal:
        """The terminal set up in ``data_dir`` by ``tillroll pos init``."""
        return cls(load_config(Path(data_dir)), Path(data_dir), **kwargs)

    def close(self) -> None:
        try:
            self.link.close()
            self.journal.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Terminal(tid={self.config.tid}, dir={self.data_dir})"

    # --- public operations ------------------------------------------------------------------

    @property
    def _station(self) -> builders.Station:
        return builders.Station(self.config.tid, self.config.mid)

    @property
    def batch(self) -> str:
        return self._session.batch if self._session else self.journal.batch()

    @property
    def signed_in(self) -> bool:
        return self._session is not None and not self._session_due(self._session)

    @_boundary
    def sign_in(self) -> Result:
        return self._sign_in()

    @_boundary
    def sign_out(self) -> Result:
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
        msg = builders.sign_out(self._station, stan, self.batch)
        reply = self._exchange(msg, mak=None)
        self._drop_session()
        if reply.status is LinkStatus.NOT_SENT:
            return Result(Outcome.HOST_UNREACHABLE, trace=stan, detail="signed out locally")
        if reply.response is None:
            return Result(Outcome.NO_ANSWER, trace=stan, detail="signed out locally")
        code = reply.response.get("39")
        if code != ResponseCode.APPROVED:
            return Result(Outcome.DECLINED, response_code(code), code, trace=stan)
        return Result(Outcome.DONE, response_code(code), code, trace=stan, detail="签退 signed out")

    @_boundary
    def balance(self, pan: str, expiry_yymm: str, pin: str) -> Result:
        pan, expiry, pin = parse_pan(pan), parse_expiry(expiry_yymm), parse_pin(pin)
        blocked = self._prepare()
        if blocked is not None:
            return blocked

        def build(stan: str, session: Session) -> Message:
            pin_block = encrypt_pin_block(session.keys.pik, pin, pan)
            return builders.balance_inquiry(
                self._station, stan, session.batch, pan=pan, expiry=expiry, pin_block=pin_block
            )

        return self._financial(TxnKind.BALANCE, build)

    @_boundary
    def sale(self, amount_minor: int, pan: str, expiry_yymm: str, pin: str | None = None) -> Result:
        amount = check_amount(amount_minor)
        pan, expiry = parse_pan(pan), parse_expiry(expiry_yymm)
        pin = parse_pin(pin) if pin is not None else None
        blocked = self._prepare()
        if blocked is not None:
            return blocked

        def build(stan: str, session: Session) -> Message:
            pin_block = encrypt_pin_block(session.keys.pik, pin, pan) if pin else None
            return builders.sale(
                self._station,
                stan,
                session.batch,
                amount_minor=amount,
                pan=pan,
                expiry=expiry,
                pin_block=pin_block,
            )

        return self._financial(TxnKind.SALE, build)

    @_boundary
    def void(self, trace: str) -> Result:
        stan_orig = parse_trace(trace)
        blocked = self._prepare()
        if blocked is not None:
            return blocked
        assert self._session is not None
        orig = self.journal.find(kind=TxnKind.SALE, stan=stan_orig, batch=self._session.batch)
        if orig is None or orig.state is not TxnState.APPROVED:
            why = "no approved sale with that trace in the current batch"
            if orig is not None and orig.state is TxnState.VOIDED:
                why = "that sale is already voided"
            return Result(Outcome.NOT_FOUND, trace=stan_orig, detail=why)

        def build(stan: str, session: Session) -> Message:
            return builders.void(
                self._station,
                stan,
                session.batch,
                pan=orig.pan,
                amount_minor=orig.amount_minor or 0,
                rrn=orig.rrn or "",
                auth_code=orig.auth_code or "",
                original=Field61(orig.batch, orig.stan, orig.host_date or "0000"),
            )

        return self._financial(TxnKind.VOID, build, orig=orig)

    @_boundary
    def refund(
        self,
        amount_minor: int,
        rrn: str,
        date_mmdd: str,
        *,
        trace: str | None = None,
        batch: str | None = None,
        pan: str | None = None,
        expiry: str | None = None,
    ) -> Result:
        """Refund (退货, 0220) of a sale named by its RRN and date (field 13 of its answer).

        When the sale is in this journal its card, trace and batch come from there; otherwise
        ``trace`` and ``batch`` (and, for the slip, ``pan``/``expiry``) are read off its slip."""
        amount = check_amount(amount_minor)
        orig_rrn, orig_date = parse_rrn(rrn), parse_mmdd(date_mmdd)
        stan_orig = parse_trace(trace) if trace is not None else None
        batch_orig = parse_batch(batch) if batch is not None else None
        card = parse_pan(pan) if pan is not None else None
        exp = parse_expiry(expiry) if expiry is not None else None
        orig = self.journal.find_sale_by_rrn(orig_rrn)
        if orig is not None:
            for given, ours, what in (
                (stan_orig, orig.stan, "trace"),
                (batch_orig, orig.batch, "batch"),
                (orig_date, orig.host_date or orig_date, "date"),
                (card, orig.pan, "card"),
            ):
                if given is not None and given != ours:
                    raise InputError(
                        f"the sale with RRN {orig_rrn} in this terminal's journal has another {what}: "
                        "check the slip and type it again"
                    )
            stan_orig, batch_orig, card, exp = orig.stan, orig.batch, orig.pan, orig.expiry
        elif stan_orig is None or batch_orig is None:
            raise InputError(
                f"the sale with RRN {orig_rrn} is not in this terminal's journal: give its trace and "
                "batch from the slip (--trace, --batch)"
            )
        open_before = self.journal.open_refunds(orig_rrn)
        if open_before:
            # An earlier refund of this sale is unfinished: finish it, never start a second one.
            self._retry_open_refunds(open_before)
            if self.journal.open_refunds(orig_rrn):
                return Result(Outcome.REFUND_BLOCKED, rrn=orig_rrn, amount_minor=amount)
        blocked = self._prepare()
        if blocked is not None:
            return blocked
        assert self._session is not None
        now = self.clock.now()
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
            request = builders.refund(
                self._station,
                stan,
                self._session.batch,
                amount_minor=amount,
                rrn=orig_rrn,
                original=Field61(batch_orig, stan_orig, orig_date),
                pan=card,
            )
            txn_id = self.journal.record_request(
                conn,
                kind=TxnKind.REFUND,
                request=request,
                entry_mode=SLIP_ENTRY_MODE,
                operator=self.config.operator,
                now=now,
                orig_txn_id=orig.id if orig else None,
            )
            if exp:
                self.journal.set_values(conn, txn_id, now, expiry=exp)
        # Committed: the refund is durable before the first byte; from here it is never dropped.
        return self._submit_refund(txn_id)

    def _submit_refund(self, txn_id: int) -> Result:
        """Send a journalled refund, repeating the same request while its outcome is unknown."""
        entry = self.journal.get(txn_id)
        msg = entry.request
        stan = entry.stan
        if entry.state is RefundState.SUBMITTED:  # left in flight (a crash, a journal failure)
            self._refund_unknown(txn_id, "interrupted in flight")
            self.journal.alert(
                "interrupted",
                f"refund trace {stan} was in flight: sending it again",
                self.clock.now(),
                txn_id,
            )
        cause = _CAUSE_NOT_SENT
        tries = self.config.refund_retries_max + 1
        for attempt in range(tries):
            if attempt:
                self.clock.sleep(self.config.retry_backoff_s * attempt)
            if not self._ensure_session():
                cause = _CAUSE_SIGN_IN
                self._refund_unknown(txn_id, cause)
                continue
            session = self._session
            assert session is not None
            if session.batch != entry.batch:
                # The host moved to another batch: this key cannot be sent again (PROFILE §6).
                cause = _CAUSE_BATCH_CLOSED
                break
            with self.journal.begin() as conn:
                self.journal.move_refund(conn, txn_id, RefundState.SUBMITTED, self.clock.now())
            reply = self._exchange(msg, mak=session.keys.mak)
            verdict = judge(msg, reply, session.keys.mak)
            if verdict.sign_in:
                self._drop_session()
            if verdict.kind == VerdictKind.APPROVED:
                assert verdict.response is not None
                return self._approve_refund(txn_id, verdict.response)
            if verdict.kind == VerdictKind.DECLINED:
                code = verdict.code
                with self.journal.begin() as conn:
                    self.journal.move_refund(
                        conn, txn_id, RefundState.DECLINED, self.clock.now(), response_code=code
                    )
                return Result(
                    Outcome.DECLINED,
                    response_code(code),
                    code,
                    trace=stan,
                    batch=entry.batch,
                    amount_minor=entry.amount_minor,
                    detail=REFUND_DECLINE_TEXT.get(code or "", ""),
                    txn_id=txn_id,
                )
            cause = _refund_cause(verdict)
            self._refund_unknown(txn_id, cause, verdict.code)
            log.warning("refund trace %s: %s (try %d of %d)", stan, cause, attempt + 1, tries)
        self._refund_unknown(txn_id, cause)
        self.journal.alert(
            "refund_unknown",
            f"refund trace {stan} batch {entry.batch} of RRN {msg.get('37')} "
            f"({format_yuan(entry.amount_minor or 0)}) outcome unknown: {cause}. It is kept and sent "
            "again, the same request, by `tillroll pos recover` and before settlement",
            self.clock.now(),
            txn_id,
        )
        return Result(
            Outcome.REFUND_UNKNOWN,
            trace=stan,
            batch=entry.batch,
            amount_minor=entry.amount_minor,
            detail=f"原因 cause: {cause}",
            txn_id=txn_id,
        )

    def _refund_unknown(self, txn_id: int, cause: str, code: str | None = None) -> None:
        with self.journal.begin() as conn:
            current = self.journal.get(txn_id, conn).state
            if current is not RefundState.UNKNOWN:
                self.journal.move_refund(conn, txn_id, RefundState.UNKNOWN, self.clock.now(), note=cause)
            else:
                self.journal.set_values(conn, txn_id, self.clock.now(), note=cause)
            if code is not None:
                self.journal.set_values(conn, txn_id, self.clock.now(), response_code=code[:2])

    def _approve_refund(self, txn_id: int, resp: Message) -> Result:
        now = self.clock.now()
        f63, f44 = resp.get("63") or "", resp.get("44") or ""
        with self.journal.begin() as conn:
            self.journal.move_refund(
                conn,
                txn_id,
                RefundState.APPROVED,
                now,
                response_code=ResponseCode.APPROVED.value,
                rrn=resp.get("37") or None,
                auth_code=resp.get("38") or None,
                host_date=resp.get("13"),
                host_time=resp.get("12"),
                issuer=f63[3:].strip()[:40] or None,
                acquirer=f44[11:].strip()[:40] or None,
                approved_at=host_time(now, resp.get("13"), resp.get("12")),
                note=None,
            )
        entry = self.journal.get(txn_id)
        receipt, e_receipt = self._issue_receipt(entry)
        return Result(
            Outcome.APPROVED,
            ResponseCode.APPROVED,
            "00",
            trace=entry.stan,
            batch=entry.batch,
            amount_minor=entry.amount_minor,
            rrn=entry.rrn,
            auth_code=entry.auth_code,
            receipt=receipt,
            e_receipt=e_receipt,
            txn_id=txn_id,
        )

    def _retry_open_refunds(self, entries: list[Entry] | None = None) -> list[Result]:
        """Send every open refund again (the same request each); returns their results."""
        return [self._submit_refund(e.id) for e in (entries or self.journal.open_refunds())]

    def open_refunds(self) -> list[Entry]:
        return self.journal.open_refunds()

    # --- settlement -------------------------------------------------------------------------

    @_boundary
    def settle(self) -> Result:
        """End of day: 0500 with the journal's totals; batch upload when not balanced; then the
        next batch and a new sign-in."""
        blocked = self._prepare()
        if blocked is not None:
            if blocked.outcome is Outcome.BLOCKED_BY_REVERSAL:
                return Result(Outcome.SETTLEMENT_BLOCKED, detail="冲正待发送 a reversal is pending")
            return blocked
        if self.journal.open_refunds():
            self._retry_open_refunds()
            still = len(self.journal.open_refunds())
            if still:
                return Result(Outcome.SETTLEMENT_BLOCKED, detail=f"{still} 笔退货未完成 refund(s) still open")
            if not self._ensure_session():
                return Result(Outcome.SIGN_IN_FAILED, detail="nothing was sent")
        assert self._session is not None
        batch = self._session.batch
        previous = self.journal.open_settlement(batch)
        if previous is not None:  # unanswered before: repeat the same request
            sid, msg, totals = previous.id, previous.request, previous.totals
        else:
            totals = self.journal.totals(batch)
            now = self.clock.now()
            with self.journal.begin() as conn:
                stan = self.journal.next_stan(conn)
                msg = builders.settlement(self._station, stan, batch, totals, self.config.operator)
                sid = self.journal.record_settlement(conn, msg, totals, now)
        resp, cause = self._send_settlement(msg, batch)
        now = self.clock.now()
        if resp is None:
            closed = cause == _CAUSE_BATCH_CLOSED
            if closed:
                with self.journal.begin() as conn:
                    self.journal.move_settlement(
                        conn, sid, SettlementState.UNKNOWN, now, note=cause, next_batch=self.batch
                    )
            else:
                self.journal.set_settlement_values(sid, now, note=cause)
            self.journal.alert(
                "settlement_unknown",
                f"settlement of batch {batch} (trace {msg['11']}) not answered: {cause}"
                + ("" if not closed else "; the acquirer has the comparison of the totals"),
                now,
            )
            return Result(
                Outcome.SETTLEMENT_UNKNOWN, trace=msg["11"], batch=batch, detail=f"原因 cause: {cause}"
            )
        code = resp.get("39") or ""
        if code != ResponseCode.APPROVED:
            with self.journal.begin() as conn:
                self.journal.move_settlement(
                    conn, sid, SettlementState.DECLINED, now, note=f"answered {code}"
                )
            return Result(Outcome.DECLINED, response_code(code), code, trace=msg["11"], batch=batch)
        host48 = resp.get("48") or ""
        try:
            balanced = settlement_flag(host48) is SettlementFlag.BALANCED
        except DecodeError:
            balanced = False
        with self.journal.begin() as conn:
            self.journal.move_settlement(
                conn,
                sid,
                SettlementState.BALANCED if balanced else SettlementState.NOT_BALANCED,
                now,
                host_totals=host48[:62],
            )
        uploaded = 0
        upload_note = ""
        if not balanced:
            uploaded, upload_note = self._batch_upload(sid, batch)
        next_batch = self._next_batch(sid, batch)
        summary = _settlement_summary(batch, totals, host48, balanced, uploaded, next_batch)
        if upload_note:
            summary += f"; {upload_note}"
        return Result(
            Outcome.SETTLED if balanced else Outcome.SETTLED_NOT_BALANCED,
            ResponseCode.APPROVED,
            "00",
            trace=msg["11"],
            batch=batch,
            detail=summary,
        )

    def _send_settlement(self, msg: Message, batch: str) -> tuple[Message | None, str]:
        """The verified 0510 (any code), or None and the cause. Repeats the same request."""
        cause = _CAUSE_NOT_SENT
        tries = self.config.refund_retries_max + 1
        for attempt in range(tries):
            if attempt:
                self.clock.sleep(self.config.retry_backoff_s * attempt)
            if not self._ensure_session():
                cause = _CAUSE_SIGN_IN
                continue
            session = self._session
            assert session is not None
            if session.batch != batch:
                # Signed in again and the host names another batch: it closed ours already
                # (a 0510 we never saw). The batch can no longer be uploaded.
                return None, _CAUSE_BATCH_CLOSED
            reply = self._exchange(msg, mak=session.keys.mak)
            verdict = judge(msg, reply, session.keys.mak)
            if verdict.sign_in:
                self._drop_session()
            if verdict.kind in (VerdictKind.APPROVED, VerdictKind.DECLINED):
                assert verdict.response is not None
                return verdict.response, ""
            cause = _refund_cause(verdict)
        return None, cause

    def _batch_upload(self, sid: int, batch: str) -> tuple[int, str]:
        """0320 items (60.3 201) and the end message (202); returns items the host took."""
        items = self.journal.batch_items(batch)
        sent = 0
        for i in range(0, len(items), UPLOAD_ITEMS_MAX):
            chunk = items[i : i + UPLOAD_ITEMS_MAX]
            upload = [
                UploadItem(stan=e.stan, pan=e.pan or "0", amount_minor=e.amount_minor or 0) for e in chunk
            ]
            if not self._upload(
                functools.partial(builders.batch_upload, self._station, batch=batch, items=upload)
            ):
                note = f"batch upload stopped after {sent} of {len(items)} items"
                self.journal.set_settlement_values(sid, self.clock.now(), items_uploaded=sent, note=note)
                self.journal.alert("batch_upload", f"batch {batch}: {note}", self.clock.now())
                return sent, note
            sent += len(chunk)
        now = self.clock.now()
        total = len(items)
        if not self._upload(
            lambda stan: builders.batch_upload_end(self._station, stan, batch, total, balanced=False)
        ):
            note = f"end of batch upload not answered ({sent} items sent)"
            self.journal.set_settlement_values(sid, now, items_uploaded=sent, note=note)
            self.journal.alert("batch_upload", f"batch {batch}: {note}", now)
            return sent, note
        with self.journal.begin() as conn:
            self.journal.move_settlement(conn, sid, SettlementState.UPLOADED, now, items_uploaded=sent)
        return sent, ""

    def _upload(self, build: Callable[[str], Message]) -> bool:
        """Send one 0320 (built for a new STAN) in the closed batch's session."""
        session = self._session
        if session is None:
            return False
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
        msg = build(stan)
        for attempt in range(self.config.refund_retries_max + 1):
            if attempt:
                self.clock.sleep(self.config.retry_backoff_s * attempt)
            reply = self._exchange(msg, mak=session.keys.mak)  # the closed batch's session
            verdict = judge(msg, reply, session.keys.mak)
            if verdict.kind == VerdictKind.APPROVED:
                return True
            if verdict.kind == VerdictKind.DECLINED or verdict.sign_in:
                return False
        return False

    def _next_batch(self, sid: int, batch: str) -> str:
        """After settlement: the next batch number, a new sign-in (the host's word wins)."""
        now = self.clock.now()
        with self.journal.begin() as conn:
            self.journal.set_batch(conn, f"{int(batch) % 999_999 + 1:06d}")
        self._drop_session()
        signed = self._sign_in()
        if signed.outcome is not Outcome.DONE:
            self.journal.alert(
                "sign_in_after_settlement", f"sign-in after settling batch {batch} failed: {signed.text}", now
            )
        next_batch = self.journal.batch()
        self.journal.set_settlement_values(sid, now, next_batch=next_batch)
        return next_batch

    def settlements(self, limit: int = 100) -> list[Settlement]:
        return self.journal.settlements(limit)

    @_boundary
    def recover(self) -> Result:
        """Settle anything left in flight, send every pending reversal now, then every open
        refund again (the same request each)."""
        self._recover_in_flight()
        pending = self.journal.pending_reversals()
        refunds = self.journal.open_refunds()
        if not pending and not refunds:
            return Result(Outcome.DONE, detail="no pending reversals or refunds / 无待冲正、待退货交易")
        if not self._ensure_session():
            return Result(
                Outcome.SIGN_IN_FAILED,
                detail=f"{len(pending)} reversal(s), {len(refunds)} refund(s) still pending",
            )
        remaining = self._flush_reversals() if pending else 0
        sent = len(pending) - remaining
        if remaining:
            return Result(Outcome.REVERSAL_PENDING, detail=f"{sent} reversed, {remaining} still pending")
        results = self._retry_open_refunds(refunds) if refunds else []
        open_left = [r for r in results if r.outcome is Outcome.REFUND_UNKNOWN]
        done = f"{sent} reversal(s), {len(results) - len(open_left)} refund(s) finished"
        if open_left:
            still = f"{len(open_left)} refund(s) still open — {open_left[0].detail}"
            return Result(Outcome.REFUND_UNKNOWN, detail=f"{done}; {still}")
        declined = [r for r in results if r.outcome is Outcome.DECLINED]
        if declined:
            done += f" ({len(declined)} declined: {declined[0].text})"
        return Result(Outcome.DONE, detail=f"{done} / 冲正、退货完成")

    @_boundary
    def reprint(self, trace: str | None = None) -> Result:
        """Print the slips of the approval with that trace (the last one when None), marked
        REPRINT; an owed receipt is cleared when it prints."""
        stan = parse_trace(trace) if trace is not None else None
        entry = self.journal.find_receipted(stan)
        if entry is None:
            return Result(Outcome.NOT_FOUND, trace=stan, detail="no approved transaction to reprint")
        slip = self.slip_for(entry)
        res = self._print(slip, reprint=True)
        if res is not None:
            return Result(Outcome.PRINT_FAILED, trace=entry.stan, receipt=entry.receipt, detail=res)
        self.journal.set_receipt(entry.id, ReceiptState.PRINTED, self.clock.now())
        return Result(
            Outcome.DONE,
            trace=entry.stan,
            batch=entry.batch,
            amount_minor=entry.amount_minor,
            receipt=ReceiptState.PRINTED,
            detail="重打印 reprinted",
            txn_id=entry.id,
        )

    def entries(self, limit: int = 200) -> list[Entry]:
        return self.journal.entries(limit)

    def alerts(self, limit: int = 100) -> list[Alert]:
        return self.journal.alerts(limit)

    def pending_reversals(self) -> list[Entry]:
        return self.journal.pending_reversals()

    # --- sessions ---------------------------------------------------------------------------

    def _session_due(self, session: Session) -> bool:
        age_s = (self.clock.now() - session.signed_in_at).total_seconds()
        return age_s >= self.config.refresh_after_s or age_s < -self.config.sign_in_margin_s

    def _ensure_session(self) -> bool:
        if self._session is not None and not self._session_due(self._session):
            return True
        return self._sign_in().outcome is Outcome.DONE

    def _drop_session(self) -> None:
        self._session = None
        self.journal.clear_session()

    def _sign_in(self) -> Result:
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
        msg = builders.sign_in(
            self._station, stan, self.journal.batch(), self.config.operator, mode=self.config.sign_in_mode
        )
        reply = Reply(LinkStatus.NOT_SENT)
        for _ in range(SIGN_IN_ATTEMPTS):  # a sign-in is safe to repeat: every one issues new keys
            reply = self._exchange(msg, mak=None)
            if reply.status is LinkStatus.ANSWERED:
                break
        if reply.status is LinkStatus.NOT_SENT:
            return Result(Outcome.HOST_UNREACHABLE, trace=stan, detail="sign-in not sent")
        resp = reply.response
        if resp is None or not reply.matched:
            return Result(Outcome.SIGN_IN_FAILED, trace=stan, detail="no answer to the sign-in")
        code = resp.get("39")
        if code != ResponseCode.APPROVED:
            return Result(
                Outcome.SIGN_IN_FAILED, response_code(code), code, trace=stan, detail=f"host answered {code}"
            )
        now = self.clock.now()
        try:
            keys = unwrap_working_keys(self.config.tmk, bytes.fromhex(resp.get("62") or ""))
            batch = Field60.parse(resp.get("60") or "").batch
        except (KeyCheckError, ValueError) as exc:
            self.journal.alert("sign_in_keys", f"sign-in keys rejected, not used: {exc}", now)
            return Result(
                Outcome.SIGN_IN_FAILED,
                trace=stan,
                detail="the working keys' check values are wrong: keys not used; check the TMK",
            )
        self.journal.save_session(batch, keys, now)
        self._session = Session(batch=batch, keys=keys, signed_in_at=now)
        log.info("terminal %s signed in, batch %s", self.config.tid, batch)
        return Result(
            Outcome.DONE, ResponseCode.APPROVED, code, trace=stan, batch=batch, detail="签到成功 signed in"
        )

    # --- the wire ---------------------------------------------------------------------------

    def _exchange(self, msg: Message, mak: bytes | None) -> Reply:
        raw = sign(msg, mak) if mak is not None else pack(msg)
        res = self.link.exchange(raw)
        if res.status is not LinkStatus.ANSWERED or res.frame is None:
            return Reply(res.status)
        try:
            resp = unpack(res.frame.message)
        except CodecError:
            self.link.close()
            return Reply(LinkStatus.ANSWERED, None, res.frame.message, res.frame.must_sign_in, matched=False)
        expected_mti = Mti(msg.mti).response.value
        matched = (
            resp.mti == expected_mti and resp.get("11") == msg.get("11") and resp.get("41") == msg.get("41")
        )
        if not matched:
            self.link.close()  # out of step: start afresh on a new connection
        return Reply(LinkStatus.ANSWERED, resp, res.frame.message, res.frame.must_sign_in, matched)

    # --- preparing a transaction ------------------------------------------------------------

    def _recover_in_flight(self) -> None:
        """Entries left PENDING/SENT by a process that died: a sale/void becomes UNKNOWN (its
        reversal 06 is already pending); an inquiry is forgotten. Approvals whose receipt step
        never ran are marked owed, with an e-receipt."""
        now = self.clock.now()
        for entry in self.journal.in_flight():
            with self.journal.begin() as conn:
                if entry.kind is TxnKind.BALANCE:
                    self.journal.move(conn, entry.id, TxnState.NOT_PROCESSED, now, note="interrupted")
                else:
                    self.journal.move(conn, entry.id, TxnState.UNKNOWN, now, note="interrupted in flight")
            if entry.kind is not TxnKind.BALANCE:
                self.journal.alert(
                    "interrupted", f"trace {entry.stan} was in flight: reversal 06 due", now, entry.id
                )
        for entry in self.journal.approved_without_receipt():
            self._owe_receipt(entry, "the receipt step did not run")

    def _prepare(self) -> Result | None:
        """Before a new transaction: settle the journal, sign in if due, send pending reversals.
        Returns a result when the transaction must not start."""
        self._recover_in_flight()
        if not self._ensure_session():
            return Result(Outcome.SIGN_IN_FAILED, detail="nothing was sent")
        if self.journal.pending_reversals() and self._flush_reversals():
            return Result(Outcome.BLOCKED_BY_REVERSAL)
        if not self._ensure_session():
            return Result(Outcome.SIGN_IN_FAILED, detail="nothing was sent")
        return None

    # --- a financial transaction ------------------------------------------------------------

    def _financial(
        self, kind: TxnKind, build: Callable[[str, Session], Message], orig: Entry | None = None
    ) -> Result:
        resends = 0
        while True:
            session = self._session
            assert session is not None
            now = self.clock.now()
            with self.journal.begin() as conn:
                stan = self.journal.next_stan(conn)
                msg = build(stan, session)
                txn_id = self.journal.record_request(
                    conn,
                    kind=kind,
                    request=msg,
                    entry_mode=SLIP_ENTRY_MODE,
                    operator=self.config.operator,
                    now=now,
                    orig_txn_id=orig.id if orig else None,
                )
                self.journal.move(conn, txn_id, TxnState.SENT, now)
            # Committed: the request and its pending reversal are durable before the first byte.
            result = self._send_recorded(kind, txn_id, msg, session, orig)
            if result is not None:
                return result
            # The host did not process it (77): sign in, send again with a new STAN.
            if resends >= self.config.resend_max:
                return Result(Outcome.DECLINED, ResponseCode.SIGN_IN_AGAIN, "77", trace=stan, txn_id=txn_id)
            resends += 1
            signed = self._sign_in()
            if signed.outcome is not Outcome.DONE:
                return Result(Outcome.SIGN_IN_FAILED, trace=stan, detail="nothing was charged", txn_id=txn_id)

    def _send_recorded(
        self, kind: TxnKind, txn_id: int, msg: Message, session: Session, orig: Entry | None
    ) -> Result | None:
        """Send a journalled request; None means "not processed by the host: send a new one"."""
        has_reversal = kind is not TxnKind.BALANCE
        retries_96 = 0
        stan = msg["11"]
        while True:
            reply = self._exchange(msg, mak=session.keys.mak)
            verdict = judge(msg, reply, session.keys.mak)
            if verdict.kind == VerdictKind.RETRY_SAME and retries_96 < self.config.retry_96_max:
                retries_96 += 1
                continue
            break
        now = self.clock.now()
        code = verdict.code
        if verdict.sign_in:
            self._drop_session()

        if verdict.kind == VerdictKind.NOT_SENT:
            self._finish_unsent(txn_id, has_reversal, now, "no line could be opened")
            return Result(Outcome.HOST_UNREACHABLE, trace=stan, txn_id=txn_id)

        if verdict.kind == VerdictKind.RESEND_NEW_STAN:
            self._finish_unsent(txn_id, has_reversal, now, f"host answered {code or 'sign in again'}", code)
            log.info("trace %s not processed (%s): signing in and sending again", stan, code)
            return None

        if verdict.kind == VerdictKind.UNKNOWN:
            assert verdict.reason is not None
            if not has_reversal:
                with self.journal.begin() as conn:
                    self.journal.move(
                        conn,
                        txn_id,
                        TxnState.NOT_PROCESSED,
                        now,
                        response_code=code,
                        note="no verified answer",
                    )
                return Result(Outcome.NO_ANSWER, trace=stan, txn_id=txn_id)
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.UNKNOWN, now, response_code=code)
                self.journal.set_reversal_reason(conn, txn_id, verdict.reason, now)
            log.warning("trace %s outcome unknown: reversal %s", stan, verdict.reason.value)
            return self._reverse_now(txn_id, stan, verdict.reason)

        if verdict.kind in (VerdictKind.DECLINED, VerdictKind.RETRY_SAME):
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.DECLINED, now, response_code=code)
                if has_reversal:
                    self.journal.end_reversal(conn, txn_id, ReversalState.CANCELLED, now)
            return Result(Outcome.DECLINED, response_code(code), code, trace=stan, txn_id=txn_id)

        assert verdict.kind == VerdictKind.APPROVED and verdict.response is not None
        return self._approve(kind, txn_id, msg, verdict.response, orig)

    def _finish_unsent(
        self, txn_id: int, has_reversal: bool, now: datetime, note: str, code: str | None = None
    ) -> None:
        with self.journal.begin() as conn:
            self.journal.move(conn, txn_id, TxnState.NOT_PROCESSED, now, response_code=code, note=note)
            if has_reversal:
                self.journal.end_reversal(conn, txn_id, ReversalState.CANCELLED, now)

    def _approve(self, kind: TxnKind, txn_id: int, msg: Message, resp: Message, orig: Entry | None) -> Result:
        now = self.clock.now()
        stan = msg["11"]
        rrn, auth = resp.get("37") or "", resp.get("38") or ""
        usable = len(rrn) == 12 and (kind is TxnKind.BALANCE or len(auth) == 6)
        f63, f44 = resp.get("63") or "", resp.get("44") or ""
        values: dict[str, Any] = {
            "response_code": ResponseCode.APPROVED.value,
            "rrn": rrn or None,
            "auth_code": auth or None,
            "host_date": resp.get("13"),
            "host_time": resp.get("12"),
            "issuer": f63[3:].strip()[:40] or None,
            "acquirer": f44[11:].strip()[:40] or None,
            "balance_minor": parse_balance(resp.get("54")),
        }
        if kind is TxnKind.BALANCE:
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.APPROVED, now, **values)
            return Result(
                Outcome.APPROVED,
                ResponseCode.APPROVED,
                "00",
                trace=stan,
                balance_minor=values["balance_minor"],
                rrn=rrn,
                txn_id=txn_id,
            )
        if not usable:
            # Verified, but without the references a slip and a void need: cannot complete (96).
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.APPROVED, now, **values)
                self.journal.move(conn, txn_id, TxnState.REVERSAL_PENDING, now, note="approval unusable")
                self.journal.set_reversal_reason(conn, txn_id, ReversalReason.CANNOT_COMPLETE, now)
            return self._reverse_now(txn_id, stan, ReversalReason.CANNOT_COMPLETE)
        values["approved_at"] = host_time(now, resp.get("13"), resp.get("12"))
        try:
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.APPROVED, now, **values)
                if kind is TxnKind.VOID and orig is not None:
                    self.journal.move(conn, orig.id, TxnState.VOIDED, now)
                # After the approval is recorded (same commit): nothing left to undo.
                self.journal.end_reversal(conn, txn_id, ReversalState.CANCELLED, now)
        except SQLAlchemyError:
            log.exception("trace %s approved but the journal cannot record it: reversal 96", stan)
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.UNKNOWN, now, note="approval not recorded")
                self.journal.set_reversal_reason(conn, txn_id, ReversalReason.CANNOT_COMPLETE, now)
            return self._reverse_now(txn_id, stan, ReversalReason.CANNOT_COMPLETE)
        entry = self.journal.get(txn_id)
        receipt, e_receipt = self._issue_receipt(entry)
        return Result(
            Outcome.APPROVED,
            ResponseCode.APPROVED,
            "00",
            trace=stan,
            batch=entry.batch,
            amount_minor=entry.amount_minor,
            rrn=rrn,
            auth_code=auth,
            receipt=receipt,
            e_receipt=e_receipt,
            txn_id=txn_id,
        )

    # --- reversals --------------------------------------------------------------------------

    def _reverse_now(self, txn_id: int, stan: str, reason: ReversalReason) -> Result:
        entry = self.journal.get(txn_id)
        if self._send_reversal(entry):
            return Result(
                Outcome.REVERSED, trace=stan, detail=f"冲正原因 reason {reason.value}", txn_id=txn_id
            )
        return Result(
            Outcome.REVERSAL_PENDING, trace=stan, detail=f"冲正原因 reason {reason.value}", txn_id=txn_id
        )

    def _flush_reversals(self) -> int:
        """Send every pending reversal (bounded tries each); returns how many are still pending."""
        remaining = 0
        for entry in self.journal.pending_reversals():
            if not self._send_reversal(entry):
                remaining += 1
        return remaining

    def _send_reversal(self, entry: Entry) -> bool:
        assert entry.reversal_reason is not None
        last = "not sent"
        for _ in range(self.config.reversal_retries_max):
            if not self._ensure_session():
                last = "sign-in failed"
                continue
            session = self._session
            assert session is not None
            msg = build_reversal(entry.request, entry.reversal_reason, entry.auth_code)
            reply = self._exchange(msg, mak=session.keys.mak)
            now = self.clock.now()
            code = reply.response.get("39") if reply.response is not None else None
            self.journal.note_reversal_attempt(entry.id, code, now)
            verified = reply.matched and has_mac(reply.raw) and mac_matches(reply.raw, session.keys.mak)
            if reply.response is not None and verified and code == ResponseCode.APPROVED:
                self._reversal_done(entry, now)
                if reply.must_sign_in:
                    self._drop_session()
                return True
            if code in (ResponseCode.SIGN_IN_AGAIN, ResponseCode.MAC_FAILED) or reply.must_sign_in:
                self._drop_session()
            elif reply.response is not None and not verified:
                self._drop_session()  # a reply whose MAC fails: renew the keys before trying again
            last = reply.status.value if reply.response is None else f"answered {code}"
        self.journal.alert(
            "reversal_pending",
            f"reversal of trace {entry.stan} batch {entry.batch} (reason {entry.reversal_reason.value}) "
            f"still pending after {self.config.reversal_retries_max} tries ({last}): it will be sent "
            "again before the next transaction and on `tillroll pos recover`",
            self.clock.now(),
            entry.id,
        )
        log.warning("reversal of trace %s still pending (%s)", entry.stan, last)
        return False

    def _reversal_done(self, entry: Entry, now: datetime) -> None:
        with self.journal.begin() as conn:
            self.journal.end_reversal(conn, entry.id, ReversalState.DONE, now)
            current = self.journal.get(entry.id, conn)
            if current.state in (TxnState.PENDING, TxnState.SENT):
                self.journal.move(conn, entry.id, TxnState.UNKNOWN, now)
                current = self.journal.get(entry.id, conn)
            if current.state in (TxnState.UNKNOWN, TxnState.REVERSAL_PENDING):
                self.journal.move(conn, entry.id, TxnState.REVERSED, now)
            if (
                entry.kind is TxnKind.VOID
                and entry.orig_txn_id is not None
                and current.state is TxnState.REVERSAL_PENDING
            ):
                orig = self.journal.get(entry.orig_txn_id, conn)
                if orig.state is TxnState.VOIDED:  # the void is undone: the sale stands again
                    self.journal.move(conn, orig.id, TxnState.APPROVED, now)
        log.info("trace %s reversed", entry.stan)

    # --- receipts ---------------------------------------------------------------------------

    def slip_for(self, entry: Entry) -> Slip:
        """The slip of an approval, from its journal entry (never from the request sent)."""
        trans_type = {TxnKind.VOID: TransType.VOID, TxnKind.REFUND: TransType.REFUND}.get(
            entry.kind, TransType.SALE
        )
        expiry = entry.expiry
        reference = None
        if entry.kind is TxnKind.VOID and entry.orig_txn_id is not None:
            orig = self.journal.get(entry.orig_txn_id)
            expiry = orig.expiry
            reference = f"原凭证号 ORIG VOUCHER {orig.stan} 原参考号 ORIG REF {orig.rrn or ''}".strip()
        if entry.kind is TxnKind.REFUND:
            f61 = entry.request.get("61") or ""
            reference = f"原凭证号 ORIG VOUCHER {f61[6:12]} 原参考号 ORIG REF {entry.request.get('37') or ''}"
        return Slip(
            merchant_name=self.config.merchant_name or entry.request.get("42") or self.config.mid,
            mid=entry.request.get("42") or self.config.mid,
            tid=entry.request.get("41") or self.config.tid,
            operator=entry.operator,
            pan_masked=entry.pan_masked,
            entry_mode=entry.entry_mode,
            issuer=entry.issuer or "",
            acquirer=entry.acquirer or "",
            expiry_yymm=expiry,
            trans_type=trans_type,
            batch=entry.batch,
            trace=entry.stan,
            auth_code=entry.auth_code or "",
            rrn=entry.rrn or "",
            when=entry.approved_at or entry.created_at,
            amount_minor=entry.amount_minor or 0,
            currency=entry.request.get("49") or CURRENCY_CNY,
            reference=reference,
        )

    def _print(self, slip: Slip, *, reprint: bool) -> str | None:
        """Print both copies; None when printed, else why not."""
        if self.printer is None:
            return "no printer configured / 未配置打印机"
        try:
            status = self.printer.status()
        except OSError:
            status = PrinterStatus.OFFLINE
        if status is not PrinterStatus.READY:
            return status.message
        try:
            self.printer.print_slips([(slip, Copy.MERCHANT), (slip, Copy.CARDHOLDER)], reprint=reprint)
        except PrintError as exc:
            return str(exc)
        except OSError as exc:
            return f"printer IO failed: {type(exc).__name__}"
        return None

    def _issue_receipt(self, entry: Entry) -> tuple[ReceiptState, Path | None]:
        slip = self.slip_for(entry)
        why = self._print(slip, reprint=False)
        if why is None:
            self.journal.set_receipt(entry.id, ReceiptState.PRINTED, self.clock.now())
            return ReceiptState.PRINTED, None
        return ReceiptState.OWED, self._owe_receipt(entry, why, slip)

    def _owe_receipt(self, entry: Entry, why: str, slip: Slip | None = None) -> Path | None:
        """The sale stands; the receipt is owed; an e-receipt is written at once."""
        now = self.clock.now()
        slip = slip or self.slip_for(entry)
        path: Path | None = None
        try:
            path = self._write_e_receipt(slip, self.data_dir / E_RECEIPT_DIR)
        except Exception as exc:  # any writer failure leaves the receipt owed, with an alert
            self.journal.alert(
                "e_receipt_failed", f"e-receipt for trace {entry.stan} not written: {exc}", now, entry.id
            )
        self.journal.set_receipt(entry.id, ReceiptState.OWED, now, e_receipt_path=str(path) if path else None)
        self.journal.alert("receipt_owed", f"receipt for trace {entry.stan} owed: {why}", now, entry.id)
        log.warning(
            "receipt owed for trace %s (%s, %s): %s",
            entry.stan,
            mask_pan(entry.pan),
            format_yuan(entry.amount_minor or 0),
            why,
        )
        return path
