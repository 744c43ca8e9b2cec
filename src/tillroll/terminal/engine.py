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
- ``wallet*.py``     the QR wallet rail: gateway, orders, refunds, their journal and slips

:class:`Terminal` owns the device (lock, journal, printer, link), wires the jobs together, and
translates the device's own IO failures into :class:`TerminalError` at its public methods.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

from tillroll.clock import Clock, SystemClock
from tillroll.terminal.backoffice import BackOfficeSender, RelayRound, relay
from tillroll.terminal.config import JOURNAL_FILE, TerminalConfig, device_keystore, load_config
from tillroll.terminal.device import LOCK_FILE, DeviceLock, TerminalError, boundary
from tillroll.terminal.financial import Transactions
from tillroll.terminal.hostlink import HostLink, SocketFactory, TcpHostLink
from tillroll.terminal.inputs import InputError, parse_trace
from tillroll.terminal.journal import Alert, Entry, Journal, Settlement
from tillroll.terminal.journal_upload import AFTER_TRANSACTION_TIMEOUT_S, JournalUploader, UploadRound
from tillroll.terminal.notices import Notices
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
from tillroll.terminal.wallet import WalletPayments, WalletStep
from tillroll.terminal.wallet_gateway import HttpWalletGateway, WalletGateway
from tillroll.terminal.wallet_journal import WalletJournal, WalletOrder, WalletRefund
from tillroll.terminal.wallet_receipts import WalletReceipts
from tillroll.terminal.wallet_refunds import WalletRefunds
from tillroll.terminal.wallet_states import WalletState

