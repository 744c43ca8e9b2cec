"""The reconciliation's vocabulary: exception classes, the exception's states and actions.

Pure data, shared by the matcher (``tillroll.recon``), the exception service and the console.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ExceptionClass(enum.StrEnum):
    CHARGED_NO_RECEIPT = (
        "charged_no_receipt"  # host/wallet approved; the terminal has no approval or no receipt
    )
    RECEIPT_NO_PAYMENT = "receipt_no_payment"  # a receipt printed, no settled payment behind it
    REFUND_STUCK = "refund_stuck"  # a refund requested and not final within its deadline
    NOTIFIED_NOT_FINAL = "notified_not_final"  # told "paid", ended otherwise, no later notice
    SIGNIN_FAILURES = "signin_failures"  # a terminal failing to sign in / sessions expiring in hours
    AMOUNT_MISMATCH = "amount_mismatch"
    MISSING_ON_ONE_SIDE = "missing_on_one_side"
    DUPLICATE = "duplicate"


class ExceptionState(enum.StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    WRITTEN_OFF = "written_off"


EXCEPTION_TRANSITIONS: Mapping[ExceptionState, frozenset[ExceptionState]] = {
    ExceptionState.OPEN: frozenset(
        {ExceptionState.IN_PROGRESS, ExceptionState.RESOLVED, ExceptionState.WRITTEN_OFF}
    ),
    ExceptionState.IN_PROGRESS: frozenset(
        {ExceptionState.OPEN, ExceptionState.RESOLVED, ExceptionState.WRITTEN_OFF}
    ),
    ExceptionState.RESOLVED: frozenset(),
    ExceptionState.WRITTEN_OFF: frozenset(),
}
EXCEPTION_FINAL = frozenset({ExceptionState.RESOLVED, ExceptionState.WRITTEN_OFF})


class ActionKind(enum.StrEnum):
    REVERSE = "reverse"  # undo a charge the terminal never saw (host-side card reversal, wallet reverse)
    REPRINT = "reprint"  # the terminal prints the owed slip again
    SEND_E_RECEIPT = "send_e_receipt"  # the customer is sent the e-receipt link
    RETRY_REFUND = "retry_refund"  # the stuck refund is asked again with the same request
    ESCALATE = "escalate"  # past the retry limit: a person must act
    CONTACT_CUSTOMER = "contact_customer"  # a follow-up: tell the customer, collect again
    SEND_NOTICE = "send_notice"  # the missing "it did not go through" notice to the customer
    ALERT = "alert"  # the merchant is alerted (sign-in failures)
    ASSIGN = "assign"  # an owner takes the exception (open -> in progress)
    RESOLVE = "resolve"
    WRITE_OFF = "write_off"
    NOTE = "note"


class ActionOutcome(enum.StrEnum):
    DONE = "done"  # the action did what it says
    FAILED = "failed"  # it could not (detail says why); the exception stays where it was
    SKIPPED = "skipped"  # nothing to do (already done by someone or something else)
    QUEUED = "queued"  # handed to a relay or a terminal; its outcome comes later


# The automatic action of each class when the matcher opens it (issue #8's table). ``None``: the
# record itself is the action (an open exception for a person).
AUTOMATIC_ACTIONS: Mapping[ExceptionClass, tuple[ActionKind, ...]] = {
    # reverse if the terminal never saw the approval; reprint + e-receipt if it did (the matcher
    # puts ``terminal_saw_approval`` in the evidence and the service picks the branch)
    ExceptionClass.CHARGED_NO_RECEIPT: (ActionKind.REVERSE, ActionKind.REPRINT, ActionKind.SEND_E_RECEIPT),
    ExceptionClass.RECEIPT_NO_PAYMENT: (ActionKind.CONTACT_CUSTOMER,),
    ExceptionClass.REFUND_STUCK: (ActionKind.RETRY_REFUND, ActionKind.ESCALATE),
    ExceptionClass.NOTIFIED_NOT_FINAL: (ActionKind.SEND_NOTICE,),
    ExceptionClass.SIGNIN_FAILURES: (ActionKind.ALERT,),
    ExceptionClass.AMOUNT_MISMATCH: (),
    ExceptionClass.MISSING_ON_ONE_SIDE: (),
    ExceptionClass.DUPLICATE: (),
}


class IllegalExceptionTransition(RuntimeError):
    def __init__(self, exception_id: int, old: ExceptionState, new: ExceptionState) -> None:
        super().__init__(f"exception {exception_id}: {old} -> {new} is not a transition")
        self.exception_id, self.old, self.new = exception_id, old, new


def check_transition(exception_id: int, old: ExceptionState, new: ExceptionState) -> None:
    if new not in EXCEPTION_TRANSITIONS[old]:
        raise IllegalExceptionTransition(exception_id, old, new)
