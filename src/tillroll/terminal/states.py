"""States of the terminal's journal entries and their explicit transition tables. Pure.

A financial entry (sale, void, balance inquiry) moves through :class:`TxnState`; a sale or void
also owns one :class:`ReversalState` row from before its first byte leaves the device; an approval
owns a :class:`ReceiptState`. Every change of state goes through :func:`check` against these
tables, so an impossible move is a bug that raises :class:`IllegalTransition`, never a silent
overwrite.

::

    PENDING ──> SENT ──> APPROVED ──> (VOIDED) / REVERSAL_PENDING ──> REVERSED
       │          ├───> DECLINED
       │          ├───> NOT_PROCESSED   (the host said it did nothing: 77, or no line at all)
       └──────────┴───> UNKNOWN ──> REVERSED   (no verified answer: reversal 98 / A0 / 06)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar


class IllegalTransition(RuntimeError):
    """A bug: the engine tried a move the transition table does not allow."""


class TxnKind(enum.StrEnum):
    SALE = "sale"
    VOID = "void"
    BALANCE = "balance"


class TxnState(enum.StrEnum):
    PENDING = "pending"  # journalled (with a pending reversal 06 for a sale/void), nothing sent yet
    SENT = "sent"  # bytes may have left the device
    APPROVED = "approved"  # MAC-verified 00, journalled
    DECLINED = "declined"  # the host answered with a non-approval (verified, or "not processed")
    NOT_PROCESSED = "not_processed"  # certainly not done by the host (no line, 77): safe to forget
    UNKNOWN = "unknown"  # no verified answer: a reversal is pending until answered
    REVERSAL_PENDING = "reversal_pending"  # approved, but the terminal could not complete it (96)
    REVERSED = "reversed"  # the host answered the reversal 00
    VOIDED = "voided"  # a sale whose void was approved


class ReversalState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"  # answered 00 (MAC-verified)
    CANCELLED = "cancelled"  # the original got a verified answer: nothing to undo


class ReversalReason(enum.StrEnum):
    """Field 39 of a reversal (PROFILE §3)."""

    NO_RESPONSE = "98"
    MAC_FAILED = "A0"
    CANNOT_COMPLETE = "96"
    OTHER = "06"


class ReceiptState(enum.StrEnum):
    NONE = "none"  # not an approval (or not yet)
    OWED = "owed"  # approved, not printed: an e-receipt was written, `reprint` clears it
    PRINTED = "printed"


TXN_TRANSITIONS: Mapping[TxnState, frozenset[TxnState]] = {
    TxnState.PENDING: frozenset({TxnState.SENT, TxnState.NOT_PROCESSED, TxnState.UNKNOWN}),
    TxnState.SENT: frozenset(
        {TxnState.APPROVED, TxnState.DECLINED, TxnState.NOT_PROCESSED, TxnState.UNKNOWN}
    ),
    TxnState.APPROVED: frozenset({TxnState.REVERSAL_PENDING, TxnState.VOIDED}),
    TxnState.UNKNOWN: frozenset({TxnState.REVERSED}),
    TxnState.REVERSAL_PENDING: frozenset({TxnState.REVERSED}),
    TxnState.VOIDED: frozenset({TxnState.APPROVED}),  # its void was reversed
    TxnState.DECLINED: frozenset(),
    TxnState.NOT_PROCESSED: frozenset(),
    TxnState.REVERSED: frozenset(),
}

REVERSAL_TRANSITIONS: Mapping[ReversalState, frozenset[ReversalState]] = {
    ReversalState.PENDING: frozenset({ReversalState.DONE, ReversalState.CANCELLED}),
    ReversalState.DONE: frozenset(),
    ReversalState.CANCELLED: frozenset(),
}

RECEIPT_TRANSITIONS: Mapping[ReceiptState, frozenset[ReceiptState]] = {
    ReceiptState.NONE: frozenset({ReceiptState.OWED, ReceiptState.PRINTED}),
    ReceiptState.OWED: frozenset({ReceiptState.PRINTED}),
    ReceiptState.PRINTED: frozenset({ReceiptState.PRINTED}),  # a reprint
}

# States in which a sale/void may still have moved money the terminal does not know about.
IN_FLIGHT = frozenset({TxnState.PENDING, TxnState.SENT})
FINAL = frozenset(s for s, nxt in TXN_TRANSITIONS.items() if not nxt)


S = TypeVar("S", bound=enum.Enum)


def check(table: Mapping[S, frozenset[S]], current: S, new: S) -> None:
    if new not in table[current]:
        raise IllegalTransition(f"{type(current).__name__} {current.value} -> {new.value} is not allowed")


class Outcome(enum.StrEnum):
    """What the cashier and the customer are told; ``text`` says it in 中文 and English."""

    APPROVED = "approved"
    DECLINED = "declined"
    REVERSED = "reversed"
    REVERSAL_PENDING = "reversal_pending"
    HOST_UNREACHABLE = "host_unreachable"
    SIGN_IN_FAILED = "sign_in_failed"
    BLOCKED_BY_REVERSAL = "blocked_by_reversal"
    NOT_FOUND = "not_found"
    NO_ANSWER = "no_answer"  # an inquiry got no answer: nothing moved, try again
    PRINT_FAILED = "print_failed"
    DONE = "done"  # sign-in, sign-out, recover, reprint: the command did what it says

    @property
    def text(self) -> str:
        return _OUTCOME_TEXT[self]


_OUTCOME_TEXT: dict[Outcome, str] = {
    Outcome.APPROVED: "交易成功 / approved",
    Outcome.DECLINED: "交易失败 / declined",
    Outcome.REVERSED: (
        "交易未完成，已自动冲正，未扣款 / not completed: reversed automatically, the card is not "
        "charged — try again"
    ),
    Outcome.REVERSAL_PENDING: (
        "交易结果未知，冲正待发送，未成功交易不会扣款 / outcome unknown: a reversal is pending and "
        "will be sent automatically (or run `tillroll pos recover`); do not hand over goods"
    ),
    Outcome.HOST_UNREACHABLE: (
        "无法连接主机，交易未发送 / cannot reach the host on either line: nothing was sent, check "
        "the network and try again"
    ),
    Outcome.SIGN_IN_FAILED: (
        "签到失败 / sign-in failed: check the terminal's TMK and registration with the acquirer"
    ),
    Outcome.BLOCKED_BY_REVERSAL: (
        "有未完成的冲正，请稍后重试 / a reversal is still pending: nothing new was sent; check the "
        "line, then run `tillroll pos recover`"
    ),
    Outcome.NOT_FOUND: "原交易不存在 / original transaction not found in this batch: check the trace",
    Outcome.NO_ANSWER: "主机无应答，未扣款 / no answer from the host: nothing was charged, try again",
    Outcome.PRINT_FAILED: (
        "打印失败，凭条仍欠 / printing failed: the receipt is still owed, fix the printer and reprint"
    ),
    Outcome.DONE: "完成 / done",
}
