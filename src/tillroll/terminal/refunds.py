"""Refunds (退货, 0220): never reversed, never dropped, never paid twice.

A refund is journalled (``requested``) before it is sent and then repeated as the *same* request
(same STAN, same fields: the host replays its stored answer, so it never pays twice) while its
outcome is unknown — no answer, a cut line, a bad MAC, 96, 77 (after a new sign-in) — at most
``refund_retries_max`` times with the backoff of ``retry.py``. Still unknown, it stays
``unknown`` with an alert; ``recover`` (and the next refund of the same sale, and settlement)
send it again. The cashier's line names the cause and the next step.
"""

from __future__ import annotations

import logging
import random

from tillroll.clock import Clock
from tillroll.iso8583 import builders
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.messages import Field61, Message
from tillroll.money import format_yuan
from tillroll.pan import mask_pan
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.inputs import (
    SLIP_ENTRY_MODE,
    InputError,
    check_amount,
    parse_batch,
    parse_expiry,
    parse_mmdd,
    parse_pan,
    parse_rrn,
    parse_trace,
)
from tillroll.terminal.journal import Entry, Journal
from tillroll.terminal.notices import Notices, parse_notify
from tillroll.terminal.preflight import Preflight
from tillroll.terminal.receipts import Receipts
from tillroll.terminal.result import Result
from tillroll.terminal.retry import AGAIN, Again, repeat
from tillroll.terminal.session import Sessions
from tillroll.terminal.states import AlertKind, Outcome, RefundState, TxnKind
from tillroll.terminal.verdict import (
    CAUSE_BATCH_CLOSED,
    CAUSE_NOT_SENT,
    CAUSE_SIGN_IN,
    VerdictKind,
    host_time,
    judge,
    response_code,
    unknown_cause,
)

log = logging.getLogger("tillroll.terminal")

# What a refund's decline means for the cashier, beside the response code's own text.
REFUND_DECLINE_TEXT = {
    "61": "超出可退金额 exceeds what is left to refund of this sale: refund at most what is left",
    "64": "退货金额大于原交易金额 more than the original amount: check the amount",
    "12": "原交易已撤销或冲正，不能退货 the original was voided or reversed: nothing to refund",
    "25": "原交易不存在 original not found: check the RRN, date, trace and batch on the slip",
    "94": "重复交易 the host holds another request with this trace: call the acquirer",
}


