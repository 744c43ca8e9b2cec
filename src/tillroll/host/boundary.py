"""The pipeline's boundary: bytes in, replies out, one group commit; every exception stops here.

PROFILE §1 and §7: a frame that is not a request of the profile is answered 30 (MTI and TID
readable) or closed, and never reaches a step; a request's steps run in their own SAVEPOINT, so
whatever they raise rolls back that request alone (96, or 30 for a malformed field) while the rest
of the group commits; a failure before COMMIT leaves nothing written (96 to all), a failure at
COMMIT leaves the outcome unknown (no answer: the terminal reverses). `HostPipeline` supplies the
steps (`_process`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import tzinfo

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from tillroll.clock import Clock
from tillroll.host.context import response_for
from tillroll.host.offenders import OffenderLog, describe
from tillroll.iso8583 import framing
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import CodecError, DecodeError, FramingError
from tillroll.iso8583.messages import Message, pack, read_mti_and_tid, sign, unpack_request

log = logging.getLogger("tillroll.host")
RC = ResponseCode


class InjectedStoreFailure(Exception):
    """Raised by a fault hook to make the store fail mid-request (tests and the demo)."""


class InjectedCrashAfterCommit(Exception):
    """Raised by a fault hook after commit: the response is lost, as if the host died."""


FaultHook = Callable[[str, Message], None]
# Called with the group's connection just before COMMIT (tests: break the connection there).
CommitHook = Callable[[Connection], None]


@dataclass(frozen=True)
class Reply:
    """What goes back on the connection: a frame, and whether to close afterwards.

    `incident` says what was wrong with the request (bad input, a failed step), for the server's
    aggregated log; `error` is the exception behind it, if any.
    """

    frame: bytes | None
    close: bool = False
    incident: str | None = None
    error: BaseException | None = None


@dataclass
class Answer:
    message: Message
    mak: bytes | None  # sign with it when set
    must_sign_in: bool = False


@dataclass
class GroupRequest:
    """One decoded request of a group, and what happened to it."""

    index: int
    frame: framing.Frame
    msg: Message
    verified: dict[str, bytes] = field(default_factory=dict)  # "mak" once the MAC verified
    incident: str | None = None
    error: BaseException | None = None

    def failed(self, incident: str, error: BaseException | None = None) -> None:
        self.incident, self.error = incident, error


class Replay(Exception):
    """Abandons the transaction (nothing to write) and answers from the stored response."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class RequestBoundary:
    """Group commit and containment around the steps a subclass defines in `_process`."""

    def __init__(
        self, engine: Engine, clock: Clock, zone: tzinfo, *, fault_hook: FaultHook | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.zone = zone  # the merchant's: fields 12/13 of the answers made here
        # Called at "before_commit" and "after_commit"; may raise an Injected* exception.
        self.fault_hook = fault_hook
        self.commit_hook: CommitHook | None = None
        # Failures of a whole group (the database, not a request) are rate-limited too.
        self.db_problems = OffenderLog(log, time.monotonic, what="database problem")

    def _process(self, conn: Connection, msg: Message, raw: bytes, verified: dict[str, bytes]) -> Answer:
        """The request's steps, inside its savepoint; may raise `Replay`."""
        raise NotImplementedError

    # --- the boundary: bytes in, bytes out, every exception translated here ----------------

    def handle(self, payload: bytes) -> Reply:
        return self.handle_batch([payload])[0]

    def handle_batch(self, payloads: list[bytes]) -> list[Reply]:
        """Answer several requests with one commit (group commit): `decode`, `answer`, `finish`.

        Each request commits or rolls back as a whole, and none of the replies leaves before
        the commit that makes its request durable. Whatever one request does (PROFILE §7) is its
        own: a bad frame gets 30 or a close, an exception in its steps rolls back that request
        only and answers 96, and the rest of the group commits.
        """
        decoded = [self.decode(payload) for payload in payloads]
        work = [GroupRequest(i, *d) for i, d in enumerate(decoded) if not isinstance(d, Reply)]
        answers = self.answer(work)
        by_index = {req.index: req for req in work}
        return [
            d if isinstance(d, Reply) else self.finish(by_index[i], answers.get(i))
            for i, d in enumerate(decoded)
        ]

    def decode(self, payload: bytes) -> Reply | tuple[framing.Frame, Message]:
        """Total, and touches no state: the frame and its request, or the reply to a frame that
        is not one (the server does this on its event loop, off the database thread)."""
        return self._decode(payload)

    def answer(self, work: list[GroupRequest]) -> dict[int, Answer]:
        """The group's answers by request index, after its commit; a request missing from them
        has no answer (its connection is closed)."""
        return self._commit_group(work) if work else {}

    def finish(self, req: GroupRequest, answer: Answer | None) -> Reply:
        """The reply frame of an answered request (signed), or the close of an unanswered one."""
        if answer is None:
            # The commit's outcome is unknown (PROFILE §7): no answer; the terminal reverses.
            return Reply(None, close=True, incident=req.incident, error=req.error)
        try:
            self._fault("after_commit", req.msg)
        except Exception:  # InjectedCrashAfterCommit: the response is lost
            return Reply(None, close=True)
        reply = self._frame(req.frame, answer)
        if req.incident is None and req.error is None:
            return reply
        return replace(reply, incident=reply.incident or req.incident, error=req.error)

    def _decode(self, payload: bytes) -> Reply | tuple[framing.Frame, Message]:
        """Total: a frame and its request, or the reply to a frame that is not one."""
        try:
            frame = framing.parse_payload(payload)
        except FramingError as exc:
            return Reply(None, close=True, incident=f"framing: {exc}")
        try:
            return frame, unpack_request(frame.message)
        except DecodeError as exc:
            return self._format_error(frame, exc)
        except Exception as exc:  # the codec raises DecodeError only; a slip is still this frame's
            return Reply(None, close=True, incident=f"undecodable: {describe(exc)}", error=exc)

    def _format_error(self, frame: framing.Frame, exc: DecodeError) -> Reply:
        """PROFILE §1/§7: 30 when MTI and TID can be read, else close. No state is touched."""
        incident = f"format error: {exc}"
        try:
            mti, tid = read_mti_and_tid(frame.message)
        except Exception as err:  # best effort only
            return Reply(None, close=True, incident=f"{incident}; {describe(err)}", error=err)
        if mti is None or tid is None:
            return Reply(None, close=True, incident=incident)
        # A request or advice class (third digit even: 0100, 0200, 0220…) is answered with its
        # response MTI; a response sent as a request (0810) with its own.
        resp_mti = mti[:2] + str(int(mti[2]) + 1) + mti[3] if int(mti[2]) % 2 == 0 else mti
        resp = Message(resp_mti, {"39": RC.FORMAT_ERROR.value, "41": tid})
        return replace(self._frame(frame, Answer(resp, None)), incident=incident)

    def _frame(self, frame: framing.Frame, answer: Answer) -> Reply:
        try:
            body = sign(answer.message, answer.mak) if answer.mak else pack(answer.message)
            header = framing.reply_header(frame.header, must_sign_in=answer.must_sign_in)
            return Reply(framing.Frame(framing.reply_tpdu(frame.tpdu), header, body).encode())
        except Exception as exc:  # EncodeError: a field echoed from the request does not fit
            return Reply(None, close=True, incident=f"response does not encode: {describe(exc)}", error=exc)

    def _commit_group(self, work: list[GroupRequest]) -> dict[int, Answer]:
        """Run every request in one transaction and commit once.

        Returns the answers to send; a request missing from them has no answer (close). A
        failure before COMMIT leaves nothing written: 96 to all. A failure at COMMIT leaves the
        outcome unknown (a connection lost during COMMIT may or may not have committed): no
        answer to any, so no terminal is told "nothing was done" when it may not be true.
        """
        try:
            conn = self.engine.connect()
        except Exception as exc:
            self.db_problems.note("database", f"no connection, answering 96: {describe(exc)}")
            return {req.index: self._malfunction(req) for req in work}
        try:
            try:
                trans = conn.begin()
                answers = self._answer_all(conn, work)
            except Exception as exc:  # outside any one request's savepoint: the transaction broke
                self.db_problems.note(
                    "database", f"transaction failed before commit, answering 96: {describe(exc)}"
                )
                with contextlib.suppress(Exception):
                    conn.rollback()
                return {req.index: self._malfunction(req) for req in work}
            try:
                if self.commit_hook is not None:
                    self.commit_hook(conn)
                trans.commit()
            except Exception as exc:
                self.db_problems.note(
                    "database",
                    f"COMMIT failed, outcome unknown: closing {len(work)} connections unanswered: "
                    f"{describe(exc)}",
                )
                return {}
            return answers
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _answer_all(self, conn: Connection, work: list[GroupRequest]) -> dict[int, Answer]:
        """Every request of the group, in order, each in its own savepoint."""
        return {req.index: self._run(conn, req) for req in work}

    def _malfunction(self, req: GroupRequest) -> Answer:
        """96: nothing of this request was kept, safe to retry it unchanged."""
        now = self.clock.now()
        return Answer(response_for(req.msg, RC.SYSTEM_MALFUNCTION, now, self.zone), req.verified.get("mak"))

    def _run(self, conn: Connection, req: GroupRequest) -> Answer:
        """One request in its own savepoint. An exception from its steps rolls back the
        savepoint only; if that rollback itself fails the exception leaves (the group broke)."""
        msg = req.msg
        for attempt in range(2):
            savepoint = conn.begin_nested()
            try:
                answer = self._process(conn, msg, req.frame.message, req.verified)
                self._fault("before_commit", msg)
            except Replay as replay:
                savepoint.rollback()
                return replay.answer
            except IntegrityError as exc:
                savepoint.rollback()
                # A concurrent identical request took the unique key first: retrying replays it.
                if attempt == 0:
                    continue
                req.failed(f"request kept conflicting, answering 96: {describe(exc)}", exc)
            except CodecError as exc:  # a field a step parses (60, 61, 48) is malformed
                savepoint.rollback()
                req.failed(f"format error: {exc}")
                return Answer(
                    response_for(msg, RC.FORMAT_ERROR, self.clock.now(), self.zone), req.verified.get("mak")
                )
            except Exception as exc:  # a handler, the key store, the database: this request only
                savepoint.rollback()
                req.failed(f"request rolled back, answering 96: {describe(exc)}", exc)
            else:
                savepoint.commit()
                return answer
            break
        return self._malfunction(req)

    def _fault(self, point: str, msg: Message) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point, msg)