log = logging.getLogger("tillroll.terminal")
SETTLEMENT_UPLOAD_BUDGET_S = 20.0  # at the end of the day the whole batch goes, page after page
_CARD_REFERENCE = re.compile(r"^([0-9]{6})\.([0-9]{6})$")

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
        wallet_gateway: WalletGateway | None = None,
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
            write_e_receipt = e_receipt_writer or default_e_receipt_writer
            self.receipts = Receipts(
                config, self.clock, self.journal, printer, write_e_receipt, self.data_dir
            )
            self.notices = Notices(config, self.journal, self.receipts)
            self.reversals = Reversals(config, self.clock, self.journal, self.sessions, rng, self.notices)
            self.preflight = Preflight(self.clock, self.journal, self.sessions, self.reversals, self.receipts)
            self.transactions = Transactions(
                config,
                self.clock,
                self.journal,
                self.sessions,
                self.preflight,
                self.reversals,
                self.receipts,
                self.notices,
            )
            self.refunds = Refunds(
                config,
                self.clock,
                self.journal,
                self.sessions,
                self.preflight,
                self.receipts,
                rng,
                self.notices,
            )
            self.settler = Settler(
                config, self.clock, self.journal, self.sessions, self.preflight, self.refunds, rng
            )
            self._wallet_gateway: WalletGateway | None = None
            self.wallet: WalletPayments | None = None
            self.wallet_refunds: WalletRefunds | None = None
            self.wallet_journal = WalletJournal(self.journal)
            self._wallet_receipts = WalletReceipts(
                config,
                self.clock,
                self.journal,
                self.wallet_journal,
                self.receipts,
                write_e_receipt,
                self.data_dir,
            )
            self._open_wallet(wallet_gateway, rng)
            self._uploader: JournalUploader | None = None
            self._uploading = False
        except BaseException:
            self._lock.release()
            raise

    @classmethod
    def open(cls, data_dir: Path, **kwargs: Any) -> Terminal:
        """The terminal set up in ``data_dir`` by ``tillroll pos init``."""
        return cls(load_config(Path(data_dir)), Path(data_dir), **kwargs)

    def _open_wallet(self, gateway: WalletGateway | None, rng: random.Random) -> None:
        settings = self.config.wallet
        if settings is None:
            return
        gateway = gateway or HttpWalletGateway(
            settings.url,
            settings.merchant,
            settings.key,
            connect_timeout_s=settings.connect_timeout_s,
            response_timeout_s=settings.response_timeout_s,
        )
        self._wallet_gateway = gateway
        parts = (self.config, settings, self.clock, self.journal, self.wallet_journal, gateway)
        self.wallet = WalletPayments(*parts, self._wallet_receipts, rng)
        self.wallet_refunds = WalletRefunds(*parts, self._wallet_receipts, rng)

    def _need_wallet(self) -> tuple[WalletPayments, WalletRefunds]:
        if self.wallet is None or self.wallet_refunds is None:
            raise InputError(
                "this terminal has no wallet set up: run `tillroll pos init … --wallet http://HOST:PORT "
                "--wallet-merchant MCH_ID --wallet-key KEY` first"
            )
        return self.wallet, self.wallet_refunds

    def close(self) -> None:
        try:
            if self._wallet_gateway is not None:
                self._wallet_gateway.close()
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
        return self._uploaded(self.transactions.balance(pan, expiry_yymm, pin))

    @boundary
    def sale(
        self,
        amount_minor: int,
        pan: str,
        expiry_yymm: str,
        pin: str | None = None,
        *,
        notify: str | None = None,
    ) -> Result:
        """A sale; ``notify``: the customer's phone or e-mail for the e-receipt and notices."""
        return self._uploaded(self.transactions.sale(amount_minor, pan, expiry_yymm, pin, notify=notify))

    @boundary
    def void(self, trace: str) -> Result:
        return self._uploaded(self.transactions.void(trace))

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
        notify: str | None = None,
    ) -> Result:
        """Refund (退货, 0220) of a sale named by its RRN and date (field 13 of its answer).

        When the sale is in this journal its card, trace and batch come from there; otherwise
        ``trace`` and ``batch`` (and, for the slip, ``pan``/``expiry``) are read off its slip."""
        return self._uploaded(
            self.refunds.refund(
                amount_minor, rrn, date_mmdd, trace=trace, batch=batch, pan=pan, expiry=expiry, notify=notify
            )
        )

    @boundary
    def qr(self, amount_minor: int, code: str, contact: str | None = None) -> Result:
        """Wallet payment (扫码支付) with the customer's payment code; ``contact`` (phone or
        e-mail) gets the e-receipt and, should it be cancelled, the notice (wallet.py)."""
        return self._uploaded(self._need_wallet()[0].pay(amount_minor, code, contact))

    @boundary
    def refund_order(self, amount_minor: int, order_no: str, contact: str | None = None) -> Result:
        """Refund of a wallet order named by its order number (out_trade_no), partial or whole."""
        return self._uploaded(self._need_wallet()[1].refund(order_no, amount_minor, contact))

    @boundary
    def wallet_step(self) -> WalletStep:
        """One background try of each open wallet order that is due (query, then reverse)."""
        return self._need_wallet()[0].step()

    def wallet_orders(self, limit: int = 200) -> list[WalletOrder]:
        return self.wallet_journal.orders(limit)

    def wallet_refund_list(self, limit: int = 200) -> list[WalletRefund]:
        return self.wallet_journal.refunds(limit=limit)

    @boundary
    def settle(self) -> Result:
        """End of day: 0500 with the journal's totals; batch upload when not balanced; then the
        next batch and a new sign-in. Then the journal is uploaded to the back office — after the
        0500, not before: the settlement's preflight sends pending reversals and open refunds
        first, so only afterwards does every entry of the batch stand in its final state, and the
        status carries the settlement's outcome and the next batch (docs/terminal.md)."""
        result = self.settler.settle()
        self._upload_quietly(
            budget_s=SETTLEMENT_UPLOAD_BUDGET_S, query_printer=True, commands=True, force=True
        )
        return result

    @boundary
    def recover(self) -> Result:
        """Settle anything left in flight, send every pending reversal now, then every open
        refund again (the same request each); open wallet orders and refunds likewise."""
        return self._uploaded(self._recover())

    def _recover(self) -> Result:
        wallet = self._recover_wallet()
        card = self._recover_card()
        if wallet is None:
            return card
        if wallet.outcome is not Outcome.DONE:
            return (
                wallet
                if card.outcome is Outcome.DONE
                else Result(card.outcome, detail=f"{card.detail}; {wallet.detail}")
            )
        return Result(card.outcome, detail=f"{card.detail}; {wallet.detail}")

    def _recover_wallet(self) -> Result | None:
        if self.wallet is None or self.wallet_refunds is None:
            return None
        if not self.wallet_journal.open_orders() and not self.wallet_refunds.open():
            return None
        orders = self.wallet.resolve_open()
        refunds = self.wallet_refunds.retry_open()
        pending = [r for r in orders if r.outcome is Outcome.WALLET_PENDING]
        unknown = [r for r in refunds if r.outcome is Outcome.REFUND_UNKNOWN]
        detail = (
            f"wallet: {len(orders) - len(pending)} order(s), {len(refunds) - len(unknown)} refund(s) finished"
        )
        if pending:
            return Result(Outcome.WALLET_PENDING, detail=f"{detail}, {len(pending)} order(s) still reversing")
        if unknown:
            return Result(Outcome.REFUND_UNKNOWN, detail=f"{detail}, {len(unknown)} refund(s) still open")
        return Result(Outcome.DONE, detail=detail)

    def _recover_card(self) -> Result:
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
        REPRINT; an owed receipt is cleared when it prints. Covers wallet payments: the newer of
        the card approval and the paid wallet order with that trace is reprinted."""
        return self._uploaded(self._reprint(trace))

    def _reprint(self, trace: str | None) -> Result:
        stan = parse_trace(trace) if trace is not None else None
        order = self.wallet_journal.receipted_order(stan)
        if order is not None:
            entry = self.journal.find_receipted(stan)
            card_at = (entry.approved_at or entry.created_at) if entry is not None else None
            if card_at is None or (order.paid_at or order.created_at) >= card_at:
                return self._reprint_order(order)
        return self.receipts.reprint(trace)

    def _reprint_order(self, order: WalletOrder) -> Result:
        why = self._wallet_receipts.reprint(order)
        if why is not None:
            return Result(Outcome.PRINT_FAILED, trace=order.stan, receipt=order.receipt, detail=why)
        return Result(
            Outcome.DONE,
            trace=order.stan,
            batch=order.batch,
            amount_minor=order.amount_minor,
            rrn=order.transaction_id,
            receipt=self.wallet_journal.order(order.id).receipt,
            detail="重打印 reprinted",
            order_no=order.out_trade_no,
        )

    # --- the journal's copy at the back office (journal_upload.py) ---------------------------

    @property
    def uploader(self) -> JournalUploader | None:
        """None when no back office is configured (the entries wait in the journal)."""
        if self.config.backoffice_url is None:
            return None
        if self._uploader is None:
            self._uploader = JournalUploader(
                self.journal,
                tid=self.config.tid,
                tmk=self.config.tmk,
                base_url=self.config.backoffice_url,
                timeout_s=self.config.backoffice_timeout_s,
                clock=self.clock,
                printer=self.printer,
            )
        return self._uploader

    @boundary
    def upload_journal(
        self, *, budget_s: float | None = None, commands: bool = True, everything: bool = False
    ) -> UploadRound | None:
        """Upload the entries changed since the last upload, the status and the outcomes of the
        back office's commands; with ``commands``, run the commands it hands over (reprint, retry
        refunds) and report them in the same round. ``everything``: from the first entry again."""
        uploader = self.uploader
        if uploader is None:
            return None
        if everything:
            uploader.reset()
        budget = 4 * self.config.backoffice_timeout_s if budget_s is None else budget_s
        self._uploading = True
        try:
            return uploader.upload(budget_s=budget, run_command=self.run_command if commands else None)
        finally:
            self._uploading = False

    def _upload_quietly(
        self, *, budget_s: float, query_printer: bool, commands: bool, force: bool = False
    ) -> None:
        """``force``: even while a failed upload's backoff runs (at settlement)."""
        if self._uploading:  # a command's reprint inside an upload starts no other: the round goes on
            return
        self._uploading = True
        try:
            uploader = self.uploader
            if uploader is None or not (force or uploader.due()):
                return
            uploader.upload(
                budget_s=budget_s,
                run_command=self.run_command if commands else None,
                query_printer=query_printer,
            )
        except Exception:  # the transaction stands whatever the upload does; it is retried later
            log.exception("terminal %s: journal upload after a transaction failed", self.config.tid)
        finally:
            self._uploading = False

    def _uploaded(self, result: Result) -> Result:
        """After a transaction, when the line allows: one short upload (no printer query, no
        commands run: the cashier is waiting for the next sale), skipped while an earlier
        failure's backoff runs. Never changes or delays the outcome beyond its short timeout."""
        timeout_s = min(self.config.backoffice_timeout_s, AFTER_TRANSACTION_TIMEOUT_S)
        self._upload_quietly(budget_s=timeout_s, query_printer=False, commands=False)
        return result

    def run_command(self, command: str, reference: str | None) -> tuple[bool, str]:
        """Run one of the back office's commands through the engine's own operations: ``reprint``
        (the reprint of ``pos reprint``), ``retry_refunds`` (the open refunds sent again, as
        ``pos recover`` does; ``reference``: only those of that original RRN or order number)."""
        if command == "reprint":
            return self._command_reprint(reference)
        if command == "retry_refunds":
            return self._command_retry_refunds(reference)
        return False, f"unknown command {command!r}"

    def _command_reprint(self, reference: str | None) -> tuple[bool, str]:
        if reference is None:
            return False, "reprint needs a reference: batch.trace or an order number"
        m = _CARD_REFERENCE.match(reference)
        if m is None:
            order = self.wallet_journal.find_order(reference)
            if order is None or order.state is not WalletState.SUCCESS:
                return False, f"no paid wallet order {reference} in this terminal's journal"
            result = self._reprint_order(order)
        else:
            batch, stan = m.groups()
            entry = self.journal.find_receipted(stan)
            order = self.wallet_journal.receipted_order(stan)
            if not (
                (entry is not None and entry.batch == batch) or (order is not None and order.batch == batch)
            ):
                return False, f"no approval with trace {stan} in batch {batch} in this terminal's journal"
            result = self._reprint(stan)
        return result.outcome is Outcome.DONE, result.text if result.outcome is not Outcome.DONE else (
            f"reprinted trace {result.trace} / 已重打印"
        )

    def _command_retry_refunds(self, reference: str | None) -> tuple[bool, str]:
        """``reference``: none (every open refund), ``batch.trace`` (that refund, or the refunds of
        that sale), a 12-digit RRN (the refunds of that sale), or an order / refund number."""
        card = self.journal.open_refunds()
        wallet: list[WalletRefund] = self.wallet_refunds.open() if self.wallet_refunds is not None else []
        if reference is not None:
            m = _CARD_REFERENCE.match(reference)
            if m is not None:
                ref = m.groups()

                def of_trace(e: Entry) -> bool:
                    if (e.batch, e.stan) == ref:
                        return True
                    orig = self.journal.get(e.orig_txn_id) if e.orig_txn_id is not None else None
                    return orig is not None and (orig.batch, orig.stan) == ref

                card = [e for e in card if of_trace(e)]
                wallet = [r for r in wallet if (r.batch, r.stan) == ref]
            elif re.fullmatch(r"[0-9A-Za-z]{12}", reference) and not self.wallet_journal.find_order(
                reference
            ):
                card, wallet = [e for e in card if e.request.get("37") == reference], []
            else:
                parent = self.wallet_journal.find_order(reference)
                card = []
                wallet = [
                    r
                    for r in wallet
                    if (parent is not None and r.order_id == parent.id) or r.out_refund_no == reference
                ]
        if not card and not wallet:
            return True, f"no open refund to retry{f' for {reference}' if reference else ''} / 无待处理退货"
        results = []
        if card:
            if not self.sessions.ensure():
                return False, f"{len(card)} card refund(s) not retried: sign-in failed"
            results += self.refunds.retry_open(card)
        if wallet and self.wallet_refunds is not None:
            results += self.wallet_refunds.retry_open(wallet)
        still = [r for r in results if r.outcome is Outcome.REFUND_UNKNOWN]
        finished = len(results) - len(still)
        if still:
            return False, f"{finished} refund(s) finished, {len(still)} still open: {still[0].detail}"
        return True, f"{finished} refund(s) finished / 退货已完成"

    def send_facts(self, *, budget_s: float | None = None) -> RelayRound | None:
        """Deliver the journal's due facts to the back office for at most ``budget_s`` (default
        the configured ``backoffice_timeout_s``); None when no back office is configured (they
        wait in the journal)."""
        if self.config.backoffice_url is None:
            return None
        sender = BackOfficeSender(
            self.config.backoffice_url,
            self.config.tid,
            self.config.tmk,
            timeout_s=self.config.backoffice_timeout_s,
            clock=self.clock,
        )
        try:
            budget = self.config.backoffice_timeout_s if budget_s is None else budget_s
            return relay(self.journal, sender, self.clock, budget_s=budget)
        finally:
            sender.close()

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