class Refunds:
    def __init__(
        self,
        config: TerminalConfig,
        clock: Clock,
        journal: Journal,
        sessions: Sessions,
        preflight: Preflight,
        receipts: Receipts,
        rng: random.Random,
        notices: Notices,
    ) -> None:
        self.notices = notices
        self.config = config
        self.clock = clock
        self.journal = journal
        self.sessions = sessions
        self.preflight = preflight
        self.receipts = receipts
        self._rng = rng

    def refund(
        self,
        amount_minor: int,
        rrn: str,
        date_mmdd: str,
        *,
        trace: str | None = None,
        batch: str | None = None,
        pan: str | None = None,
        expiry: str | None = None,
        notify: str | None = None,
    ) -> Result:
        """Refund of a sale named by its RRN and date (field 13 of its answer). When the sale is
        in this journal its card, trace and batch come from there; otherwise ``trace`` and
        ``batch`` (and, for the slip, ``pan``/``expiry``) are read off its slip. ``notify``: the
        customer's phone or e-mail, told when the refund is approved."""
        amount = check_amount(amount_minor)
        contact = parse_notify(notify)
        orig_rrn, orig_date = parse_rrn(rrn), parse_mmdd(date_mmdd)
        stan_orig = parse_trace(trace) if trace is not None else None
        batch_orig = parse_batch(batch) if batch is not None else None
        card = parse_pan(pan) if pan is not None else None
        exp = parse_expiry(expiry) if expiry is not None else None
        orig = self.journal.find_sale_by_rrn(orig_rrn)
        if orig is not None:
            for given, ours, what in (
                (stan_orig, orig.stan, "trace"),
                (batch_orig, orig.batch, "batch"),
                (orig_date, orig.host_date or orig_date, "date"),
                # the full number may be erased already (its batch is closed): compare masked
                (mask_pan(card) if card else None, orig.pan_masked, "card"),
            ):
                if given is not None and given != ours:
                    raise InputError(
                        f"the sale with RRN {orig_rrn} in this terminal's journal has another {what}: "
                        "check the slip and type it again"
                    )
            stan_orig, batch_orig, exp = orig.stan, orig.batch, orig.expiry
            card = orig.pan or card  # none kept and none given: the host finds the sale by its RRN
        elif stan_orig is None or batch_orig is None:
            raise InputError(
                f"the sale with RRN {orig_rrn} is not in this terminal's journal: give its trace and "
                "batch from the slip (--trace, --batch)"
            )
        open_before = self.journal.open_refunds(orig_rrn)
        if open_before:
            # An earlier refund of this sale is unfinished: finish it, never start a second one.
            self.retry_open(open_before)
            if self.journal.open_refunds(orig_rrn):
                return Result(Outcome.REFUND_BLOCKED, rrn=orig_rrn, amount_minor=amount)
        blocked = self.preflight.prepare()
        if blocked is not None:
            return blocked
        session = self.sessions.require()
        now = self.clock.now()
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
            request = builders.refund(
                self.sessions.station,
                stan,
                session.batch,
                amount_minor=amount,
                rrn=orig_rrn,
                original=Field61(batch_orig, stan_orig, orig_date),
                pan=card,
            )
            txn_id = self.journal.record_request(
                conn,
                kind=TxnKind.REFUND,
                request=request,
                entry_mode=SLIP_ENTRY_MODE,
                operator=self.config.operator,
                now=now,
                orig_txn_id=orig.id if orig else None,
            )
            if exp:
                self.journal.set_values(conn, txn_id, now, expiry=exp)
            self.notices.remember(conn, txn_id, contact)
        # Committed: the refund is durable before the first byte; from here it is never dropped.
        return self.submit(txn_id)

    def open(self) -> list[Entry]:
        return self.journal.open_refunds()

    def retry_open(self, entries: list[Entry] | None = None) -> list[Result]:
        """Send every open refund again (the same request each); returns their results."""
        return [self.submit(e.id) for e in (entries or self.journal.open_refunds())]

    def submit(self, txn_id: int) -> Result:
        """Send a journalled refund, repeating the same request while its outcome is unknown."""
        entry = self.journal.get(txn_id)
        msg = entry.request
        stan = entry.stan
        if entry.state is RefundState.SUBMITTED:  # left in flight (a crash, a journal failure)
            self._unknown(txn_id, "interrupted in flight")
            self.journal.alert(
                AlertKind.INTERRUPTED,
                f"refund trace {stan} was in flight: sending it again",
                self.clock.now(),
                txn_id,
            )
        cause = CAUSE_NOT_SENT
        tries = self.config.refund_retries_max + 1

        def attempt(n: int) -> Result | Again | None:
            """A final result, None to stop (the batch moved on), or AGAIN."""
            nonlocal cause
            if not self.sessions.ensure():
                cause = CAUSE_SIGN_IN
                self._unknown(txn_id, cause)
                return AGAIN
            session = self.sessions.require()
            if session.batch != entry.batch:
                # The host moved to another batch: this key cannot be sent again (PROFILE §6).
                cause = CAUSE_BATCH_CLOSED
                return None
            with self.journal.begin() as conn:
                self.journal.move_refund(conn, txn_id, RefundState.SUBMITTED, self.clock.now())
            reply = self.sessions.exchange(msg, mak=session.keys.mak)
            verdict = judge(msg, reply, session.keys.mak)
            if verdict.sign_in:
                self.sessions.drop()
            if verdict.kind is VerdictKind.APPROVED:
                assert verdict.response is not None
                return self._approve(txn_id, verdict.response)
            if verdict.kind is VerdictKind.DECLINED:
                return self._decline(entry, verdict.code)
            cause = unknown_cause(verdict)
            self._unknown(txn_id, cause, verdict.code)
            log.warning("refund trace %s: %s (try %d of %d)", stan, cause, n + 1, tries)
            return AGAIN

        out = repeat(attempt, tries_max=tries, backoff=self.config.backoff, clock=self.clock, rng=self._rng)
        if isinstance(out, Result):
            return out
        self._unknown(txn_id, cause)
        self.journal.alert(
            AlertKind.REFUND_UNKNOWN,
            f"refund trace {stan} batch {entry.batch} of RRN {msg.get('37')} "
            f"({format_yuan(entry.amount_minor or 0)}) outcome unknown: {cause}. It is kept and sent "
            "again, the same request, by `tillroll pos recover` and before settlement",
            self.clock.now(),
            txn_id,
        )
        return Result(
            Outcome.REFUND_UNKNOWN,
            trace=stan,
            batch=entry.batch,
            amount_minor=entry.amount_minor,
            detail=f"原因 cause: {cause}",
            txn_id=txn_id,
        )

    def _unknown(self, txn_id: int, cause: str, code: str | None = None) -> None:
        with self.journal.begin() as conn:
            current = self.journal.get(txn_id, conn).state
            if current is not RefundState.UNKNOWN:
                self.journal.move_refund(conn, txn_id, RefundState.UNKNOWN, self.clock.now(), note=cause)
            else:
                self.journal.set_values(conn, txn_id, self.clock.now(), note=cause)
            if code is not None:
                self.journal.set_values(conn, txn_id, self.clock.now(), response_code=code[:2])

    def _decline(self, entry: Entry, code: str | None) -> Result:
        with self.journal.begin() as conn:
            self.journal.move_refund(
                conn, entry.id, RefundState.DECLINED, self.clock.now(), response_code=code
            )
        return Result(
            Outcome.DECLINED,
            response_code(code),
            code,
            trace=entry.stan,
            batch=entry.batch,
            amount_minor=entry.amount_minor,
            detail=REFUND_DECLINE_TEXT.get(code or "", ""),
            txn_id=entry.id,
        )

    def _approve(self, txn_id: int, resp: Message) -> Result:
        now = self.clock.now()
        f63, f44 = resp.get("63") or "", resp.get("44") or ""
        with self.journal.begin() as conn:
            self.journal.move_refund(
                conn,
                txn_id,
                RefundState.APPROVED,
                now,
                response_code=ResponseCode.APPROVED.value,
                rrn=resp.get("37") or None,
                auth_code=resp.get("38") or None,
                host_date=resp.get("13"),
                host_time=resp.get("12"),
                issuer=f63[3:].strip()[:40] or None,
                acquirer=f44[11:].strip()[:40] or None,
                approved_at=host_time(now, resp.get("13"), resp.get("12"), self.config.zone),
                note=None,
            )
            self.notices.approved(conn, txn_id, now)  # refund_approved, in the same commit
        entry = self.journal.get(txn_id)
        receipt, e_receipt = self.receipts.issue(entry)
        return Result(
            Outcome.APPROVED,
            ResponseCode.APPROVED,
            "00",
            trace=entry.stan,
            batch=entry.batch,
            amount_minor=entry.amount_minor,
            rrn=entry.rrn,
            auth_code=entry.auth_code,
            receipt=receipt,
            e_receipt=e_receipt,
            e_receipt_url=self.receipts.receipt_url(entry),
            txn_id=txn_id,
        )
