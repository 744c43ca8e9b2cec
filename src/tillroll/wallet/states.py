"""Order and refund states, the events that move them, and the only transitions allowed. Pure."""

from __future__ import annotations

import enum


class OrderState(enum.StrEnum):
    """An order's ``trade_state`` (WALLET.md §3 query)."""

    USERPAYING = "USERPAYING"  # the customer must confirm on the phone
    SUCCESS = "SUCCESS"  # paid
    REFUND = "REFUND"  # paid, some refunded (or being refunded)
    NOTPAY = "NOTPAY"  # in the contract; this provider never leaves an order in it
    CLOSED = "CLOSED"  # never confirmed: closed by the provider
    REVOKED = "REVOKED"  # reversed (a paid one refunded whole), or a tombstone
    PAYERROR = "PAYERROR"  # refused (balance, the user's phone)


class OrderEvent(enum.StrEnum):
    CONFIRM = "confirm"  # the phone said yes and the balance was enough
    CONFIRM_REFUSED = "confirm-refused"  # the phone said yes, the balance was not enough
    CLOSE = "close"  # USERPAYING past its close time
    REVERSE = "reverse"
    REFUND = "refund"  # a refund accepted


PAID_STATES = frozenset({OrderState.SUCCESS, OrderState.REFUND})
FINAL_STATES = frozenset({OrderState.CLOSED, OrderState.REVOKED, OrderState.PAYERROR})

# The states a pay may create an order in, and a reverse for an unseen order (the tombstone).
INITIAL_STATES = frozenset(
    {OrderState.SUCCESS, OrderState.USERPAYING, OrderState.PAYERROR, OrderState.REVOKED}
)

ORDER_TRANSITIONS: dict[tuple[OrderState, OrderEvent], OrderState] = {
    (OrderState.USERPAYING, OrderEvent.CONFIRM): OrderState.SUCCESS,
    (OrderState.USERPAYING, OrderEvent.CONFIRM_REFUSED): OrderState.PAYERROR,
    (OrderState.USERPAYING, OrderEvent.CLOSE): OrderState.CLOSED,
    (OrderState.SUCCESS, OrderEvent.REVERSE): OrderState.REVOKED,
    (OrderState.NOTPAY, OrderEvent.REVERSE): OrderState.REVOKED,
    (OrderState.CLOSED, OrderEvent.REVERSE): OrderState.REVOKED,
    (OrderState.PAYERROR, OrderEvent.REVERSE): OrderState.REVOKED,
    (OrderState.REVOKED, OrderEvent.REVERSE): OrderState.REVOKED,  # a repeated reverse
    (OrderState.SUCCESS, OrderEvent.REFUND): OrderState.REFUND,
    (OrderState.REFUND, OrderEvent.REFUND): OrderState.REFUND,
}


class IllegalTransition(RuntimeError):
    """A bug: the code tried to move an order along an edge the table does not have."""


def next_state(state: OrderState, event: OrderEvent) -> OrderState:
    try:
        return ORDER_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"order in {state} cannot take {event}") from None


class RefundStatus(enum.StrEnum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"  # money back with the customer
    CHANGE = "CHANGE"  # failed, money not moved (in the contract; a balance refund here never fails)


REFUND_TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    RefundStatus.PROCESSING: frozenset({RefundStatus.SUCCESS, RefundStatus.CHANGE}),
    RefundStatus.SUCCESS: frozenset(),
    RefundStatus.CHANGE: frozenset(),
}


def check_refund_step(old: RefundStatus, new: RefundStatus) -> RefundStatus:
    if new not in REFUND_TRANSITIONS[old]:
        raise IllegalTransition(f"refund in {old} cannot become {new}")
    return new
