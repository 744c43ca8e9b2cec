"""The POS terminal: :class:`Terminal`, a thin front over the modules that do the jobs.

Each job has its own module (rules at the top of each; docs/terminal.md has the map):

- ``inputs.py``      what the cashier types in, checked before anything is journalled or sent
- ``verdict.py``     what an answer means (pure): approved, declined, unknown, repeat, resend
- ``session.py``     sign-in, sign-out, key lifetime, and the wire (:class:`Sessions`)
- ``reversals.py``   reversals, never dropped; a blocking flush and a non-blocking step
- ``preflight.py``   before a new transaction: interrupted entries, sign-in, pending reversals
- ``financial.py``   sale, void, balance inquiry (0200)
- ``refunds.py``     refunds (0220), repeated as the same request while unknown
- ``settlement.py``  settlement (0500) and batch upload (0320)
- ``receipts.py``    slips printed or owed (with an e-receipt), reprints
- ``retry.py``       the one backoff (exponential, jittered, bounded) every repeat uses
- ``device.py``      one terminal per data dir, and the IO-error boundary

:class:`Terminal` owns the device (lock, journal, printer, link), wires the jobs together, and
translates the device's own IO failures into :class:`TerminalError` at its public methods.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tillroll.clock import Clock, SystemClock
from tillroll.terminal.config import JOURNAL_FILE, TerminalConfig, device_keystore, load_config
from tillroll.terminal.device import LOCK_FILE, DeviceLock, TerminalError, boundary
from tillroll.terminal.financial import Transactions
from tillroll.terminal.hostlink import HostLink, SocketFactory, TcpHostLink
from tillroll.terminal.inputs import InputError, parse_trace
from tillroll.terminal.journal import Alert, Entry, Journal, Settlement
from tillroll.terminal.preflight import Preflight
from tillroll.terminal.printer import Printer, open_printer
from tillroll.terminal.receipt import Slip
from tillroll.terminal.receipts import EReceiptWriter, Receipts, default_e_receipt_writer
from tillroll.terminal.refunds import Refunds
from tillroll.terminal.result import Result
from tillroll.terminal.reversals import Reversals, ReversalStep
from tillroll.terminal.session import Sessions
from tillroll.terminal.settlement import Settler
from tillroll.terminal.states import Outcome
from tillroll.terminal.verdict import build_reversal

__all__ = [
    "InputError",
    "Result",
    "ReversalStep",
    "Terminal",
    "TerminalError",
    "build_reversal",
    "parse_trace",
]


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
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.clock: Clock = clock or SystemClock()
        rng = rng or random.Random()  # jitter only: no secret comes from it
        self._lock = DeviceLock(self.data_dir / LOCK_FILE)
        try:
            self.journal = Journal(self.data_dir / JOURNAL_FILE, device_keystore(self.data_dir))
            if printer is None and config.printer_url:
                printer = open_printer(
                    config.printer_url,
                    timeout_s=config.printer_timeout_s,
                    width_cols=config.printer_width_cols,
                )
            self.printer = printer
            link = link or TcpHostLink(
                config.host.pair,
                config.backup_host.pair if config.backup_host else None,
                connect_timeout_s=config.connect_timeout_s,
                response_timeout_s=config.response_timeout_s,
                socket_factory=socket_factory,
            )
            self.sessions = Sessions(config, self.clock, self.journal, link)
            self.receipts = Receipts(
                config,
                self.clock,
                self.journal,
                printer,
                e_receipt_writer or default_e_receipt_writer,
                self.data_dir,
            )
            self.reversals = Reversals(config, self.clock, self.journal, self.sessions, rng)
            self.preflight = Preflight(self.clock, self.journal, self.sessions, self.reversals, self.receipts)
            self.transactions = Transactions(
                config, self.clock, self.journal, self.sessions, self.preflight, self.reversals, self.receipts
            )
            self.refunds = Refunds(
                config, self.clock, self.journal, self.sessions, self.preflight, self.receipts, rng
            )
            self.settler = Settler(
                config, self.clock, self.journal, self.sessions, self.preflight, self.refunds, rng
            )
        except BaseException:
            self._lock.release()
            raise

    @classmethod
    def open(cls, data_dir: Path, **kwargs: Any) -> Terminal:
        """The terminal set up in ``data_dir`` by ``tillroll pos init``."""
        return cls(load_config(Path(data_dir)), Path(data_dir), **kwargs)

    def close(self) -> None:
        try:
            self.sessions.link.close()
            self.journal.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Terminal(tid={self.config.tid}, dir={self.data_dir})"

    @property
    def link(self) -> HostLink:
        return self.sessions.link

    @property
    def batch(self) -> str:
        return self.sessions.batch

    @property
    def signed_in(self) -> bool:
        return self.sessions.signed_in

    # --- cashier's operations ---------------------------------------------------------------

    @boundary
    def sign_in(self) -> Result:
        return self.sessions.sign_in()

    @boundary
    def sign_out(self) -> Result:
        return self.sessions.sign_out()

    @boundary
    def balance(self, pan: str, expiry_yymm: str, pin: str) -> Result:
        return self.transactions.balance(pan, expiry_yymm, pin)

    @boundary
    def sale(self, amount_minor: int, pan: str, expiry_yymm: str, pin: str | None = None) -> Result:
        return self.transactions.sale(amount_minor, pan, expiry_yymm, pin)

    @boundary
    def void(self, trace: str) -> Result:
        return self.transactions.void(trace)

    @boundary
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
        return self.refunds.refund(
            amount_minor, rrn, date_mmdd, trace=trace, batch=batch, pan=pan, expiry=expiry
        )

    @boundary
    def settle(self) -> Result:
        """End of day: 0500 with the journal's totals; batch upload when not balanced; then the
        next batch and a new sign-in."""
        return self.settler.settle()

    @boundary
    def recover(self) -> Result:
        """Settle anything left in flight, send every pending reversal now, then every open
        refund again (the same request each)."""
        self.preflight.recover_in_flight()
        pending = self.journal.pending_reversals()
        refunds = self.journal.open_refunds()
        if not pending and not refunds:
            return Result(Outcome.DONE, detail="no pending reversals or refunds / 无待冲正、待退货交易")
        if not self.sessions.ensure():
            return Result(
                Outcome.SIGN_IN_FAILED,
                detail=f"{len(pending)} reversal(s), {len(refunds)} refund(s) still pending",
            )
        remaining = self.reversals.flush() if pending else 0
        sent = len(pending) - remaining
        if remaining:
            return Result(Outcome.REVERSAL_PENDING, detail=f"{sent} reversed, {remaining} still pending")
        results = self.refunds.retry_open(refunds) if refunds else []
        open_left = [r for r in results if r.outcome is Outcome.REFUND_UNKNOWN]
        done = f"{sent} reversal(s), {len(results) - len(open_left)} refund(s) finished"
        if open_left:
            still = f"{len(open_left)} refund(s) still open — {open_left[0].detail}"
            return Result(Outcome.REFUND_UNKNOWN, detail=f"{done}; {still}")
        declined = [r for r in results if r.outcome is Outcome.DECLINED]
        if declined:
            done += f" ({len(declined)} declined: {declined[0].text})"
        return Result(Outcome.DONE, detail=f"{done} / 冲正、退货完成")

    @boundary
    def reverse_step(self) -> ReversalStep:
        """One background try of each pending reversal that is due (see ``reversals.py``); for a
        resident loop, which calls it again at ``next_due_s``."""
        self.preflight.recover_in_flight()
        return self.reversals.step()

    @boundary
    def reprint(self, trace: str | None = None) -> Result:
        """Print the slips of the approval with that trace (the last one when None), marked
        REPRINT; an owed receipt is cleared when it prints."""
        return self.receipts.reprint(trace)

    # --- reading the journal ----------------------------------------------------------------

    def slip_for(self, entry: Entry) -> Slip:
        return self.receipts.slip_for(entry)

    def entries(self, limit: int = 200) -> list[Entry]:
        return self.journal.entries(limit)

    def alerts(self, limit: int = 100) -> list[Alert]:
        return self.journal.alerts(limit)

    def pending_reversals(self) -> list[Entry]:
        return self.journal.pending_reversals()

    def open_refunds(self) -> list[Entry]:
        return self.journal.open_refunds()

    def settlements(self, limit: int = 100) -> list[Settlement]:
        return self.journal.settlements(limit)
