"""The wallet rail's order states, their transition table, and payment codes. Pure.

A wallet order (WALLET.md, "merchant scans the customer's code") moves through
:class:`WalletState`; every change goes through :func:`tillroll.terminal.states.check` against
:data:`WALLET_TRANSITIONS`, so an impossible move is a bug, never a silent overwrite::

    CREATED ──> SUCCESS                      (pay answered SUCCESS, verified)
       │ ├────> REFUSED                      (a final refusal: nothing was charged)
       │ ├────> NOT_SENT                     (the connection was never made: nothing left)
       │ └────> UNKNOWN ──> SUCCESS | CLOSED | REVOKED   (found by query)
       │           │
       └───────────┴──> REVERSING ──> REVOKED           (the deadline passed: 撤销, retried until answered)

``CREATED`` is journalled (with the order number) before the first byte of ``pay`` leaves; an
order found in ``CREATED`` or ``UNKNOWN`` when a terminal opens was left by a process that died
and is queried, then reversed. ``UNKNOWN`` always has a deadline (``query_until``); past it the
order is reversed, never left, never assumed paid.

Refunds of a wallet order use the card rail's refund machine
(:data:`tillroll.terminal.states.REFUND_TRANSITIONS`): requested → submitted → approved |
declined | unknown → submitted again, with the same ``out_refund_no``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass


class WalletState(enum.StrEnum):
    CREATED = "created"  # journalled with its out_trade_no; pay may be on the wire
    UNKNOWN = "unknown"  # USERPAYING, SYSTEMERROR, a timeout, a broken connection: querying
    SUCCESS = "success"  # paid, confirmed by a verified pay or query answer
    REFUSED = "refused"  # a verified final refusal (expired code, not enough money, ...)
    NOT_SENT = "not_sent"  # the connection to the wallet was never made: nothing was sent
    CLOSED = "closed"  # the wallet closed it unpaid (never confirmed)
    REVERSING = "reversing"  # still unknown at the deadline: a reverse is pending until answered
    REVOKED = "revoked"  # reversed (撤销): if it had been paid, the money is back


WALLET_TRANSITIONS: Mapping[WalletState, frozenset[WalletState]] = {
    WalletState.CREATED: frozenset(
        {
            WalletState.SUCCESS,
            WalletState.REFUSED,
            WalletState.NOT_SENT,
            WalletState.UNKNOWN,
            WalletState.REVERSING,
        }
    ),
    WalletState.UNKNOWN: frozenset(
        {WalletState.SUCCESS, WalletState.CLOSED, WalletState.REVOKED, WalletState.REVERSING}
    ),
    WalletState.REVERSING: frozenset({WalletState.REVOKED}),
    WalletState.SUCCESS: frozenset(),
    WalletState.REFUSED: frozenset(),
    WalletState.NOT_SENT: frozenset(),
    WalletState.CLOSED: frozenset(),
    WalletState.REVOKED: frozenset(),
}

# Orders whose outcome is not final: the terminal is still working on them.
WALLET_OPEN = frozenset({WalletState.CREATED, WalletState.UNKNOWN, WalletState.REVERSING})
# Final states after which the customer may have been charged and is told it was undone.
WALLET_CANCELLED = frozenset({WalletState.CLOSED, WalletState.REVOKED})


class Brand(enum.StrEnum):
    WX = "wx"
    ALI = "ali"

    @property
    def label(self) -> str:
        """'微信支付 WeChat Pay' / '支付宝 Alipay'."""
        return _BRAND_LABEL[self]

    @property
    def zh(self) -> str:
        return _BRAND_LABEL[self].split(" ", 1)[0]


_BRAND_LABEL = {Brand.WX: "微信支付 WeChat Pay", Brand.ALI: "支付宝 Alipay"}

_WX_CODE = re.compile(r"^1[0-5][0-9]{16}$")  # 18 digits starting 10-15
_ALI_CODE = re.compile(r"^(2[5-9]|30)[0-9]{14,22}$")  # 16-24 digits starting 25-30


class PaymentCodeError(ValueError):
    """What the cashier scanned is not a payment code; the message says why (masked)."""


def mask_code(code: str) -> str:
    """A payment code as kept and shown: first 6, last 4, the rest ``*``."""
    if len(code) <= 10:
        return "*" * len(code)
    return code[:6] + "*" * (len(code) - 10) + code[-4:]


@dataclass(frozen=True)
class PaymentCode:
    code: str  # the full code: sent once in pay, never journalled, logged or shown
    brand: Brand

    @property
    def masked(self) -> str:
        return mask_code(self.code)

    def __repr__(self) -> str:
        return f"PaymentCode({self.masked}, {self.brand})"

    __str__ = __repr__


def parse_payment_code(text: str) -> PaymentCode:
    """The brand comes from the prefix (WALLET.md §2)."""
    code = text.strip()
    if _WX_CODE.match(code):
        return PaymentCode(code, Brand.WX)
    if _ALI_CODE.match(code):
        return PaymentCode(code, Brand.ALI)
    shown = mask_code(code) if code.isdigit() else f"{len(code)} characters"
    raise PaymentCodeError(
        f"payment code {shown} is not a wallet code: 18 digits starting 10-15 (微信支付) or 16-24 "
        "digits starting 25-30 (支付宝); scan the customer's code again"
    )
