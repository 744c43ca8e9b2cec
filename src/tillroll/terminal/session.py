"""Sessions: sign-in, sign-out, key lifetime, and the wire every request goes over.

The terminal signs in by itself when it has no session, before the session's key lifetime runs
out (``key_lifetime_s - sign_in_margin_s``), and after 77 or A0 (the job modules call
:meth:`Sessions.drop` and the next :meth:`Sessions.ensure` signs in). A sign-in is safe to
repeat: each one issues new keys. The session (batch and sealed working keys) is kept in the
journal, so it survives a restart.
"""

from __future__ import annotations

import logging

from tillroll.clock import Clock
from tillroll.crypto.keys import KeyCheckError, unwrap_working_keys
from tillroll.iso8583 import builders
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import CodecError
from tillroll.iso8583.messages import Field60, Message, Mti, pack, sign, unpack
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.hostlink import HostLink, LinkStatus
from tillroll.terminal.journal import Journal, Session
from tillroll.terminal.result import Result
from tillroll.terminal.states import AlertKind, Outcome
from tillroll.terminal.verdict import Reply, response_code

log = logging.getLogger("tillroll.terminal")

SIGN_IN_ATTEMPTS = 2


class Sessions:
    """The terminal's session with the host and its link. Not thread-safe."""

    def __init__(self, config: TerminalConfig, clock: Clock, journal: Journal, link: HostLink) -> None:
        self.config = config
        self.clock = clock
        self.journal = journal
        self.link = link
        self.current: Session | None = journal.load_session()

    @property
    def station(self) -> builders.Station:
        return builders.Station(self.config.tid, self.config.mid)

    @property
    def batch(self) -> str:
        return self.current.batch if self.current else self.journal.batch()

    @property
    def signed_in(self) -> bool:
        return self.current is not None and not self.is_due(self.current)

    def is_due(self, session: Session) -> bool:
        """True when the session must be renewed: near the end of its key lifetime, or signed in
        "in the future" (the clock went back)."""
        age_s = (self.clock.now() - session.signed_in_at).total_seconds()
        return age_s >= self.config.refresh_after_s or age_s < -self.config.sign_in_margin_s

    def ensure(self) -> bool:
        """A usable session, signing in if there is none or it is due; False when sign-in failed."""
        if self.current is not None and not self.is_due(self.current):
            return True
        return self.sign_in().outcome is Outcome.DONE

    def require(self) -> Session:
        """The current session, after a successful :meth:`ensure`."""
        assert self.current is not None, "no session: ensure() first"
        return self.current

    def drop(self) -> None:
        self.current = None
        self.journal.clear_session()

    def sign_in(self) -> Result:
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
        msg = builders.sign_in(
            self.station, stan, self.journal.batch(), self.config.operator, mode=self.config.sign_in_mode
        )
        reply = Reply(LinkStatus.NOT_SENT)
        for _ in range(SIGN_IN_ATTEMPTS):  # a sign-in is safe to repeat: every one issues new keys
            reply = self.exchange(msg, mak=None)
            if reply.status is LinkStatus.ANSWERED:
                break
        if reply.status is LinkStatus.NOT_SENT:
            return Result(Outcome.HOST_UNREACHABLE, trace=stan, detail="sign-in not sent")
        resp = reply.response
        if resp is None or not reply.matched:
            return Result(Outcome.SIGN_IN_FAILED, trace=stan, detail="no answer to the sign-in")
        code = resp.get("39")
        if code != ResponseCode.APPROVED:
            return Result(
                Outcome.SIGN_IN_FAILED, response_code(code), code, trace=stan, detail=f"host answered {code}"
            )
        now = self.clock.now()
        try:
            keys = unwrap_working_keys(self.config.tmk, bytes.fromhex(resp.get("62") or ""))
            batch = Field60.parse(resp.get("60") or "").batch
        except (KeyCheckError, ValueError) as exc:
            self.journal.alert(AlertKind.SIGN_IN_KEYS, f"sign-in keys rejected, not used: {exc}", now)
            return Result(
                Outcome.SIGN_IN_FAILED,
                trace=stan,
                detail="the working keys' check values are wrong: keys not used; check the TMK",
            )
        self.journal.save_session(batch, keys, now)
        self.current = Session(batch=batch, keys=keys, signed_in_at=now)
        log.info("terminal %s signed in, batch %s", self.config.tid, batch)
        return Result(
            Outcome.DONE, ResponseCode.APPROVED, code, trace=stan, batch=batch, detail="签到成功 signed in"
        )

    def sign_out(self) -> Result:
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
        msg = builders.sign_out(self.station, stan, self.batch)
        reply = self.exchange(msg, mak=None)
        self.drop()
        if reply.status is LinkStatus.NOT_SENT:
            return Result(Outcome.HOST_UNREACHABLE, trace=stan, detail="signed out locally")
        if reply.response is None:
            return Result(Outcome.NO_ANSWER, trace=stan, detail="signed out locally")
        code = reply.response.get("39")
        if code != ResponseCode.APPROVED:
            return Result(Outcome.DECLINED, response_code(code), code, trace=stan)
        return Result(Outcome.DONE, response_code(code), code, trace=stan, detail="签退 signed out")

    def exchange(self, msg: Message, mak: bytes | None) -> Reply:
        """Send one request (MAC'd when ``mak`` is given) and decode the answer; an answer that
        does not belong to the request closes the connection (out of step: start afresh)."""
        raw = sign(msg, mak) if mak is not None else pack(msg)
        res = self.link.exchange(raw)
        if res.status is not LinkStatus.ANSWERED or res.frame is None:
            return Reply(res.status)
        try:
            resp = unpack(res.frame.message)
        except CodecError:
            self.link.close()
            return Reply(LinkStatus.ANSWERED, None, res.frame.message, res.frame.must_sign_in, matched=False)
        expected_mti = Mti(msg.mti).response.value
        matched = (
            resp.mti == expected_mti and resp.get("11") == msg.get("11") and resp.get("41") == msg.get("41")
        )
        if not matched:
            self.link.close()
        return Reply(LinkStatus.ANSWERED, resp, res.frame.message, res.frame.must_sign_in, matched)
