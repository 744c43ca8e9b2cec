"""When a slip prints and when it is owed (``receipt.py`` lays a slip out; this decides).

Receipts are built from the journal entry of the approval, never from the request; if the
printer is not READY (checked with DLE EOT first) or the job fails, the sale stands, the receipt
is owed, and an HTML e-receipt is written at once; :meth:`Receipts.reprint` prints it later
marked 重打印 REPRINT and clears the debt.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, func, select

from tillroll.clock import Clock, to_merchant_local
from tillroll.crypto.backoffice import backoffice_key, day_number, make_token
from tillroll.iso8583.messages import CURRENCY_CNY
from tillroll.money import format_yuan
from tillroll.notify.outbox import MessageKind
from tillroll.pan import mask_pan
from tillroll.terminal.announce import announce
from tillroll.terminal.config import E_RECEIPT_DIR, TerminalConfig
from tillroll.terminal.facts import alert_fact, card_reference
from tillroll.terminal.inputs import parse_trace
from tillroll.terminal.journal import Entry, Journal, txns
from tillroll.terminal.printer import Printer, PrintError, PrinterStatus
from tillroll.terminal.receipt import Copy, Slip, TransType
from tillroll.terminal.result import Result
from tillroll.terminal.states import AlertKind, Outcome, ReceiptState, TxnKind

log = logging.getLogger("tillroll.terminal")

EReceiptWriter = Callable[[Slip, Path], Path]
PRINTER_FAULT = "printer_fault"  # the notifications' alert kind for a printer that failed


def default_e_receipt_writer(slip: Slip, directory: Path) -> Path:
    # Imported when first needed: most runs print and never write an e-receipt.
    module = importlib.import_module("tillroll.terminal.ereceipt")
    path: Path = module.write_e_receipt(slip, directory)
    return path


def receipt_token(config: TerminalConfig, reference: str, approved_at: datetime) -> str:
    """The e-receipt token of the fact ``reference`` approved at ``approved_at`` (UTC): the one
    the back office verifies, and makes itself for a fact that carries none (the wallet rail)."""
    return make_token(backoffice_key(config.tmk), config.tid, reference, day_number(approved_at))


def receipt_url(config: TerminalConfig, reference: str, approved_at: datetime) -> str | None:
    """Its address on the back office (the slip's QR code), when a back office is configured."""
    if config.backoffice_url is None:
        return None
    return f"{config.backoffice_url.rstrip('/')}/r/{receipt_token(config, reference, approved_at)}"


class Receipts:
    def __init__(
        self,
        config: TerminalConfig,
        clock: Clock,
        journal: Journal,
        printer: Printer | None,
        write_e_receipt: EReceiptWriter,
        data_dir: Path,
    ) -> None:
        self.config = config
        self.clock = clock
        self.journal = journal
        self.printer = printer
        self._write_e_receipt = write_e_receipt
        self._data_dir = data_dir

    def receipt_token(self, entry: Entry) -> str:
        """The signed token of the approval's e-receipt link (``crypto/backoffice.py``): the same
        for every print of it, made before the back office has seen the receipt."""
        approved = entry.approved_at or entry.created_at
        return receipt_token(self.config, card_reference(entry.batch, entry.stan), approved)

    def receipt_url(self, entry: Entry) -> str | None:
        """The e-receipt's address on the back office, when one is configured and approved."""
        if entry.approved_at is None:
            return None
        return receipt_url(self.config, card_reference(entry.batch, entry.stan), entry.approved_at)

    def slip_for(self, entry: Entry, conn: Connection | None = None) -> Slip:
        """The slip of an approval, from its journal entry (never from the request sent);
        ``conn`` when called inside a journal transaction."""
        trans_type = {TxnKind.VOID: TransType.VOID, TxnKind.REFUND: TransType.REFUND}.get(
            entry.kind, TransType.SALE
        )
        expiry = entry.expiry
        reference = None
        if entry.kind is TxnKind.VOID and entry.orig_txn_id is not None:
            orig = self.journal.get(entry.orig_txn_id, conn)
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
            when=to_merchant_local(entry.approved_at or entry.created_at, self.config.zone),
            amount_minor=entry.amount_minor or 0,
            currency=entry.request.get("49") or CURRENCY_CNY,
            reference=reference,
            e_receipt_url=self.receipt_url(entry),
        )

    def print_slips(self, slip: Slip, *, reprint: bool) -> str | None:
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

    def issue(self, entry: Entry) -> tuple[ReceiptState, Path | None]:
        """After an approval is journalled: print, or owe the receipt (with an e-receipt)."""
        slip = self.slip_for(entry)
        why = self.print_slips(slip, reprint=False)
        if why is None:
            self.journal.set_receipt(entry.id, ReceiptState.PRINTED, self.clock.now())
            return ReceiptState.PRINTED, None
        return ReceiptState.OWED, self.owe(entry, why, slip)

    def owe(self, entry: Entry, why: str, slip: Slip | None = None) -> Path | None:
        """The sale stands; the receipt is owed; an e-receipt is written at once."""
        now = self.clock.now()
        slip = slip or self.slip_for(entry)
        path: Path | None = None
        try:
            path = self._write_e_receipt(slip, self._data_dir / E_RECEIPT_DIR)
        except Exception as exc:  # any writer failure leaves the receipt owed, with an alert
            self.journal.alert(
                AlertKind.E_RECEIPT_FAILED,
                f"e-receipt for trace {entry.stan} not written: {exc}",
                now,
                entry.id,
            )
        self.journal.set_receipt(entry.id, ReceiptState.OWED, now, e_receipt_path=str(path) if path else None)
        text = f"receipt for trace {entry.stan} owed: {why}"
        with self.journal.begin() as conn:  # the alert and the merchant's notice of it: one commit
            self.journal.alert(AlertKind.RECEIPT_OWED, text, now, entry.id, conn)
            owed = conn.execute(
                select(func.count()).select_from(txns).where(txns.c.receipt == ReceiptState.OWED.value)
            ).scalar_one()
            if self.printer is not None:  # a printer that failed (none configured: nothing to fix)
                announce(
                    conn,
                    kind=MessageKind.MERCHANT_ALERT,
                    tid=self.config.tid,
                    reference=f"{PRINTER_FAULT}.{card_reference(entry.batch, entry.stan)}",
                    recipient=None,
                    fact=alert_fact(
                        alert=PRINTER_FAULT,
                        mid=self.config.mid,
                        merchant_name=self.config.merchant_name or self.config.mid,
                        text=text,
                        at_utc=now,
                        count=int(owed),
                        batch=entry.batch,
                        trace=entry.stan,
                    ),
                    now=now,
                )
        log.warning(
            "receipt owed for trace %s (%s, %s): %s",
            entry.stan,
            mask_pan(entry.pan),
            format_yuan(entry.amount_minor or 0),
            why,
        )
        return path

    def reprint(self, trace: str | None = None) -> Result:
        """Print the slips of the approval with that trace (the last one when None), marked
        REPRINT; an owed receipt is cleared when it prints."""
        stan = parse_trace(trace) if trace is not None else None
        entry = self.journal.find_receipted(stan)
        if entry is None:
            return Result(Outcome.NOT_FOUND, trace=stan, detail="no approved transaction to reprint")
        slip = self.slip_for(entry)
        res = self.print_slips(slip, reprint=True)
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
