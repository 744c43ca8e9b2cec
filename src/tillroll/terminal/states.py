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

A refund (0220) is never reversed: it is an idempotent request with its own table,
:data:`REFUND_TRANSITIONS` (states in :class:`RefundState`)::

    REQUESTED ──> SUBMITTED ──> APPROVED | DECLINED
                     │  ^
                     v  │ (retried: the SAME request, same STAN; the host replays its answer)
                   UNKNOWN   (no answer, a cut line, a bad MAC, 96 — never an end: `recover`)

A settlement (0500) has :data:`SETTLEMENT_TRANSITIONS` (states in :class:`SettlementState`)::

    REQUESTED ──> BALANCED | NOT_BALANCED ──> UPLOADED     (batch upload done)
        ├───────> DECLINED  (a verified non-approval: nothing settled)
        └───────> UNKNOWN   (no verified answer after the retries; the batch may be closed)
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
    REFUND = "refund"


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


class RefundState(enum.StrEnum):
    """The state of a refund entry (kind ``refund``); its own machine, see the module doc."""

    REQUESTED = "requested"  # journalled with its STAN and fields, nothing sent yet
    SUBMITTED = "submitted"  # bytes may have left the device
    APPROVED = "approved"  # MAC-verified 00, journalled: the money goes back, a slip prints
    DECLINED = "declined"  # the host answered a verified non-approval (61, 64, 12, 25...)
    UNKNOWN = "unknown"  # no verified final answer: retried with the same request until one


class SettlementState(enum.StrEnum):
    REQUESTED = "requested"  # totals journalled, 0500 about to be / being sent
    BALANCED = "balanced"  # 0510 flag 1
    NOT_BALANCED = "not_balanced"  # 0510 flag 2 (or 3): the batch upload is due
    UPLOADED = "uploaded"  # every item and the end message answered 00
    DECLINED = "declined"  # the host answered a non-approval (e.g. 30): nothing was settled
    UNKNOWN = "unknown"  # no verified 0510: the host may have closed the batch


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

REFUND_TRANSITIONS: Mapping[RefundState, frozenset[RefundState]] = {
    RefundState.REQUESTED: frozenset({RefundState.SUBMITTED, RefundState.UNKNOWN}),
    RefundState.SUBMITTED: frozenset({RefundState.APPROVED, RefundState.DECLINED, RefundState.UNKNOWN}),
    RefundState.UNKNOWN: frozenset({RefundState.SUBMITTED}),  # retried: the same request again
    RefundState.APPROVED: frozenset(),
    RefundState.DECLINED: frozenset(),
}
# A refund in one of these may still move money: it is retried, never dropped or repeated anew.
REFUND_OPEN = frozenset({RefundState.REQUESTED, RefundState.SUBMITTED, RefundState.UNKNOWN})

