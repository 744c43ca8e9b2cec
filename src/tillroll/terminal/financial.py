"""Sale, void and balance inquiry (0200): journalled before the first byte, judged by the verdict.

- **Durable before visible.** A sale or void is journalled with its STAN, batch, the request's
  fields (never field 52, never the PIN) and a pending reversal (reason 06), and committed,
  before the first byte is sent.
- **Only a MAC-verified 00 is "approved".** No answer in time → reversal 98; an answer whose MAC
  fails (or that should carry one and does not) → reversal A0 and a new sign-in; an approval the
  terminal cannot complete (unusable approval data, or the journal cannot record it) → 96. A
  verified non-approval cancels the reversal; a verified approval cancels it in the same journal
  transaction that records the approval.
- A transaction the host did not process (77, or header processing requirement 3) is sent again
  with a new STAN, at most ``resend_max`` times; one answered A0 is reversed instead (it could
  have been approved). A verified 96 ("nothing was done") repeats the same request unchanged, at
  most ``retry_96_max`` times.
- **Two lines.** A request whose outcome is unknown is reversed, never re-sent on the other line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tillroll.clock import Clock
from tillroll.crypto.pin import encrypt_pin_block
from tillroll.iso8583 import builders
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.messages import Field61, Message
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.inputs import (
    SLIP_ENTRY_MODE,
    check_amount,
    parse_expiry,
    parse_pan,
    parse_pin,
    parse_trace,
)
from tillroll.terminal.journal import Entry, Journal, Session
from tillroll.terminal.notices import Notices, parse_notify
from tillroll.terminal.preflight import Preflight
from tillroll.terminal.receipts import Receipts
from tillroll.terminal.result import Result
from tillroll.terminal.reversals import Reversals
from tillroll.terminal.session import Sessions
from tillroll.terminal.states import Outcome, ReversalReason, ReversalState, TxnKind, TxnState
from tillroll.terminal.verdict import VerdictKind, host_time, judge, parse_balance, response_code

log = logging.getLogger("tillroll.terminal")

Build = Callable[[str, Session], Message]


class Transactions:
    def __init__(
        self,
        config: TerminalConfig,
        clock: Clock,
        journal: Journal,
        sessions: Sessions,
        preflight: Preflight,
        reversals: Reversals,
        receipts: Receipts,
        notices: Notices,
    ) -> None:
        self.notices = notices
        self.config = config
        self.clock = clock
        self.journal = journal
        self.sessions = sessions
        self.preflight = preflight
        self.reversals = reversals
        self.receipts = receipts

    def balance(self, pan: str, expiry_yymm: str, pin: str) -> Result:
        pan, expiry, pin = parse_pan(pan), parse_expiry(expiry_yymm), parse_pin(pin)
        blocked = self.preflight.prepare()
        if blocked is not None:
            return blocked

        def build(stan: str, session: Session) -> Message:
            pin_block = encrypt_pin_block(session.keys.pik, pin, pan)
            return builders.balance_inquiry(
                self.sessions.station, stan, session.batch, pan=pan, expiry=expiry, pin_block=pin_block
            )

        return self._run(TxnKind.BALANCE, build)

    def sale(
        self,
        amount_minor: int,
        pan: str,
        expiry_yymm: str,
        pin: str | None = None,
        *,
        notify: str | None = None,
    ) -> Result:
        """A sale; ``notify`` is the customer's phone or e-mail for the e-receipt and notices."""
        amount = check_amount(amount_minor)
        pan, expiry = parse_pan(pan), parse_expiry(expiry_yymm)
        pin = parse_pin(pin) if pin is not None else None
        contact = parse_notify(notify)
        blocked = self.preflight.prepare()
        if blocked is not None:
            return blocked

        def build(stan: str, session: Session) -> Message:
            pin_block = encrypt_pin_block(session.keys.pik, pin, pan) if pin else None
            return builders.sale(
                self.sessions.station,
                stan,
                session.batch,
                amount_minor=amount,
                pan=pan,
                expiry=expiry,
                pin_block=pin_block,
            )

        return self._run(TxnKind.SALE, build, contact=contact)

    def void(self, trace: str) -> Result:
        stan_orig = parse_trace(trace)
        blocked = self.preflight.prepare()
        if blocked is not None:
            return blocked
        session = self.sessions.require()
        orig = self.journal.find(kind=TxnKind.SALE, stan=stan_orig, batch=session.batch)
        if orig is None or orig.state is not TxnState.APPROVED:
            why = "no approved sale with that trace in the current batch"
            if orig is not None and orig.state is TxnState.VOIDED:
                why = "that sale is already voided"
            return Result(Outcome.NOT_FOUND, trace=stan_orig, detail=why)

        def build(stan: str, session: Session) -> Message:
            return builders.void(
                self.sessions.station,
                stan,
                session.batch,
                pan=orig.pan,
                amount_minor=orig.amount_minor or 0,
                rrn=orig.rrn or "",
                auth_code=orig.auth_code or "",
                original=Field61(orig.batch, orig.stan, orig.host_date or "0000"),
            )

        return self._run(TxnKind.VOID, build, orig=orig)

    def _run(
        self, kind: TxnKind, build: Build, orig: Entry | None = None, contact: str | None = None
    ) -> Result:
        resends = 0
        while True:
            session = self.sessions.require()
            now = self.clock.now()
            with self.journal.begin() as conn:
                stan = self.journal.next_stan(conn)
                msg = build(stan, session)
                txn_id = self.journal.record_request(
                    conn,
                    kind=kind,
                    request=msg,
                    entry_mode=SLIP_ENTRY_MODE,
                    operator=self.config.operator,
                    now=now,
                    orig_txn_id=orig.id if orig else None,
                )
                self.notices.remember(conn, txn_id, contact)
                self.journal.move(conn, txn_id, TxnState.SENT, now)
            # Committed: the request and its pending reversal are durable before the first byte.
            result = self._send_recorded(kind, txn_id, msg, session, orig)
            if result is not None:
                return result
            # The host did not process it (77): sign in, send again with a new STAN.
            if resends >= self.config.resend_max:
                return Result(Outcome.DECLINED, ResponseCode.SIGN_IN_AGAIN, "77", trace=stan, txn_id=txn_id)
            resends += 1
            signed = self.sessions.sign_in()
            if signed.outcome is not Outcome.DONE:
                return Result(Outcome.SIGN_IN_FAILED, trace=stan, detail="nothing was charged", txn_id=txn_id)

    def _send_recorded(
        self, kind: TxnKind, txn_id: int, msg: Message, session: Session, orig: Entry | None
    ) -> Result | None:
        """Send a journalled request; None means "not processed by the host: send a new one"."""
        has_reversal = kind is not TxnKind.BALANCE
        retries_96 = 0
        stan = msg["11"]
        while True:
            reply = self.sessions.exchange(msg, mak=session.keys.mak)
            verdict = judge(msg, reply, session.keys.mak)
            # A verified 96 did nothing: the same request again at once (the host asked for it).
            if verdict.kind is VerdictKind.RETRY_SAME and retries_96 < self.config.retry_96_max:
                retries_96 += 1
                continue
            break
        now = self.clock.now()
        code = verdict.code
        if verdict.sign_in:
            self.sessions.drop()

        if verdict.kind is VerdictKind.NOT_SENT:
            self._finish_unsent(txn_id, has_reversal, now, "no line could be opened")
            return Result(Outcome.HOST_UNREACHABLE, trace=stan, txn_id=txn_id)

        if verdict.kind is VerdictKind.RESEND_NEW_STAN:
            self._finish_unsent(txn_id, has_reversal, now, f"host answered {code or 'sign in again'}", code)
            log.info("trace %s not processed (%s): signing in and sending again", stan, code)
            return None

        if verdict.kind is VerdictKind.UNKNOWN:
            assert verdict.reason is not None
            if not has_reversal:
                with self.journal.begin() as conn:
                    self.journal.move(
                        conn,
                        txn_id,
                        TxnState.NOT_PROCESSED,
                        now,
                        response_code=code,
                        note="no verified answer",
                    )
                return Result(Outcome.NO_ANSWER, trace=stan, txn_id=txn_id)
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.UNKNOWN, now, response_code=code)
                self.journal.set_reversal_reason(conn, txn_id, verdict.reason, now)
            log.warning("trace %s outcome unknown: reversal %s", stan, verdict.reason.value)
            return self.reversals.reverse_now(txn_id, stan, verdict.reason)

        if verdict.kind in (VerdictKind.DECLINED, VerdictKind.RETRY_SAME):
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.DECLINED, now, response_code=code)
                if has_reversal:
                    self.journal.end_reversal(conn, txn_id, ReversalState.CANCELLED, now)
            return Result(Outcome.DECLINED, response_code(code), code, trace=stan, txn_id=txn_id)

        assert verdict.kind is VerdictKind.APPROVED and verdict.response is not None
        return self._approve(kind, txn_id, msg, verdict.response, orig)

    def _finish_unsent(
        self, txn_id: int, has_reversal: bool, now: datetime, note: str, code: str | None = None
    ) -> None:
        with self.journal.begin() as conn:
            self.journal.move(conn, txn_id, TxnState.NOT_PROCESSED, now, response_code=code, note=note)
            if has_reversal:
                self.journal.end_reversal(conn, txn_id, ReversalState.CANCELLED, now)

    def _approve(self, kind: TxnKind, txn_id: int, msg: Message, resp: Message, orig: Entry | None) -> Result:
        now = self.clock.now()
        stan = msg["11"]
        rrn, auth = resp.get("37") or "", resp.get("38") or ""
        usable = len(rrn) == 12 and (kind is TxnKind.BALANCE or len(auth) == 6)
        f63, f44 = resp.get("63") or "", resp.get("44") or ""
        values: dict[str, Any] = {
            "response_code": ResponseCode.APPROVED.value,
            "rrn": rrn or None,
            "auth_code": auth or None,
            "host_date": resp.get("13"),
            "host_time": resp.get("12"),
            "issuer": f63[3:].strip()[:40] or None,
            "acquirer": f44[11:].strip()[:40] or None,
            "balance_minor": parse_balance(resp.get("54")),
        }
        if kind is TxnKind.BALANCE:
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.APPROVED, now, **values)
            return Result(
                Outcome.APPROVED,
                ResponseCode.APPROVED,
                "00",
                trace=stan,
                balance_minor=values["balance_minor"],
                rrn=rrn,
                txn_id=txn_id,
            )
        if not usable:
            # Verified, but without the references a slip and a void need: cannot complete (96).
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.APPROVED, now, **values)
                self.journal.move(conn, txn_id, TxnState.REVERSAL_PENDING, now, note="approval unusable")
                self.journal.set_reversal_reason(conn, txn_id, ReversalReason.CANNOT_COMPLETE, now)
            return self.reversals.reverse_now(txn_id, stan, ReversalReason.CANNOT_COMPLETE)
        values["approved_at"] = host_time(now, resp.get("13"), resp.get("12"), self.config.zone)
        try:
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.APPROVED, now, **values)
                if kind is TxnKind.VOID and orig is not None:
                    self.journal.move(conn, orig.id, TxnState.VOIDED, now)
                    self.notices.cancelled(conn, orig.id, "voided", now)
                # After the approval is recorded (same commit): nothing left to undo.
                self.journal.end_reversal(conn, txn_id, ReversalState.CANCELLED, now)
                self.notices.approved(conn, txn_id, now)  # its e-receipt, in the same commit
        except SQLAlchemyError:
            log.exception("trace %s approved but the journal cannot record it: reversal 96", stan)
            with self.journal.begin() as conn:
                self.journal.move(conn, txn_id, TxnState.UNKNOWN, now, note="approval not recorded")
                self.journal.set_reversal_reason(conn, txn_id, ReversalReason.CANNOT_COMPLETE, now)
            return self.reversals.reverse_now(txn_id, stan, ReversalReason.CANNOT_COMPLETE)
        entry = self.journal.get(txn_id)
        receipt, e_receipt = self.receipts.issue(entry)
        return Result(
            Outcome.APPROVED,
            ResponseCode.APPROVED,
            "00",
            trace=stan,
            batch=entry.batch,
            amount_minor=entry.amount_minor,
            rrn=rrn,
            auth_code=auth,
            receipt=receipt,
            e_receipt=e_receipt,
            e_receipt_url=self.receipts.receipt_url(entry),
            txn_id=txn_id,
        )
