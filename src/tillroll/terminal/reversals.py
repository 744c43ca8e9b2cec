"""Reversals (0400): never dropped.

A sale or void whose outcome is unknown is reversed at once; a reversal that gets no verified
00 stays pending in the journal and goes out again before every later transaction, on
``recover``, and — in a resident loop — by itself with backoff (:meth:`Reversals.step`). Any
verified 00 to a reversal, a repeat included, finishes it.

Two ways to send them:

- :meth:`Reversals.flush` (a cashier's command is waiting): every pending reversal, each with at
  most ``reversal_retries_max`` tries and the backoff of ``retry.py`` between them; one still
  pending after that gets an alert, and no new transaction starts.
- :meth:`Reversals.step` (a resident loop): one try of each reversal that is due, no waiting;
  it says when the next one is due. The backoff per reversal grows to ``retry_backoff_cap_s``
  and stays there: the reversal is tried until it is answered.

Both keep one schedule, so a cashier's flush and the background loop do not undo each other's
backoff.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime

from tillroll.clock import Clock
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.messages import has_mac, mac_matches
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.journal import Entry, Journal
from tillroll.terminal.notices import Notices
from tillroll.terminal.result import Result
from tillroll.terminal.retry import AGAIN, Again, RetrySchedule, repeat
from tillroll.terminal.session import Sessions
from tillroll.terminal.states import AlertKind, Outcome, ReversalReason, ReversalState, TxnKind, TxnState
from tillroll.terminal.verdict import build_reversal

log = logging.getLogger("tillroll.terminal")


@dataclass(frozen=True)
class ReversalStep:
    """What one :meth:`Reversals.step` did."""

    reversed: int  # answered 00 in this step
    pending: int  # still pending after it
    next_due_s: float | None  # clock.monotonic() of the next attempt due; None when none pending


class Reversals:
    def __init__(
        self,
        config: TerminalConfig,
        clock: Clock,
        journal: Journal,
        sessions: Sessions,
        rng: random.Random,
        notices: Notices | None = None,
    ) -> None:
        self.notices = notices
        self.config = config
        self.clock = clock
        self.journal = journal
        self.sessions = sessions
        self._rng = rng
        self.schedule: RetrySchedule[int] = RetrySchedule(config.backoff, rng)

    def reverse_now(self, txn_id: int, stan: str, reason: ReversalReason) -> Result:
        """Send the reversal of a journalled entry whose outcome is unknown, right away."""
        entry = self.journal.get(txn_id)
        outcome = Outcome.REVERSED if self.send(entry) else Outcome.REVERSAL_PENDING
        return Result(outcome, trace=stan, detail=f"冲正原因 reason {reason.value}", txn_id=txn_id)

    def flush(self) -> int:
        """Send every pending reversal (bounded tries each); returns how many are still pending."""
        remaining = 0
        for entry in self.journal.pending_reversals():
            if not self.send(entry):
                remaining += 1
        return remaining

    def send(self, entry: Entry) -> bool:
        """Up to ``reversal_retries_max`` tries with backoff; True when reversed. Still pending
        after them: an alert, and the reversal stays in the journal."""
        assert entry.reversal_reason is not None
        last = "not sent"

        def attempt(_: int) -> bool | Again:
            nonlocal last
            why = self._attempt(entry)
            if why is None:
                return True
            last = why
            return AGAIN

        done = repeat(
            attempt,
            tries_max=self.config.reversal_retries_max,
            backoff=self.config.backoff,
            clock=self.clock,
            rng=self._rng,
        )
        if not isinstance(done, Again):
            self.schedule.succeeded(entry.id)
            return True
        self.schedule.failed(entry.id, self.clock.monotonic())
        self.journal.alert(
            AlertKind.REVERSAL_PENDING,
            f"reversal of trace {entry.stan} batch {entry.batch} (reason {entry.reversal_reason.value}) "
            f"still pending after {self.config.reversal_retries_max} tries ({last}): it will be sent "
            "again before the next transaction and on `tillroll pos recover`",
            self.clock.now(),
            entry.id,
        )
        log.warning("reversal of trace %s still pending (%s)", entry.stan, last)
        return False

    def step(self) -> ReversalStep:
        """One try of each pending reversal that is due; never waits (but for the link's own
        bounded timeouts). Call again at ``next_due_s``."""
        pending = self.journal.pending_reversals()
        self.schedule.keep_only(e.id for e in pending)
        reversed_ = 0
        for entry in pending:
            if not self.schedule.is_due(entry.id, self.clock.monotonic()):
                continue
            why = self._attempt(entry)
            if why is None:
                self.schedule.succeeded(entry.id)
                reversed_ += 1
            else:
                due = self.schedule.failed(entry.id, self.clock.monotonic())
                log.info(
                    "reversal of trace %s: %s; next try in %.1f s",
                    entry.stan,
                    why,
                    due - self.clock.monotonic(),
                )
        left = [e.id for e in self.journal.pending_reversals()]
        return ReversalStep(reversed_, len(left), self.schedule.next_due_s(left, self.clock.monotonic()))

    def _attempt(self, entry: Entry) -> str | None:
        """One try: None when answered 00 (verified), else why not."""
        assert entry.reversal_reason is not None
        if not self.sessions.ensure():
            return "sign-in failed"
        session = self.sessions.require()
        msg = build_reversal(entry.request, entry.reversal_reason, entry.auth_code)
        reply = self.sessions.exchange(msg, mak=session.keys.mak)
        now = self.clock.now()
        code = reply.response.get("39") if reply.response is not None else None
        self.journal.note_reversal_attempt(entry.id, code, now)
        verified = reply.matched and has_mac(reply.raw) and mac_matches(reply.raw, session.keys.mak)
        if reply.response is not None and verified and code == ResponseCode.APPROVED:
            self._done(entry, now)
            if reply.must_sign_in:
                self.sessions.drop()
            return None
        if code in (ResponseCode.SIGN_IN_AGAIN, ResponseCode.MAC_FAILED) or reply.must_sign_in:
            self.sessions.drop()
        elif reply.response is not None and not verified:
            self.sessions.drop()  # a reply whose MAC fails: renew the keys before trying again
        return reply.status.value if reply.response is None else f"answered {code}"

    def _done(self, entry: Entry, now: datetime) -> None:
        with self.journal.begin() as conn:
            self.journal.end_reversal(conn, entry.id, ReversalState.DONE, now)
            current = self.journal.get(entry.id, conn)
            if current.state in (TxnState.PENDING, TxnState.SENT):
                self.journal.move(conn, entry.id, TxnState.UNKNOWN, now)
                current = self.journal.get(entry.id, conn)
            if current.state in (TxnState.UNKNOWN, TxnState.REVERSAL_PENDING):
                self.journal.move(conn, entry.id, TxnState.REVERSED, now)
                if self.notices is not None:  # the customer may have been charged: tell them
                    self.notices.cancelled(conn, entry.id, "reversed", now)
            if (
                entry.kind is TxnKind.VOID
                and entry.orig_txn_id is not None
                and current.state is TxnState.REVERSAL_PENDING
            ):
                orig = self.journal.get(entry.orig_txn_id, conn)
                if orig.state is TxnState.VOIDED:  # the void is undone: the sale stands again
                    self.journal.move(conn, orig.id, TxnState.APPROVED, now)
        log.info("trace %s reversed", entry.stan)
