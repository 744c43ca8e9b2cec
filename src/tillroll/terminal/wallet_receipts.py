"""Slips, e-receipts and announced facts of the wallet rail.

A wallet payment's slip is printed only for a confirmed SUCCESS (a verified pay or query answer,
journalled first): trans type 扫码支付 QR PAY, the brand (微信支付 / 支付宝, from the code's
prefix) where a card slip has the issuer, the wallet's transaction id as the reference number,
and the order number with the **masked** payment code in the note. A refund's slip is a REFUND
slip naming the original order. A printer failure leaves the payment standing, the receipt owed
and an HTML e-receipt written at once, as on the card rail (``receipts.py``).

:func:`order_fact`, :func:`cancelled_order_fact` and :func:`refund_fact` are what ``announce``
writes, in the card rail's fact format (``facts.py``, checked by the back office's intake): rail
``wallet``, amount, merchant, time (UTC and merchant-local), the brand, the **masked** code in
``card_masked``, the order (and refund) number, and for a receipt the slip and the signed token of
its link. Never the whole code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tillroll.clock import Clock, to_merchant_local
from tillroll.crypto.backoffice import backoffice_key, day_number, make_token
from tillroll.terminal.config import E_RECEIPT_DIR, TerminalConfig
from tillroll.terminal.facts import cancelled_fact, receipt_fact
from tillroll.terminal.journal import Journal
from tillroll.terminal.receipt import Slip, TransType
from tillroll.terminal.receipts import Receipts
from tillroll.terminal.states import AlertKind, ReceiptState
from tillroll.terminal.wallet_journal import WalletJournal, WalletOrder, WalletRefund
from tillroll.terminal.wallet_states import WalletState

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

    def token(self, reference: str, at: datetime) -> str:
        """The signed token of a receipt's link on the back office (``crypto/backoffice.py``)."""
        return make_token(backoffice_key(self.config.tmk), self.config.tid, reference, day_number(at))

    def url(self, reference: str, at: datetime | None) -> str | None:
        """The receipt's address on the back office (its slip's QR code), when one is set up."""
        if self.config.backoffice_url is None or at is None:
            return None
        return f"{self.config.backoffice_url.rstrip('/')}/r/{self.token(reference, at)}"

    def order_slip(self, order: WalletOrder) -> Slip:
        paid = order.state is WalletState.SUCCESS
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
            e_receipt_url=self.url(order.out_trade_no, order.paid_at or order.updated_at) if paid else None,
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
            e_receipt_url=self.url(f"{order.out_trade_no}:{refund.out_refund_no}", refund.approved_at),
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


def wallet_reference(order: WalletOrder, refund: WalletRefund | None = None) -> str:
    """The fact's key on the wallet rail: the order number (``<order>:<refund number>``)."""
    return order.out_trade_no if refund is None else f"{order.out_trade_no}:{refund.out_refund_no}"


def _extra(order: WalletOrder, refund: WalletRefund | None = None) -> dict[str, str]:
    extra = {"order_no": order.out_trade_no, "brand": order.brand.value}
    if refund is not None:
        extra.update({"refund_no": refund.out_refund_no, "orig_reference": order.out_trade_no})
    return extra


def order_fact(receipts: WalletReceipts, order: WalletOrder) -> dict[str, Any]:
    """The ``e_receipt`` fact of a paid order (``facts.py``'s format, shared with the card rail)."""
    at = order.paid_at or order.updated_at
    return receipt_fact(
        receipts.order_slip(order),
        rail=RAIL,
        at_utc=at,
        merchant_tz=receipts.config.merchant_tz,
        token=receipts.token(wallet_reference(order), at),
        card_masked=order.code_masked,
        extra=_extra(order),
    )


def cancelled_order_fact(
    receipts: WalletReceipts, order: WalletOrder, *, reason: str, at: datetime
) -> dict[str, Any]:
    """The ``payment_cancelled`` fact of an order closed or reversed after pay was sent."""
    fact = cancelled_fact(
        receipts.order_slip(order),
        rail=RAIL,
        at_utc=at,
        merchant_tz=receipts.config.merchant_tz,
        reason=reason,
        card_masked=order.code_masked,
    )
    fact.update(_extra(order))
    return fact


def refund_fact(receipts: WalletReceipts, refund: WalletRefund, order: WalletOrder) -> dict[str, Any]:
    """The ``refund_approved`` fact of an approved refund, with its own receipt link."""
    at = refund.approved_at or refund.updated_at
    return receipt_fact(
        receipts.refund_slip(refund, order),
        rail=RAIL,
        at_utc=at,
        merchant_tz=receipts.config.merchant_tz,
        token=receipts.token(wallet_reference(order, refund), at),
        card_masked=order.code_masked,
        extra=_extra(order, refund),
    )
