"""Settlement (0500) and batch upload (0320): the end of the day.

The 0500 carries the journal's totals; "not balanced" is followed by the batch upload (0320,
60.3 201, then the end message 202). Either way the terminal moves to the next batch and signs
in again (the host's batch number wins). Pending reversals and open refunds go out first;
settlement waits while any stays open. An unanswered settlement is repeated as the same request
(the host replays its answer), with the backoff of ``retry.py``; so is each upload message.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from tillroll.clock import Clock
from tillroll.iso8583 import builders
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import DecodeError
from tillroll.iso8583.field48 import (
    UPLOAD_ITEMS_MAX,
    SettlementFlag,
    SettlementTotals,
    UploadItem,
    settlement_flag,
)
from tillroll.iso8583.messages import Message
from tillroll.money import format_yuan
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.journal import Journal
from tillroll.terminal.preflight import Preflight
from tillroll.terminal.refunds import Refunds
from tillroll.terminal.result import Result
from tillroll.terminal.retry import AGAIN, Again, repeat
from tillroll.terminal.session import Sessions
from tillroll.terminal.states import AlertKind, Outcome, SettlementState
from tillroll.terminal.verdict import (
    CAUSE_BATCH_CLOSED,
    CAUSE_NOT_SENT,
    CAUSE_SIGN_IN,
    VerdictKind,
    judge,
    response_code,
    unknown_cause,
)


def settlement_summary(
    batch: str, totals: SettlementTotals, host48: str, balanced: bool, uploaded: int, next_batch: str
) -> str:
    ours = (
        f"借记 DEBITS {totals.debit_count} 笔 RMB {format_yuan(totals.debit_minor)}, "
        f"贷记 CREDITS {totals.credit_count} 笔 RMB {format_yuan(totals.credit_minor)}"
    )
    text = f"批次 BATCH {batch}: 终端 TERMINAL {ours}"
    try:
        host: SettlementTotals | None = SettlementTotals.parse(host48)
    except DecodeError:
        host = None
    if host is not None and not balanced:
        text += (
            f"; 主机 HOST 借记 DEBITS {host.debit_count} 笔 RMB {format_yuan(host.debit_minor)}, "
            f"贷记 CREDITS {host.credit_count} 笔 RMB {format_yuan(host.credit_minor)}"
            f"; 上送 UPLOADED {uploaded} 笔 items"
        )
    return text + f"; 新批次 NEXT BATCH {next_batch}"


class Settler:
    def __init__(
        self,
        config: TerminalConfig,
        clock: Clock,
        journal: Journal,
        sessions: Sessions,
        preflight: Preflight,
        refunds: Refunds,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.clock = clock
        self.journal = journal
        self.sessions = sessions
        self.preflight = preflight
        self.refunds = refunds
        self._rng = rng

    def settle(self) -> Result:
        """End of day: 0500 with the journal's totals; batch upload when not balanced; then the
        next batch and a new sign-in."""
        blocked = self.preflight.prepare()
        if blocked is not None:
            if blocked.outcome is Outcome.BLOCKED_BY_REVERSAL:
                return Result(Outcome.SETTLEMENT_BLOCKED, detail="冲正待发送 a reversal is pending")
            return blocked
        if self.journal.open_refunds():
            self.refunds.retry_open()
            still = len(self.journal.open_refunds())
            if still:
                return Result(Outcome.SETTLEMENT_BLOCKED, detail=f"{still} 笔退货未完成 refund(s) still open")
            if not self.sessions.ensure():
                return Result(Outcome.SIGN_IN_FAILED, detail="nothing was sent")
        batch = self.sessions.require().batch
        previous = self.journal.open_settlement(batch)
        if previous is not None:  # unanswered before: repeat the same request
            sid, msg, totals = previous.id, previous.request, previous.totals
        else:
            totals = self.journal.totals(batch)
            now = self.clock.now()
            with self.journal.begin() as conn:
                stan = self.journal.next_stan(conn)
                msg = builders.settlement(self.sessions.station, stan, batch, totals, self.config.operator)
                sid = self.journal.record_settlement(conn, msg, totals, now)
        resp, cause = self._send(msg, batch)
        now = self.clock.now()
        if resp is None:
            closed = cause == CAUSE_BATCH_CLOSED
            if closed:
                with self.journal.begin() as conn:
                    self.journal.move_settlement(
                        conn, sid, SettlementState.UNKNOWN, now, note=cause, next_batch=self.sessions.batch
                    )
            else:
                self.journal.set_settlement_values(sid, now, note=cause)
            self.journal.alert(
                AlertKind.SETTLEMENT_UNKNOWN,
                f"settlement of batch {batch} (trace {msg['11']}) not answered: {cause}"
                + ("" if not closed else "; the acquirer has the comparison of the totals"),
                now,
            )
            return Result(
                Outcome.SETTLEMENT_UNKNOWN, trace=msg["11"], batch=batch, detail=f"原因 cause: {cause}"
            )
        code = resp.get("39") or ""
        if code != ResponseCode.APPROVED:
            with self.journal.begin() as conn:
                self.journal.move_settlement(
                    conn, sid, SettlementState.DECLINED, now, note=f"answered {code}"
                )
            return Result(Outcome.DECLINED, response_code(code), code, trace=msg["11"], batch=batch)
        host48 = resp.get("48") or ""
        try:
            balanced = settlement_flag(host48) is SettlementFlag.BALANCED
        except DecodeError:
            balanced = False
        with self.journal.begin() as conn:
            self.journal.move_settlement(
                conn,
                sid,
                SettlementState.BALANCED if balanced else SettlementState.NOT_BALANCED,
                now,
                host_totals=host48[:62],
            )
        uploaded = 0
        upload_note = ""
        if not balanced:
            uploaded, upload_note = self._batch_upload(sid, batch)
        next_batch = self._next_batch(sid, batch)
        summary = settlement_summary(batch, totals, host48, balanced, uploaded, next_batch)
        if upload_note:
            summary += f"; {upload_note}"
        return Result(
            Outcome.SETTLED if balanced else Outcome.SETTLED_NOT_BALANCED,
            ResponseCode.APPROVED,
            "00",
            trace=msg["11"],
            batch=batch,
            detail=summary,
        )

    def _send(self, msg: Message, batch: str) -> tuple[Message | None, str]:
        """The verified 0510 (any code), or None and the cause. Repeats the same request."""
        cause = CAUSE_NOT_SENT

        def attempt(_: int) -> tuple[Message | None, str] | Again:
            nonlocal cause
            if not self.sessions.ensure():
                cause = CAUSE_SIGN_IN
                return AGAIN
            session = self.sessions.require()
            if session.batch != batch:
                # Signed in again and the host names another batch: it closed ours already
                # (a 0510 we never saw). The batch can no longer be uploaded.
                return None, CAUSE_BATCH_CLOSED
            reply = self.sessions.exchange(msg, mak=session.keys.mak)
            verdict = judge(msg, reply, session.keys.mak)
            if verdict.sign_in:
                self.sessions.drop()
            if verdict.kind in (VerdictKind.APPROVED, VerdictKind.DECLINED):
                assert verdict.response is not None
                return verdict.response, ""
            cause = unknown_cause(verdict)
            return AGAIN

        out = repeat(
            attempt,
            tries_max=self.config.refund_retries_max + 1,
            backoff=self.config.backoff,
            clock=self.clock,
            rng=self._rng,
        )
        return (None, cause) if isinstance(out, Again) else out

    def _batch_upload(self, sid: int, batch: str) -> tuple[int, str]:
        """0320 items (60.3 201) and the end message (202); returns items the host took."""
        station = self.sessions.station
        items = self.journal.batch_items(batch)
        sent = 0
        for i in range(0, len(items), UPLOAD_ITEMS_MAX):
            chunk = items[i : i + UPLOAD_ITEMS_MAX]
            upload = [
                UploadItem(stan=e.stan, pan=e.pan or "0", amount_minor=e.amount_minor or 0) for e in chunk
            ]
            if not self._upload(functools.partial(builders.batch_upload, station, batch=batch, items=upload)):
                note = f"batch upload stopped after {sent} of {len(items)} items"
                self.journal.set_settlement_values(sid, self.clock.now(), items_uploaded=sent, note=note)
                self.journal.alert(AlertKind.BATCH_UPLOAD, f"batch {batch}: {note}", self.clock.now())
                return sent, note
            sent += len(chunk)
        now = self.clock.now()
        total = len(items)
        if not self._upload(
            lambda stan: builders.batch_upload_end(station, stan, batch, total, balanced=False)
        ):
            note = f"end of batch upload not answered ({sent} items sent)"
            self.journal.set_settlement_values(sid, now, items_uploaded=sent, note=note)
            self.journal.alert(AlertKind.BATCH_UPLOAD, f"batch {batch}: {note}", now)
            return sent, note
        with self.journal.begin() as conn:
            self.journal.move_settlement(conn, sid, SettlementState.UPLOADED, now, items_uploaded=sent)
        return sent, ""

    def _upload(self, build: Callable[[str], Message]) -> bool:
        """Send one 0320 (built for a new STAN) in the closed batch's session."""
        session = self.sessions.current
        if session is None:
            return False
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
        msg = build(stan)

        def attempt(_: int) -> bool | Again:
            reply = self.sessions.exchange(msg, mak=session.keys.mak)  # the closed batch's session
            verdict = judge(msg, reply, session.keys.mak)
            if verdict.kind is VerdictKind.APPROVED:
                return True
            if verdict.kind is VerdictKind.DECLINED or verdict.sign_in:
                return False
            return AGAIN

        out = repeat(
            attempt,
            tries_max=self.config.refund_retries_max + 1,
            backoff=self.config.backoff,
            clock=self.clock,
            rng=self._rng,
        )
        return out is True

    def _next_batch(self, sid: int, batch: str) -> str:
        """After settlement: the next batch number, a new sign-in (the host's word wins)."""
        now = self.clock.now()
        with self.journal.begin() as conn:
            self.journal.set_batch(conn, f"{int(batch) % 999_999 + 1:06d}")
        self.sessions.drop()
        signed = self.sessions.sign_in()
        if signed.outcome is not Outcome.DONE:
            self.journal.alert(
                AlertKind.SIGN_IN_AFTER_SETTLEMENT,
                f"sign-in after settling batch {batch} failed: {signed.text}",
                now,
            )
        next_batch = self.journal.batch()
        self.journal.set_settlement_values(sid, now, next_batch=next_batch)
        return next_batch
