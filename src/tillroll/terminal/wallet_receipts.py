"""Slips, e-receipts and announced facts of the wallet rail.

A wallet payment's slip is printed only for a confirmed SUCCESS (a verified pay or query answer,
journalled first): trans type 扫码支付 QR PAY, the brand (微信支付 / 支付宝, from the code's
prefix) where a card slip has the issuer, the wallet's transaction id as the reference number,
and the order number with the **masked** payment code in the note. A refund's slip is a REFUND
slip naming the original order. A printer failure leaves the payment standing, the receipt owed
and an HTML e-receipt written at once, as on the card rail (``receipts.py``).

:func:`order_fact` / :func:`refund_fact` are what ``announce`` writes: amount, merchant, time
(UTC and merchant-local), rail, brand, masked code — never the whole code. ``at``, ``mid``,
``merchant_name``, ``amount_minor`` and ``currency`` are the fields ``tillroll.notify.facts``
reads; the rest are details its templates may show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tillroll.clock import Clock, to_merchant_local
from tillroll.money import CNY, format_yuan
from tillroll.terminal.config import E_RECEIPT_DIR, TerminalConfig
from tillroll.terminal.journal import Journal
from tillroll.terminal.receipt import Slip, TransType
from tillroll.terminal.receipts import Receipts
from tillroll.terminal.states import AlertKind, ReceiptState
from tillroll.terminal.wallet_journal import WalletJournal, WalletOrder, WalletRefund

log = logging.getLogger("tillroll.terminal")

EReceiptWriter = Callable[[Slip, Path], Path]
RAIL = "wallet"


class WalletReceipts:
    def __init__(
        self,
        config: TerminalConfig,
        clock: Clock,
        journal: Journal,
        wallet_journal: WalletJournal,
        receipts: Receipts,
        write_e_receipt: EReceiptWriter,
        data_dir: Path,
    ) -> None:
        self.config = config
        self.clock = clock
        self.journal = journal
        self.wj = wallet_journal
        self.receipts = receipts
        self._write_e_receipt = write_e_receipt
        self._data_dir = data_dir

    @property
    def merchant_name(self) -> str:
        return self.config.merchant_name or self.config.mid

    def order_slip(self, order: WalletOrder) -> Slip:
        return Slip(
            merchant_name=self.merchant_name,
            mid=self.config.mid,  # the merchant number the merchant knows (the acquirer's)
            tid=self.config.tid,
            operator=order.operator,
            pan_masked="",
            entry_mode="",
            issuer=order.brand.label,
            acquirer="",
            expiry_yymm=None,
            trans_type=TransType.QR_PAY,
            batch=order.batch,
            trace=order.stan,
            auth_code="",
            rrn=order.transaction_id or "",
            when=to_merchant_local(order.paid_at or order.updated_at, self.config.zone),
            amount_minor=order.amount_minor,
            reference=f"订单号 ORDER {order.out_trade_no} 付款码 CODE {order.code_masked}",
        )

    def refund_slip(self, refund: WalletRefund, order: WalletOrder) -> Slip:
        return Slip(
            merchant_name=self.merchant_name,
            mid=self.config.mid,  # the merchant number the merchant knows (the acquirer's)
            tid=self.config.tid,
            operator=refund.operator,
            pan_masked="",
            entry_mode="",
            issuer=order.brand.label,
            acquirer="",
            expiry_yymm=None,
            trans_type=TransType.REFUND,
            batch=refund.batch,
            trace=refund.stan,
            auth_code="",
            rrn=refund.refund_id or "",
            when=to_merchant_local(refund.approved_at or refund.updated_at, self.config.zone),
            amount_minor=refund.amount_minor,
            reference=f"原订单号 ORIG ORDER {order.out_trade_no} 退款单号 REFUND {refund.out_refund_no}",
        )

    def issue(
        self, slip: Slip, set_receipt: Callable[..., None], what: str
    ) -> tuple[ReceiptState, Path | None]:
        """Print both copies, or owe the receipt and write the e-receipt at once."""
        why = self.receipts.print_slips(slip, reprint=False)
        now = self.clock.now()
        if why is None:
            set_receipt(ReceiptState.PRINTED, now)
            return ReceiptState.PRINTED, None
        path: Path | None = None
        try:
            path = self._write_e_receipt(slip, self._data_dir / E_RECEIPT_DIR)
        except Exception as exc:  # any writer failure leaves the receipt owed, with an alert
            self.journal.alert(AlertKind.E_RECEIPT_FAILED, f"e-receipt for {what} not written: {exc}", now)
        set_receipt(ReceiptState.OWED, now, e_receipt_path=str(path) if path else None)
        self.journal.alert(AlertKind.RECEIPT_OWED, f"receipt for {what} owed: {why}", now)
        log.warning("receipt owed for %s: %s", what, why)
        return ReceiptState.OWED, path

    def issue_order(self, order: WalletOrder) -> tuple[ReceiptState, Path | None]:
        def set_receipt(new: ReceiptState, now: datetime, **kw: Any) -> None:
            self.wj.set_order_receipt(order.id, new, now, **kw)

        return self.issue(self.order_slip(order), set_receipt, f"order {order.out_trade_no}")

    def issue_refund(self, refund: WalletRefund, order: WalletOrder) -> tuple[ReceiptState, Path | None]:
        def set_receipt(new: ReceiptState, now: datetime, **kw: Any) -> None:
            self.wj.set_refund_receipt(refund.id, new, now, **kw)

        return self.issue(self.refund_slip(refund, order), set_receipt, f"refund {refund.out_refund_no}")

    def reprint(self, order: WalletOrder) -> str | None:
        """Print the order's slips marked REPRINT; None when printed (an owed receipt is cleared)."""
        why = self.receipts.print_slips(self.order_slip(order), reprint=True)
        if why is None:
            self.wj.set_order_receipt(order.id, ReceiptState.PRINTED, self.clock.now())
        return why


