"""Before anything new is sent: settle what a dead process left in the journal, sign in if due,
and send the pending reversals (a new transaction never overtakes one)."""

from __future__ import annotations

from tillroll.clock import Clock
from tillroll.terminal.journal import Journal
from tillroll.terminal.receipts import Receipts
from tillroll.terminal.result import Result
from tillroll.terminal.reversals import Reversals
from tillroll.terminal.session import Sessions
from tillroll.terminal.states import AlertKind, Outcome, TxnKind, TxnState


class Preflight:
    def __init__(
        self, clock: Clock, journal: Journal, sessions: Sessions, reversals: Reversals, receipts: Receipts
    ) -> None:
        self.clock = clock
        self.journal = journal
        self.sessions = sessions
        self.reversals = reversals
        self.receipts = receipts

    def recover_in_flight(self) -> None:
        """Entries left PENDING/SENT by a process that died: a sale/void becomes UNKNOWN (its
        reversal 06 is already pending); an inquiry is forgotten. Approvals whose receipt step
        never ran are marked owed, with an e-receipt."""
        now = self.clock.now()
        for entry in self.journal.in_flight():
            with self.journal.begin() as conn:
                if entry.kind is TxnKind.BALANCE:
                    self.journal.move(conn, entry.id, TxnState.NOT_PROCESSED, now, note="interrupted")
                else:
                    self.journal.move(conn, entry.id, TxnState.UNKNOWN, now, note="interrupted in flight")
            if entry.kind is not TxnKind.BALANCE:
                self.journal.alert(
                    AlertKind.INTERRUPTED, f"trace {entry.stan} was in flight: reversal 06 due", now, entry.id
                )
        for entry in self.journal.approved_without_receipt():
            self.receipts.owe(entry, "the receipt step did not run")

    def prepare(self) -> Result | None:
        """Before a new transaction: settle the journal, sign in if due, send pending reversals.
        Returns a result when the transaction must not start."""
        self.recover_in_flight()
        if not self.sessions.ensure():
            return Result(Outcome.SIGN_IN_FAILED, detail="nothing was sent")
        if self.journal.pending_reversals() and self.reversals.flush():
            return Result(Outcome.BLOCKED_BY_REVERSAL)
        if not self.sessions.ensure():
            return Result(Outcome.SIGN_IN_FAILED, detail="nothing was sent")
        return None
