"""A live terminal engine inside the web process, for the cashier screen.

``tillroll web --terminal DATA_DIR`` runs the :class:`~tillroll.terminal.Terminal` of that data
dir in one worker thread (the engine is not thread-safe; the thread owns it, opening and closing
it, and holds the device lock while the web app runs). The screen's requests never wait on the
wire: :meth:`CashierEngine.submit` queues an operation and returns its :class:`Job` at once; the
page polls the job (htmx) until it leaves **in doubt** (处理中).

A job's screen state (:class:`ScreenState`, table :data:`SCREEN_TRANSITIONS`) is taken from the
engine's own outcome: approved → succeeded; declined, reversed, cancelled, not sent → not done;
an outcome the engine does not know yet (a reversal pending, a wallet order being cancelled, a
refund not answered) stays **in doubt**, and the worker resolves it with the engine's own
background steps (``reverse_step``, ``wallet_step``, ``recover``) between the cashier's
operations, every ``resolve_interval_s``, until the journal says how it ended. There is no "force
done": only the journal moves a job out of doubt.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from tillroll.clock import Clock, SystemClock
from tillroll.money import format_yuan
from tillroll.terminal import InputError, Outcome, Terminal, TerminalError, TxnKind, TxnState
from tillroll.terminal.config import load_config
from tillroll.terminal.printer import Printer, open_printer
from tillroll.terminal.result import Result
from tillroll.terminal.signature_print import Released, SignatureLookup, SignaturePrinter
from tillroll.terminal.states import RefundState
from tillroll.terminal.wallet_states import WalletState

log = logging.getLogger("tillroll.console.cashier")

QUEUE_MAX = 8  # operations waiting for the terminal; more is "busy"
JOBS_KEPT = 200  # finished jobs the screen can still show
STOP_TIMEOUT_S = 10.0
FACTS_INTERVAL_S = 5.0  # facts still due are relayed again this often between operations


class ScreenState(enum.StrEnum):
    IN_DOUBT = "in_doubt"  # 处理中: queued, on the wire, or its outcome being resolved
    SUCCEEDED = "succeeded"  # 成功: the money moved as asked (or the slip printed)
    NOT_DONE = "not_done"  # 未成功: declined, reversed, cancelled, not sent — nothing kept
    REFUSED = "refused"  # 未受理: the input or the device refused it before anything was sent


SCREEN_TRANSITIONS: Mapping[ScreenState, frozenset[ScreenState]] = {
    ScreenState.IN_DOUBT: frozenset({ScreenState.SUCCEEDED, ScreenState.NOT_DONE, ScreenState.REFUSED}),
    ScreenState.SUCCEEDED: frozenset(),
    ScreenState.NOT_DONE: frozenset(),
    ScreenState.REFUSED: frozenset(),
}


class Operation(enum.StrEnum):
    SALE = "sale"
    QR = "qr"
    VOID = "void"
    REFUND = "refund"  # card refund of a sale of this journal, by its trace
    QR_REFUND = "qr_refund"  # wallet refund, by order number
    REPRINT = "reprint"


# The engine's outcomes that are not an end: the worker keeps resolving them.
_UNRESOLVED = frozenset({Outcome.REVERSAL_PENDING, Outcome.WALLET_PENDING, Outcome.REFUND_UNKNOWN})
_SUCCEEDED = frozenset({Outcome.APPROVED, Outcome.DONE})


def screen_state(outcome: Outcome) -> ScreenState:
    """The screen state of an engine outcome (pure)."""
    if outcome in _UNRESOLVED:
        return ScreenState.IN_DOUBT
    if outcome in _SUCCEEDED:
        return ScreenState.SUCCEEDED
    return ScreenState.NOT_DONE


class IllegalScreenTransition(RuntimeError):
    pass


@dataclass
class Job:
    id: str
    op: Operation
    params: dict[str, Any]
    state: ScreenState
    created_at: datetime
    updated_at: datetime
    text: str = "处理中，请稍候 / in progress: waiting for the answer"
    outcome: Outcome | None = None
    trace: str | None = None
    batch: str | None = None
    rrn: str | None = None
    order_no: str | None = None
    amount_minor: int | None = None
    txn_id: int | None = None
    receipt: str | None = None
    e_receipt_url: str | None = None
    needs_signature: bool = False  # a card sale whose merchant copy waits for the signature
    signed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def reference(self) -> str | None:
        """What a signature is stored under: ``batch.trace`` of the approval."""
        if self.batch and self.trace:
            return f"{self.batch}.{self.trace}"
        return None

    @property
    def amount_text(self) -> str:
        return format_yuan(self.amount_minor) if self.amount_minor is not None else ""

    def move(self, new: ScreenState, now: datetime) -> None:
        if new is self.state:
            return
        if new not in SCREEN_TRANSITIONS[self.state]:
            raise IllegalScreenTransition(f"job {self.id}: {self.state} -> {new} is not allowed")
        self.state, self.updated_at = new, now


class CashierBusy(RuntimeError):
    """The terminal has ``QUEUE_MAX`` operations waiting: say so, do not queue more."""


class CashierEngine:
    """The terminal of ``data_dir`` run by one worker thread; see the module docstring."""

    def __init__(
        self,
        data_dir: Path,
        *,
        signature_lookup: SignatureLookup,
        clock: Clock | None = None,
        resolve_interval_s: float = 1.0,
        terminal_factory: Callable[[Path, Printer | None], Terminal] | None = None,
    ) -> None:
        if resolve_interval_s <= 0:
            raise ValueError("resolve_interval_s must be positive")
        self.data_dir = Path(data_dir)
        self.clock = clock or SystemClock()
        self.resolve_interval_s = resolve_interval_s
        self.config = load_config(self.data_dir)
        self._lookup = signature_lookup
        self._factory = terminal_factory or (lambda d, p: Terminal.open(d, printer=p))
        self._queue: queue.Queue[Job | None] = queue.Queue(QUEUE_MAX)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="tillroll-cashier", daemon=True)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._start_error: BaseException | None = None
        self._last_relay = 0.0
        self.printer: SignaturePrinter | None = None
        self.terminal: Terminal | None = None  # owned by the worker thread: read-only elsewhere

    @property
    def tid(self) -> str:
        return self.config.tid

    @property
    def mid(self) -> str:
        return self.config.mid

    @property
    def has_wallet(self) -> bool:
        return self.config.wallet is not None

    # --- life --------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> CashierEngine:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TerminalError(f"the terminal in {self.data_dir} did not open within {timeout_s} s")
        if self._start_error is not None:
            raise TerminalError(f"the terminal in {self.data_dir} cannot be opened: {self._start_error}")
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes the worker at once
        self._thread.join(STOP_TIMEOUT_S)

    def _open(self) -> Terminal:
        inner = None
        if self.config.printer_url:
            inner = open_printer(
                self.config.printer_url,
                timeout_s=self.config.printer_timeout_s,
                width_cols=self.config.printer_width_cols,
            )
        self.printer = SignaturePrinter(inner, self._lookup) if inner is not None else None
        return self._factory(self.data_dir, self.printer)

    def _run(self) -> None:
        try:
            terminal = self._open()
        except BaseException as exc:  # told to start(), which raises it in the caller
            self._start_error = exc
            self._ready.set()
            return
        self.terminal = terminal
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    job = self._queue.get(timeout=self.resolve_interval_s)
                except queue.Empty:
                    job = None
                if job is not None:
                    self._execute(terminal, job)
                if self._stop.is_set():
                    break
                self._resolve(terminal)
                self._relay(terminal, force=job is not None)
        finally:
            terminal.close()

    # --- the screen's side -------------------------------------------------------------------

    def submit(self, op: Operation, **params: Any) -> Job:
        now = self.clock.now()
        job = Job(secrets.token_urlsafe(9), Operation(op), dict(params), ScreenState.IN_DOUBT, now, now)
        job.amount_minor = params.get("amount_minor")
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise CashierBusy(
                    "终端忙，请稍后再试 / the terminal is busy with earlier operations: wait, then try again"
                ) from None
            self._jobs[job.id] = job
            while len(self._jobs) > JOBS_KEPT:
                self._jobs.popitem(last=False)
        return job

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            found = self._jobs.get(job_id)
            return replace(found, notes=list(found.notes)) if found is not None else None

    def jobs(self) -> list[Job]:
        with self._lock:
            return [replace(j, notes=list(j.notes)) for j in reversed(self._jobs.values())]

    def wait(self, job_id: str, timeout_s: float) -> Job | None:
        """Block until the job leaves IN_DOUBT or ``timeout_s`` passes (tests, scripts)."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._jobs.get(job_id) is None or self._jobs[job_id].state is not ScreenState.IN_DOUBT
                ),
                timeout_s,
            )
        return self.job(job_id)

    def signed(self, job_id: str) -> Released | None:
        """The customer's signature of this job is stored: print the merchant copy with it."""
        job = self.job(job_id)
        if job is None or job.reference is None or self.printer is None:
            return None
        released = self.printer.release(self.tid, job.reference)
        with self._lock:
            live = self._jobs.get(job_id)
            if live is not None:
                live.signed = True
                live.needs_signature = False
                if released is not None and not released.printed:
                    live.notes.append(f"商户存根未打印 / merchant copy not printed: {released.why} — reprint")
                elif released is not None:
                    live.notes.append(
                        "商户存根已打印（含电子签名） / merchant copy printed with the signature"
                    )
            self._changed.notify_all()
        return released

    def skip_signature(self, job_id: str) -> Released | None:
        """No signature on the screen: the merchant copy prints with the blank space (sign on paper)."""
        return self.signed(job_id)

    # --- the worker's side -------------------------------------------------------------------

    def _update(
        self,
        job: Job,
        result: Result | None,
        *,
        state: ScreenState,
        text: str,
        outcome: Outcome | None = None,
    ) -> None:
        now = self.clock.now()
        with self._lock:
            if outcome is not None:
                job.outcome = outcome
            if result is not None:
                job.outcome = result.outcome
                job.trace = result.trace or job.trace
                job.batch = result.batch or job.batch
                job.rrn = result.rrn or job.rrn
                job.order_no = result.order_no or job.order_no
                job.txn_id = result.txn_id or job.txn_id
                if result.amount_minor is not None:
                    job.amount_minor = result.amount_minor
                job.receipt = result.receipt.value if result.receipt is not None else job.receipt
                job.e_receipt_url = result.e_receipt_url or job.e_receipt_url
            job.text = text
            job.move(state, now)
            job.updated_at = now
            self._changed.notify_all()

    def _execute(self, terminal: Terminal, job: Job) -> None:
        p = job.params
        expect = job.op is Operation.SALE and bool(p.get("signature")) and self.printer is not None
        try:
            if expect and self.printer is not None:
                self.printer.expect_signature(True)
            result = self._call(terminal, job.op, p)
        except (InputError, ValueError) as exc:
            self._update(job, None, state=ScreenState.REFUSED, text=f"输入有误 / bad input: {exc}")
            return
        except TerminalError as exc:
            self._update(job, None, state=ScreenState.REFUSED, text=f"终端故障 / terminal fault: {exc}")
            return
        finally:
            if self.printer is not None:
                self.printer.expect_signature(False)
        state = screen_state(result.outcome)
        if (
            expect
            and self.printer is not None
            and result.outcome is Outcome.APPROVED
            and result.batch
            and result.trace
            and self.printer.held(self.tid, f"{result.batch}.{result.trace}")
        ):
            job.needs_signature = True
        self._update(job, result, state=state, text=result.text)

    def _call(self, terminal: Terminal, op: Operation, p: Mapping[str, Any]) -> Result:
        contact = p.get("contact") or None
        if op is Operation.SALE:
            return terminal.sale(
                int(p["amount_minor"]), p["pan"], p["expiry"], p.get("pin") or None, notify=contact
            )
        if op is Operation.QR:
            return terminal.qr(int(p["amount_minor"]), p["code"], contact)
        if op is Operation.VOID:
            return terminal.void(p["trace"])
        if op is Operation.REFUND:
            sale = terminal.journal.find(
                kind=TxnKind.SALE, stan=p["trace"], batch=p.get("batch") or terminal.batch
            )
            if sale is None or sale.rrn is None or sale.host_date is None:
                raise InputError(
                    f"原交易不存在 / no approved sale with trace {p['trace']} in this terminal's journal"
                )
            return terminal.refund(int(p["amount_minor"]), sale.rrn, sale.host_date, notify=contact)
        if op is Operation.QR_REFUND:
            return terminal.refund_order(int(p["amount_minor"]), p["order_no"], contact)
        return terminal.reprint(p.get("trace") or None)

    def _relay(self, terminal: Terminal, *, force: bool) -> None:
        """The journal's facts (e-receipts, notices, alerts) to the back office: after each
        operation and every ``FACTS_INTERVAL_S`` otherwise, bounded by the terminal's
        ``backoffice_timeout_s`` (a back office that does not answer delays nothing for long)."""
        now = time.monotonic()
        if not force and now - self._last_relay < FACTS_INTERVAL_S:
            return
        self._last_relay = now
        try:
            terminal.send_facts()
        except (TerminalError, OSError) as exc:
            log.warning("facts not delivered now (they wait in the journal): %s", exc)

    def _resolve(self, terminal: Terminal) -> None:
        """One round of the engine's own background steps for every job still in doubt."""
        with self._lock:
            open_jobs = [j for j in self._jobs.values() if j.state is ScreenState.IN_DOUBT and j.outcome]
        try:
            # as `pos run` would (it cannot: this process holds the device lock): pending
            # reversals and open wallet orders whenever their own backoff says they are due
            if terminal.pending_reversals():
                terminal.reverse_step()
            if self.has_wallet and terminal.wallet_journal.open_orders():
                terminal.wallet_step()
            if not open_jobs:
                return
            if terminal.open_refunds() or (
                self.has_wallet and terminal.wallet_refunds is not None and terminal.wallet_refunds.open()
            ):
                terminal.recover()
        except (TerminalError, InputError) as exc:
            log.warning("resolving in-doubt operations failed: %s", exc)
            return
        for job in open_jobs:
            self._settle_from_journal(terminal, job)

    def _resolved(self, job: Job, state: ScreenState, outcome: Outcome) -> None:
        self._update(job, None, state=state, text=outcome.text, outcome=outcome)

    def _settle_from_journal(self, terminal: Terminal, job: Job) -> None:
        """Move a job out of doubt when the journal says how its operation ended."""
        if job.op is Operation.QR and job.order_no:
            order = terminal.wallet_journal.find_order(job.order_no)
            if order is None:
                return
            if order.state is WalletState.SUCCESS:
                self._resolved(job, ScreenState.SUCCEEDED, Outcome.APPROVED)
            elif order.state in (WalletState.CLOSED, WalletState.REVOKED, WalletState.REFUSED):
                self._resolved(job, ScreenState.NOT_DONE, Outcome.WALLET_CANCELLED)
            return
        if job.op is Operation.QR_REFUND:
            refunds = [
                r for r in terminal.wallet_refund_list() if (r.batch, r.stan) == (job.batch, job.trace)
            ]
            for r in refunds:
                if r.state is RefundState.APPROVED:
                    self._resolved(job, ScreenState.SUCCEEDED, Outcome.APPROVED)
                elif r.state is RefundState.DECLINED:
                    self._resolved(job, ScreenState.NOT_DONE, Outcome.DECLINED)
            return
        if job.txn_id is None:
            return
        entry = terminal.journal.get(job.txn_id)
        if entry.state is TxnState.REVERSED:
            self._resolved(job, ScreenState.NOT_DONE, Outcome.REVERSED)
        elif entry.state in (TxnState.APPROVED, RefundState.APPROVED):
            self._resolved(job, ScreenState.SUCCEEDED, Outcome.APPROVED)
        elif entry.state is RefundState.DECLINED:
            self._resolved(job, ScreenState.NOT_DONE, Outcome.DECLINED)
