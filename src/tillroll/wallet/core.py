"""The provider's decisions as pure functions over plain data (the clock's ``now`` is passed in).

``service.py`` reads the rows, asks these functions what to do, and applies the answer in one
database transaction; nothing here touches a database, a socket or the clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from tillroll.wallet.behaviour import Behaviour, BehaviourKind
from tillroll.wallet.codes import Brand, brand_of
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.states import PAID_STATES, OrderEvent, OrderState


class ErrCode(enum.StrEnum):
    USERPAYING = "USERPAYING"
    SYSTEMERROR = "SYSTEMERROR"
    AUTHCODEEXPIRE = "AUTHCODEEXPIRE"
    AUTH_CODE_INVALID = "AUTH_CODE_INVALID"
    NOTENOUGH = "NOTENOUGH"
    ORDERPAID = "ORDERPAID"
    ORDERREVERSED = "ORDERREVERSED"
    ORDERCLOSED = "ORDERCLOSED"
    OUT_TRADE_NO_USED = "OUT_TRADE_NO_USED"
    PARAM_ERROR = "PARAM_ERROR"
    ORDERNOTEXIST = "ORDERNOTEXIST"
    REVERSE_EXPIRE = "REVERSE_EXPIRE"
    OUT_REFUND_NO_USED = "OUT_REFUND_NO_USED"
    REFUND_FEE_INVALID = "REFUND_FEE_INVALID"
    REFUND_COUNT_EXCEED = "REFUND_COUNT_EXCEED"
    ORDERNOTPAID = "ORDERNOTPAID"
    REFUNDNOTEXIST = "REFUNDNOTEXIST"


# err_code_des: what happened and what to do next, in Chinese and English.
ERR_TEXT: dict[ErrCode, str] = {
    ErrCode.USERPAYING: "需要用户确认，请查询订单 / the customer must confirm on the phone: query the order",
    ErrCode.SYSTEMERROR: "系统错误，结果未知，请查询订单 / system error, outcome unknown: query the order",
    ErrCode.AUTHCODEEXPIRE: "付款码已过期，请刷新后重扫 / payment code expired: refresh it and scan again",
    ErrCode.AUTH_CODE_INVALID: "付款码无效，请刷新后重扫 / payment code not valid: refresh it and scan again",
    ErrCode.NOTENOUGH: "余额不足，请换卡或换付款方式 / balance too low: use another card or way to pay",
    ErrCode.ORDERPAID: "订单已支付 / the order is already paid",
    ErrCode.ORDERREVERSED: "订单已撤销 / the order was reversed: use a new order number",
    ErrCode.ORDERCLOSED: "订单已关闭 / the order was closed: use a new order number",
    ErrCode.OUT_TRADE_NO_USED: "商户订单号重复 / this order number was used with another code or amount",
    ErrCode.PARAM_ERROR: "参数错误 / a field is missing or not valid",
    ErrCode.ORDERNOTEXIST: "订单不存在 / no such order",
    ErrCode.REVERSE_EXPIRE: "订单已超过撤销期限，请退款 / too late to reverse: refund instead",
    ErrCode.OUT_REFUND_NO_USED: "退款单号重复 / this refund number was used for another refund",
    ErrCode.REFUND_FEE_INVALID: "退款金额超过订单可退金额 / refunds would exceed the order's amount",
    ErrCode.REFUND_COUNT_EXCEED: "退款次数超过限制 / too many refunds for this order",
    ErrCode.ORDERNOTPAID: "订单未支付，不能退款 / the order is not paid: nothing to refund",
    ErrCode.REFUNDNOTEXIST: "退款单不存在 / no such refund",
}


@dataclass(frozen=True)
class PayRequest:
    auth_code: str
    out_trade_no: str
    total_fee: int
    body: str | None = None


@dataclass(frozen=True)
class OrderView:
    state: OrderState
    auth_code: str | None  # None: a tombstone
    total_fee: int | None
    created_at: datetime
    confirm_at: datetime | None = None
    close_at: datetime | None = None
    err_code: str | None = None
    refunded_fee: int = 0
    refund_count: int = 0


@dataclass(frozen=True)
class CodeView:
    issued_at: datetime
    used: bool


@dataclass(frozen=True)
class UserView:
    balance_fen: int
    brand: Brand
    behaviour: Behaviour
    error_once_spent: bool


# ---- pay ---------------------------------------------------------------------------------------


def repeated_pay(order: OrderView, req: PayRequest) -> ErrCode:
    """The answer to a pay whose out_trade_no is known: the order as it stands now. SUCCESS is
    never answered twice: a paid order answers ORDERPAID (WALLET.md §3)."""
    if order.auth_code is None:
        return ErrCode.ORDERREVERSED  # the tombstone of a reverse that came first
    if order.auth_code != req.auth_code or order.total_fee != req.total_fee:
        return ErrCode.OUT_TRADE_NO_USED
    if order.state in PAID_STATES:
        return ErrCode.ORDERPAID
    if order.state is OrderState.USERPAYING:
        return ErrCode.USERPAYING
    if order.state is OrderState.CLOSED:
        return ErrCode.ORDERCLOSED
    if order.state is OrderState.REVOKED:
        return ErrCode.ORDERREVERSED
    return ErrCode(order.err_code) if order.err_code else ErrCode.NOTENOUGH  # PAYERROR / NOTPAY


@dataclass(frozen=True)
class CodeRefusal:
    """The code cannot pay: nothing is stored, so a fresh code may use the same order number."""

    err_code: ErrCode
    why: str


def check_code(
    auth_code: str, code: CodeView | None, now: datetime, config: WalletConfig
) -> CodeRefusal | None:
    if brand_of(auth_code) is None:
        return CodeRefusal(ErrCode.AUTH_CODE_INVALID, "not a payment code of any brand")
    if code is None:
        return CodeRefusal(ErrCode.AUTH_CODE_INVALID, "no such payment code")
    if code.used:
        return CodeRefusal(ErrCode.AUTH_CODE_INVALID, "payment code already used")
    if now >= code.issued_at + timedelta(seconds=config.code_ttl_s):
        return CodeRefusal(ErrCode.AUTHCODEEXPIRE, "payment code expired")
    return None


@dataclass(frozen=True)
class NewOrder:
    """What a pay with a live code creates."""

    state: OrderState  # SUCCESS, USERPAYING or PAYERROR
    debit: bool  # take total_fee from the user now
    err_code: ErrCode | None  # the refusal stored on a PAYERROR order
    answer: ErrCode | None  # what this pay answers (None: SUCCESS)
    confirm_at: datetime | None = None
    close_at: datetime | None = None
    delay_s: float = 0.0  # slow:S — answer only after this
    spend_error_once: bool = False


def new_order(user: UserView, req: PayRequest, now: datetime, config: WalletConfig) -> NewOrder:
    kind = user.behaviour.kind
    if kind is BehaviourKind.FAIL:
        code = ErrCode(user.behaviour.err_code)
        return NewOrder(OrderState.PAYERROR, False, code, code)
    if kind in (BehaviourKind.CONFIRM, BehaviourKind.NEVER):
        close_at = now + timedelta(seconds=config.userpaying_close_s)
        confirm_at = (
            now + timedelta(seconds=user.behaviour.seconds_s) if kind is BehaviourKind.CONFIRM else None
        )
        return NewOrder(OrderState.USERPAYING, False, None, ErrCode.USERPAYING, confirm_at, close_at)
    if user.balance_fen < req.total_fee:
        paid = NewOrder(OrderState.PAYERROR, False, ErrCode.NOTENOUGH, ErrCode.NOTENOUGH)
    else:
        paid = NewOrder(OrderState.SUCCESS, True, None, None)
    if kind is BehaviourKind.ERROR_ONCE and not user.error_once_spent:
        return NewOrder(paid.state, paid.debit, paid.err_code, ErrCode.SYSTEMERROR, spend_error_once=True)
    if kind is BehaviourKind.SLOW:
        return NewOrder(paid.state, paid.debit, paid.err_code, paid.answer, delay_s=user.behaviour.seconds_s)
    return paid


# ---- time moves a USERPAYING order -------------------------------------------------------------


class Due(enum.Enum):
    CONFIRM = "confirm"  # the phone confirms (the balance then decides CONFIRM / CONFIRM_REFUSED)
    CLOSE = "close"


def due(order: OrderView, now: datetime) -> tuple[Due, datetime] | None:
    """What has happened to a USERPAYING order by ``now``, and when it happened."""
    if order.state is not OrderState.USERPAYING or order.close_at is None:
        return None
    if order.confirm_at is not None and order.confirm_at < order.close_at and order.confirm_at <= now:
        return Due.CONFIRM, order.confirm_at
    if order.close_at <= now:
        return Due.CLOSE, order.close_at
    return None


def confirm_event(balance_fen: int, total_fee: int) -> OrderEvent:
    return OrderEvent.CONFIRM if balance_fen >= total_fee else OrderEvent.CONFIRM_REFUSED


# ---- reverse -----------------------------------------------------------------------------------


class ReverseAction(enum.Enum):
    TOMBSTONE = "tombstone"  # never seen: remember it REVOKED
    NOTHING = "nothing"  # already REVOKED: answer as the first time
    REVOKE = "revoke"  # unpaid: just REVOKED
    REVOKE_AND_RETURN = "revoke-and-return"  # paid: REVOKED, the whole amount back to the user
    REFUSE = "refuse"


@dataclass(frozen=True)
class ReverseDecision:
    action: ReverseAction
    err_code: ErrCode | None = None
    recall: bool = False
    why: str = ""


def decide_reverse(order: OrderView | None, now: datetime, config: WalletConfig) -> ReverseDecision:
    if order is None:
        return ReverseDecision(ReverseAction.TOMBSTONE)
    if order.state is OrderState.REVOKED:
        return ReverseDecision(ReverseAction.NOTHING)
    if order.state is OrderState.USERPAYING:
        return ReverseDecision(ReverseAction.REFUSE, ErrCode.USERPAYING, recall=True)
    if now > order.created_at + timedelta(seconds=config.reverse_window_s):
        return ReverseDecision(ReverseAction.REFUSE, ErrCode.REVERSE_EXPIRE)
    if order.state is OrderState.REFUND:
        # Refunds were already given from it: reversing would have to undo them. Refund the rest.
        return ReverseDecision(
            ReverseAction.REFUSE,
            ErrCode.REVERSE_EXPIRE,
            why="订单已有退款，请退款剩余金额 / the order has refunds: refund the rest instead",
        )
    if order.state is OrderState.SUCCESS:
        return ReverseDecision(ReverseAction.REVOKE_AND_RETURN)
    return ReverseDecision(ReverseAction.REVOKE)  # CLOSED, PAYERROR, NOTPAY


# ---- refund ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefundRequest:
    out_trade_no: str
    out_refund_no: str
    total_fee: int
    refund_fee: int


@dataclass(frozen=True)
class RefundView:
    out_trade_no: str
    total_fee: int
    refund_fee: int


def repeated_refund(existing: RefundView, req: RefundRequest) -> ErrCode | None:
    """None: the same refund asked again (answer with its id and current status)."""
    same = (existing.out_trade_no, existing.total_fee, existing.refund_fee) == (
        req.out_trade_no,
        req.total_fee,
        req.refund_fee,
    )
    return None if same else ErrCode.OUT_REFUND_NO_USED


def check_refund(order: OrderView | None, req: RefundRequest, config: WalletConfig) -> ErrCode | None:
    """None: accept the refund (PROCESSING)."""
    if order is None:
        return ErrCode.ORDERNOTEXIST
    if order.state not in PAID_STATES or order.total_fee is None:
        return ErrCode.ORDERNOTPAID
    if req.total_fee != order.total_fee:
        return ErrCode.PARAM_ERROR
    if order.refund_count >= config.refunds_max:
        return ErrCode.REFUND_COUNT_EXCEED
    if order.refunded_fee + req.refund_fee > order.total_fee:
        return ErrCode.REFUND_FEE_INVALID
    return None


# ---- the wallet app's messages (WALLET.md §2) --------------------------------------------------


def paid_text(merchant_name: str, amount_text: str) -> str:
    return f"您在{merchant_name}付款{amount_text}元"


def refunded_text(merchant_name: str, amount_text: str) -> str:
    return f"{merchant_name}退款{amount_text}元已到账"


def reversed_text(merchant_name: str, amount_text: str) -> str:
    return f"{merchant_name}的付款{amount_text}元已撤销，已退回"