def _times(config: TerminalConfig, at: datetime) -> dict[str, str]:
    return {
        "at": at.isoformat(timespec="seconds"),  # the fact's instant, UTC (notify.facts reads it)
        "time_utc": at.isoformat(timespec="seconds") + "Z",
        "time_local": to_merchant_local(at, config.zone).isoformat(timespec="seconds"),
        "merchant_tz": config.merchant_tz,
    }


def order_fact(config: TerminalConfig, order: WalletOrder, *, state: str, at: datetime) -> dict[str, Any]:
    """What is announced of a payment (paid, or cancelled): no full code, no key."""
    return {
        "rail": RAIL,
        "state": state,
        "amount_minor": order.amount_minor,
        "amount_yuan": format_yuan(order.amount_minor),
        "currency": CNY,
        "merchant_name": config.merchant_name or config.mid,
        "mid": config.mid,  # the acquirer's merchant id: how the back office knows the merchant
        "wallet_merchant": config.wallet.merchant if config.wallet else "",
        "brand": order.brand.value,
        "brand_label": order.brand.label,
        "code_masked": order.code_masked,
        "out_trade_no": order.out_trade_no,
        "transaction_id": order.transaction_id or "",
        "batch": order.batch,
        "trace": order.stan,
        **_times(config, at),
    }


def refund_fact(
    config: TerminalConfig, refund: WalletRefund, order: WalletOrder, *, at: datetime
) -> dict[str, Any]:
    fact = order_fact(config, order, state="refund_approved", at=at)
    fact.update(
        {
            "amount_minor": refund.amount_minor,
            "amount_yuan": format_yuan(refund.amount_minor),
            "order_amount_minor": order.amount_minor,
            "out_refund_no": refund.out_refund_no,
            "refund_id": refund.refund_id or "",
            "batch": refund.batch,
            "trace": refund.stan,
        }
    )
    return fact