SETTLEMENT_TRANSITIONS: Mapping[SettlementState, frozenset[SettlementState]] = {
    SettlementState.REQUESTED: frozenset(
        {
            SettlementState.BALANCED,
            SettlementState.NOT_BALANCED,
            SettlementState.DECLINED,
            SettlementState.UNKNOWN,
        }
    ),
    SettlementState.NOT_BALANCED: frozenset({SettlementState.UPLOADED}),
    SettlementState.BALANCED: frozenset(),
    SettlementState.UPLOADED: frozenset(),
    SettlementState.DECLINED: frozenset(),
    SettlementState.UNKNOWN: frozenset(),
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
    REFUND_UNKNOWN = "refund_unknown"  # recorded, retried later; never "system error"
    REFUND_BLOCKED = "refund_blocked"  # an earlier refund of the same original is still open
    SETTLED = "settled"  # 0510 balanced
    SETTLED_NOT_BALANCED = "settled_not_balanced"  # 0510 not balanced: batch uploaded
    SETTLEMENT_UNKNOWN = "settlement_unknown"
    SETTLEMENT_BLOCKED = "settlement_blocked"  # a refund's outcome is still open
    # the wallet rail (wallet.py)
    WALLET_NOT_SENT = "wallet_not_sent"  # the wallet could not be reached: nothing was sent
    WALLET_CANCELLED = "wallet_cancelled"  # not completed: closed or reversed, nothing kept
    WALLET_PENDING = "wallet_pending"  # outcome unknown past the deadline: the reverse is pending

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
    Outcome.REFUND_UNKNOWN: (
        "退货结果未知，已记录并将自动重试，不会重复退款 / refund outcome not known yet: it is "
        "recorded and will be sent again (the same request, so never paid twice) — run "
        "`tillroll pos recover` when the line is back; do not refund this sale any other way"
    ),
    Outcome.REFUND_BLOCKED: (
        "该笔原交易有未完成的退货，请先处理 / an earlier refund of this sale is not finished: "
        "nothing new was sent; run `tillroll pos recover` to complete it first"
    ),
    Outcome.SETTLED: "结算完成，对账平 / settlement done: balanced with the host",
    Outcome.SETTLED_NOT_BALANCED: (
        "结算完成，对账不平，已上送明细 / settlement done, NOT balanced: the batch's items were "
        "uploaded to the host; the acquirer reconciles the differences"
    ),
    Outcome.SETTLEMENT_UNKNOWN: (
        "结算结果未知 / settlement outcome not known (see the cause): while the batch is open, run "
        "`tillroll pos settle` again (the same request is repeated safely); if the host has "
        "closed it, call the acquirer with the batch number"
    ),
    Outcome.WALLET_NOT_SENT: (
        "无法连接钱包，未发送，未扣款 / cannot reach the wallet: nothing was sent, nothing charged — "
        "check the network and try again"
    ),
    Outcome.WALLET_CANCELLED: (
        "支付未完成，已撤销，如已扣款将全额退回 / payment not completed: cancelled; any amount taken "
        "goes back to the customer in full — ask for the payment again"
    ),
    Outcome.WALLET_PENDING: (
        "支付结果未知，正在撤销，请勿交付商品 / outcome unknown: the payment is being cancelled (the "
        "reverse is retried automatically, or run `tillroll pos recover`); do not hand over goods"
    ),
    Outcome.SETTLEMENT_BLOCKED: (
        "有未完成的冲正或退货，暂不能结算 / a reversal or refund is still open: nothing was sent; "
        "run `tillroll pos recover`, then settle"
    ),
}


class AlertKind(enum.StrEnum):
    """What an alert in the journal is about (``alerts.kind``; shown by `pos journal`/`pos status`)."""

    INTERRUPTED = "interrupted"  # a request was in flight when the process stopped
    REVERSAL_PENDING = "reversal_pending"  # a reversal's tries of this run are used up
    REVERSAL_OVERDUE = "reversal_overdue"  # a reversal pending past reversal_alert_s (pos run)
    SIGN_IN_FAILURES = "sign_in_failures"  # sign-in failed SIGN_IN_ALERT_AFTER times in a row (pos run)
    RECEIPT_OWED = "receipt_owed"  # the printer failed: the receipt is owed
    E_RECEIPT_FAILED = "e_receipt_failed"  # ... and the e-receipt could not be written either
    REFUND_UNKNOWN = "refund_unknown"
    SETTLEMENT_UNKNOWN = "settlement_unknown"
    BATCH_UPLOAD = "batch_upload"
    SIGN_IN_KEYS = "sign_in_keys"  # the sign-in answer's keys failed their check values
    SIGN_IN_AFTER_SETTLEMENT = "sign_in_after_settlement"
    BATCH_CLOSED_BY_HOST = "batch_closed_by_host"  # PROFILE §6
    WALLET_REVERSE_PENDING = "wallet_reverse_pending"  # a wallet order's reverse not answered yet
    WALLET_REVERSE_EXPIRED = "wallet_reverse_expired"  # the wallet no longer reverses it (7 days)
    FACT_REFUSED = "fact_refused"  # the back office refused a fact for good (dead letter)
