"""The host's request pipeline: one frame in, one frame out, one database transaction.

Steps, in order (PROFILE §1, §3-§6): framing -> decode (30) -> terminal (97) -> merchant (03)
-> session and batch (77) -> MAC (A0) -> idempotency (replay / 94) -> the transaction itself.
Everything a request changes commits together, before the response is written. Decoding, the
group commit and the containment of failures (PROFILE §7) are `boundary`'s; the steps are here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from tillroll.clock import Clock, to_merchant_local
from tillroll.crypto.keys import WorkingKeys, wrap_working_keys
from tillroll.crypto.keystore import KeyStore
from tillroll.host import card, closing, sale_lane, settlement
from tillroll.host.boundary import Answer as _Answer
from tillroll.host.boundary import FaultHook, GroupRequest, RequestBoundary
from tillroll.host.boundary import Replay as _Replay
from tillroll.host.config import HostConfig
from tillroll.host.context import RequestContext, replayed_response, response_for, stored_response
from tillroll.host.states import MAC_VALID_STATES, SessionState
from tillroll.host.store import key_label
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import DecodeError
from tillroll.iso8583.messages import Field60, Kind, Message, Mti, mac_matches
from tillroll.store import inserted_id
from tillroll.store.tables import merchants, requests, sessions, terminals

log = logging.getLogger("tillroll.host")
RC = ResponseCode
UPLOAD_KINDS = frozenset({Kind.BATCH_UPLOAD, Kind.BATCH_UPLOAD_END})

# Prebuilt statements for the per-request path (built once, executed with parameters).
_TERMINAL = (
    select(terminals, merchants.c.name, merchants.c.fee_rate_ppm)
    .join(merchants, merchants.c.mid == terminals.c.mid)
    .where(terminals.c.tid == bindparam("b_tid"))
)
_LATEST_SESSION = (
    select(sessions).where(sessions.c.tid == bindparam("b_tid")).order_by(sessions.c.id.desc()).limit(1)
)
_STORED_REQUEST = select(requests.c.content_hash, requests.c.response).where(
    requests.c.tid == bindparam("b_tid"),
    requests.c.batch == bindparam("b_batch"),
    requests.c.stan == bindparam("b_stan"),
    requests.c.mti == bindparam("b_mti"),
)
_INSERT_REQUEST = insert(requests)
_STORE_RESPONSE = (
    update(requests).where(requests.c.id == bindparam("b_id")).values(response=bindparam("b_response"))
)

Handler = Callable[[RequestContext], Message]
HANDLERS: dict[Kind, Handler] = {
    Kind.SALE: card.sale,
    Kind.BALANCE: card.balance,
    Kind.VOID: card.void,
    Kind.REFUND: card.refund,
    Kind.REVERSAL: card.reversal,
    Kind.SETTLEMENT: settlement.settle,
    Kind.BATCH_UPLOAD: settlement.batch_upload,
    Kind.BATCH_UPLOAD_END: settlement.batch_upload_end,
}


class HostPipeline(RequestBoundary):
    def __init__(
        self,
        engine: Engine,
        keystore: KeyStore,
        clock: Clock,
        config: HostConfig,
        *,
        fault_hook: FaultHook | None = None,
    ) -> None:
        super().__init__(engine, clock, config.zone, fault_hook=fault_hook)
        self.keystore = keystore
        self.config = config
        self.sales = sale_lane.SaleLane(keystore, clock, config)

    def _answer_all(self, conn: Connection, work: list[GroupRequest]) -> dict[int, _Answer]:
        """Runs of ordinary sales through the sale lane, everything else through the steps."""
        answers: dict[int, _Answer] = {}
        for part, laned in sale_lane.runs(work, enabled=self.config.sale_lane):
            if laned:
                answers.update(self.sales.run(conn, part, self._run, self._fault))
            else:
                answers[part[0].index] = self._run(conn, part[0])
        return answers

    # --- steps ---------------------------------------------------------------------------

    def _process(self, conn: Connection, msg: Message, raw: bytes, verified: dict[str, bytes]) -> _Answer:
        now = self.clock.now()
        kind = msg.kind
        tid, mid = msg.get("41"), msg.get("42")
        if not tid:
            return _Answer(response_for(msg, RC.FORMAT_ERROR, now, self.config.zone), None)
        row = conn.execute(_TERMINAL, {"b_tid": tid}).mappings().first()
        if row is None or row["status"] != "active":
            return _Answer(response_for(msg, RC.TERMINAL_NOT_REGISTERED, now, self.config.zone), None)
        if mid != row["mid"]:
            return _Answer(response_for(msg, RC.INVALID_MERCHANT, now, self.config.zone), None)
        try:
            f60 = msg.field60
        except DecodeError:
            return _Answer(response_for(msg, RC.FORMAT_ERROR, now, self.config.zone), None)

        if kind is Kind.SIGN_IN:
            return self._sign_in(conn, msg, row, f60)
        if kind in (Kind.ECHO, Kind.SIGN_OUT):
            return self._network(conn, msg, tid, kind)

        session = conn.execute(_LATEST_SESSION, {"b_tid": tid}).mappings().first()
        if session is None or now >= session["expires_at"] or session["state"] not in MAC_VALID_STATES:
            return _Answer(
                response_for(msg, RC.SIGN_IN_AGAIN, now, self.config.zone), None, must_sign_in=True
            )
        mak = self.keystore.open(session["mak_enc"], label=key_label(tid, "mak"))
        if not mac_matches(raw, mak):
            return _Answer(response_for(msg, RC.MAC_FAILED, now, self.config.zone), None, must_sign_in=True)
        verified["mak"] = mak
        handler = HANDLERS.get(kind)
        if handler is None:
            return _Answer(response_for(msg, RC.NOT_SUPPORTED, now, self.config.zone), mak)
        stan = msg.get("11")
        if not stan or not stan.isdigit():
            return _Answer(response_for(msg, RC.FORMAT_ERROR, now, self.config.zone), mak)

        content_hash = self.keystore.digest(json.dumps(msg.content_key()).encode())
        key = {"b_tid": tid, "b_batch": f60.batch, "b_stan": stan, "b_mti": msg.mti}
        stored = conn.execute(_STORED_REQUEST, key).mappings().first()
        if stored is not None:
            # Reversals are exempt from 94: every repeat answers as the first did (PROFILE §6).
            if stored["content_hash"] == content_hash or kind is Kind.REVERSAL:
                raise _Replay(_Answer(replayed_response(stored["response"], msg), mak))
            raise _Replay(_Answer(response_for(msg, RC.DUPLICATE, now, self.config.zone), mak))
        # Replays above may answer in a closed (settled) session: a lost 0510 can be asked again.
        if not self._session_admits(session, kind, f60):
            return _Answer(
                response_for(msg, RC.SIGN_IN_AGAIN, now, self.config.zone), None, must_sign_in=True
            )
        request_id = inserted_id(
            conn.execute(
                _INSERT_REQUEST,
                {
                    "tid": tid,
                    "batch": f60.batch,
                    "stan": stan,
                    "mti": msg.mti,
                    "content_hash": content_hash,
                    "created_at": now,
                },
            )
        )
        ctx = RequestContext(
            conn=conn,
            msg=msg,
            f60=f60,
            rrn=f"{request_id:012d}",
            pik=self.keystore.open(session["pik_enc"], label=key_label(tid, "pik")),
            mid=str(row["mid"]),
            merchant_name=str(row["name"]),
            fee_rate_ppm=int(row["fee_rate_ppm"]),
            now=now,
            config=self.config,
            keystore=self.keystore,
        )
        response = handler(ctx)
        conn.execute(_STORE_RESPONSE, {"b_id": request_id, "b_response": stored_response(response)})
        return _Answer(response, mak)

    def _session_admits(self, session: Any, kind: Kind, f60: Field60) -> bool:
        """PROFILE §6: a new request needs the session's batch; after settlement, only the
        closed batch's upload; reversals name their original's batch."""
        if kind in UPLOAD_KINDS:
            return session["state"] in MAC_VALID_STATES and f60.batch == session["batch"]
        if session["state"] != SessionState.ACTIVE:
            return False
        return kind is Kind.REVERSAL or f60.batch == session["batch"]

    # --- network management ----------------------------------------------------------------

    def _sign_in(self, conn: Connection, msg: Message, term: Any, f60: Field60) -> _Answer:
        now = self.clock.now()
        if f60.network_code not in ("003", "004") or "11" not in msg:
            return _Answer(response_for(msg, RC.FORMAT_ERROR, now, self.config.zone), None)
        tid = str(term["tid"])
        tmk = self.keystore.open(term["tmk_enc"], label=key_label(tid, "tmk"))
        keys = WorkingKeys.generate(with_tdk=f60.network_code == "004")
        # A STAN that went backwards (a lost journal) gets a new batch; the host closes the old.
        batch = closing.batch_for_sign_in(conn, term, msg["11"], now)
        conn.execute(
            insert(sessions).values(
                tid=tid,
                batch=batch,
                pik_enc=self.keystore.seal(keys.pik, label=key_label(tid, "pik")),
                mak_enc=self.keystore.seal(keys.mak, label=key_label(tid, "mak")),
                tdk_enc=self.keystore.seal(keys.tdk, label=key_label(tid, "tdk")) if keys.tdk else None,
                state=SessionState.ACTIVE,
                signed_in_at=now,
                expires_at=now + timedelta(seconds=self.config.key_lifetime_s),
            )
        )
        # Sign-ins are never replayed (a replay would hand out stale keys): their row has no key.
        request_id = inserted_id(
            conn.execute(insert(requests).values(content_hash="sign-in", created_at=now))
        )
        local = to_merchant_local(now, self.config.zone)
        resp = Message(
            Mti.SIGN_IN_RESPONSE.value,
            {
                "11": msg["11"],
                "12": local.strftime("%H%M%S"),
                "13": local.strftime("%m%d"),
                "32": self.config.acquirer_id,
                "37": f"{request_id:012d}",
                "39": RC.APPROVED.value,
                "41": tid,
                "42": str(term["mid"]),
                "60": Field60("00", batch, f60.network_code).encode(),
                "62": wrap_working_keys(tmk, keys).hex().upper(),
            },
        )
        return _Answer(resp, None)

    def _network(self, conn: Connection, msg: Message, tid: str, kind: Kind) -> _Answer:
        if kind is Kind.SIGN_OUT:
            conn.execute(
                update(sessions)
                .where(sessions.c.tid == tid, sessions.c.state == SessionState.ACTIVE)
                .values(state=SessionState.SIGNED_OUT)
            )
        return _Answer(response_for(msg, RC.APPROVED, self.clock.now(), self.config.zone), None)
