"""What one terminal operation ended in, as the cashier's screen shows it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tillroll.iso8583.codes import ResponseCode
from tillroll.terminal.states import Outcome, ReceiptState


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
    e_receipt_url: str | None = None  # the receipt on the back office (its slip's QR code)
    detail: str = ""
    txn_id: int | None = None
    order_no: str | None = None  # the wallet rail's out_trade_no (of a refund: the refunded order's)

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
