"""The host's request pipeline: one frame in, one frame out, one database transaction.

Steps, in order (PROFILE §1, §3-§6): framing -> decode (30) -> terminal (97) -> merchant (03)
-> session and batch (77) -> MAC (A0) -> idempotency (replay / 94) -> the transaction itself.
Everything a request changes commits together, before the response is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from tillroll import issuer
from tillroll.clock import Clock
from tillroll.crypto.keys import WorkingKeys, wrap_working_keys
from tillroll.crypto.keystore import KeyStore
from tillroll.crypto.pin import PinBlockError, decrypt_pin
from tillroll.host.config import HostConfig
from tillroll.host.store import key_label
from tillroll.iso8583 import framing
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import DecodeError, EncodeError, FramingError
from tillroll.iso8583.messages import (
    CURRENCY_CNY,
    Field60,
    Field61,
    Kind,
    Message,
    Mti,
    mac_matches,
    pack,
    read_mti_and_tid,
    sign,
    unpack,
)
from tillroll.issuer.bank import Reason
from tillroll.pan import mask_pan
from tillroll.store import inserted_id
from tillroll.store.tables import merchants, requests, sessions, terminals, tombstones, transactions

RC = ResponseCode
_ECHOED = ("2", "3", "4", "11", "25", "41", "42", "49", "60")
FINANCIAL = frozenset({Kind.SALE, Kind.VOID, Kind.BALANCE, Kind.REVERSAL})


class TxnStatus:
    APPROVED = "approved"
    DECLINED = "declined"
    REVERSED = "reversed"
    VOIDED = "voided"


class SessionState:
    ACTIVE = "active"
    SIGNED_OUT = "signed_out"
    SETTLED = "settled"


@dataclass(frozen=True)
class Reply:
    """What goes back on the connection: a frame, and whether to close afterwards."""

    frame: bytes | None
    close: bool = False


@dataclass
class _Answer:
    message: Message
    mak: bytes | None  # sign with it when set
    must_sign_in: bool = False


class _Replay(Exception):
    """Raised inside a transaction to abandon it and answer from the stored response."""

    def __init__(self, answer: _Answer) -> None:
        self.answer = answer


class HostPipeline:
    def __init__(self, engine: Engine, keystore: KeyStore, clock: Clock, config: HostConfig) -> None:
        self.engine = engine
        self.keystore = keystore
        self.clock = clock
        self.config = config

    # --- the boundary: bytes in, bytes out, every exception translated here ----------------

    def handle(self, payload: bytes) -> Reply:
        try:
            frame = framing.parse_payload(payload)
        except FramingError:
            return Reply(None, close=True)
        try:
            msg = unpack(frame.message)
        except DecodeError:
            mti, tid = read_mti_and_tid(frame.message)
            if mti is None or tid is None or mti not in {m.value for m in Mti}:
                return Reply(None, close=True)
            resp = Message(Mti(mti).response.value if mti[2] in "02468" else mti, {"39": "30", "41": tid})
            return self._frame(frame, _Answer(resp, None))
        answer = self._run(msg, frame.message)
        return self._frame(frame, answer)

    def _frame(self, frame: framing.Frame, answer: _Answer) -> Reply:
        try:
            body = sign(answer.message, answer.mak) if answer.mak else pack(answer.message)
        except EncodeError:
            return Reply(None, close=True)
        header = framing.reply_header(frame.header, must_sign_in=answer.must_sign_in)
        return Reply(framing.Frame(framing.reply_tpdu(frame.tpdu), header, body).encode())

    def _run(self, msg: Message, raw: bytes) -> _Answer:
        ctx: dict[str, bytes] = {}
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    return self._process(conn, msg, raw, ctx)
            except _Replay as replay:
                return replay.answer
            except IntegrityError:
                # A concurrent identical request won the unique key: the retry replays its answer.
                if attempt == 1:
                    break
            except DBAPIError:
                break
        # Nothing was committed: 96 says "nothing was done, safe to retry the same request".
        return _Answer(self._response(msg, RC.SYSTEM_MALFUNCTION), ctx.get("mak"))

    # --- steps ---------------------------------------------------------------------------

    def _response(self, req: Message, code: RC, **extra: str) -> Message:
        now = self.clock.now()
        fields = {k: req.fields[k] for k in _ECHOED if k in req.fields}
        fields.update({"12": now.strftime("%H%M%S"), "13": now.strftime("%m%d"), "39": code.value})
        fields.update({k.lstrip("f"): v for k, v in extra.items()})
        try:
            mti = Mti(req.mti).response.value
        except ValueError:
            mti = req.mti
        return Message(mti, fields)

    def _process(self, conn: Connection, msg: Message, raw: bytes, ctx: dict[str, bytes]) -> _Answer:
        kind = msg.kind
        tid, mid = msg.get("41"), msg.get("42")
        if not tid or (kind is Kind.UNKNOWN and msg.mti not in {m.value for m in Mti}):
            return _Answer(self._response(msg, RC.FORMAT_ERROR), None)
        term = conn.execute(select(terminals).where(terminals.c.tid == tid)).mappings().first()
        if term is None or term["status"] != "active":
            return _Answer(self._response(msg, RC.TERMINAL_NOT_REGISTERED), None)
        if mid != term["mid"]:
            return _Answer(self._response(msg, RC.INVALID_MERCHANT), None)
        try:
            f60 = msg.field60
        except DecodeError:
            return _Answer(self._response(msg, RC.FORMAT_ERROR), None)

        if kind is Kind.SIGN_IN:
            return self._sign_in(conn, msg, dict(term), f60)
        if kind in (Kind.ECHO, Kind.SIGN_OUT):
            return self._network(conn, msg, tid, kind)

        session = (
            conn.execute(
                select(sessions).where(sessions.c.tid == tid).order_by(sessions.c.id.desc()).limit(1)
            )
            .mappings()
            .first()
        )
        now = self.clock.now()
        exempt_batch = kind in (Kind.REVERSAL, Kind.BATCH_UPLOAD, Kind.BATCH_UPLOAD_END)
        if (
            session is None
            or session["state"] != SessionState.ACTIVE
            or now >= session["expires_at"]
            or (f60.batch != session["batch"] and not exempt_batch)
        ):
            return _Answer(self._response(msg, RC.SIGN_IN_AGAIN), None, must_sign_in=True)
        mak = self.keystore.open(session["mak_enc"], label=key_label(tid, "mak"))
        if not mac_matches(raw, mak):
            return _Answer(self._response(msg, RC.MAC_FAILED), None, must_sign_in=True)
        ctx["mak"] = mak
        if kind not in FINANCIAL:
            return _Answer(self._response(msg, RC.NOT_SUPPORTED), mak)

        stan = msg.get("11")
        if not stan:
            return _Answer(self._response(msg, RC.FORMAT_ERROR), mak)
        content_hash = hashlib.sha256(json.dumps(msg.content_key()).encode()).hexdigest()
        stored = (
            conn.execute(
                select(requests.c.content_hash, requests.c.response).where(
                    requests.c.tid == tid,
                    requests.c.batch == f60.batch,
                    requests.c.stan == stan,
                    requests.c.mti == msg.mti,
                )
            )
            .mappings()
            .first()
        )
        if stored is not None:
            if stored["content_hash"] == content_hash or kind is Kind.REVERSAL:
                raise _Replay(_Answer(_load(stored["response"]), mak))
            raise _Replay(_Answer(self._response(msg, RC.DUPLICATE), mak))
        request_id = inserted_id(
            conn.execute(
                insert(requests).values(
                    tid=tid,
                    batch=f60.batch,
                    stan=stan,
                    mti=msg.mti,
                    content_hash=content_hash,
                    created_at=now,
                )
            )
        )
        rrn = f"{request_id:012d}"
        pik = self.keystore.open(session["pik_enc"], label=key_label(tid, "pik"))
        merchant_name = self._merchant_name(conn, str(term["mid"]))
        handler = {
            Kind.SALE: self._sale,
            Kind.BALANCE: self._balance,
            Kind.VOID: self._void,
            Kind.REVERSAL: self._reversal,
        }[kind]
        response = handler(conn, msg, f60, rrn, pik, merchant_name)
        conn.execute(update(requests).where(requests.c.id == request_id).values(response=_dump(response)))
        return _Answer(response, mak)

    def _merchant_name(self, conn: Connection, mid: str) -> str:
        return str(conn.execute(select(merchants.c.name).where(merchants.c.mid == mid)).scalar_one())

    # --- network management ----------------------------------------------------------------

    def _sign_in(self, conn: Connection, msg: Message, term: dict[str, Any], f60: Field60) -> _Answer:
        if f60.network_code not in ("003", "004") or "11" not in msg:
            return _Answer(self._response(msg, RC.FORMAT_ERROR), None)
        tid = str(term["tid"])
        now = self.clock.now()
        tmk = self.keystore.open(term["tmk_enc"], label=key_label(tid, "tmk"))
        keys = WorkingKeys.generate(with_tdk=f60.network_code == "004")
        batch = str(term["batch"])
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
        request_id = inserted_id(
            conn.execute(insert(requests).values(content_hash="sign-in", created_at=now))
        )
        resp = Message(
            Mti.SIGN_IN_RESPONSE.value,
            {
                "11": msg["11"],
                "12": now.strftime("%H%M%S"),
                "13": now.strftime("%m%d"),
                "32": self.config.acquirer_id,
                "37": f"{int(request_id):012d}",
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
            latest = (
                select(sessions.c.id).where(sessions.c.tid == tid).order_by(sessions.c.id.desc()).limit(1)
            )
            conn.execute(
                update(sessions)
                .where(sessions.c.id == latest.scalar_subquery(), sessions.c.state == SessionState.ACTIVE)
                .values(state=SessionState.SIGNED_OUT)
            )
        return _Answer(self._response(msg, RC.APPROVED), None)

    # --- financial ---------------------------------------------------------------------------

    def _card(self, msg: Message) -> tuple[str, str | None] | None:
        if "2" in msg:
            return msg["2"], msg.get("14")
        track = msg.get("35")
        if track and "=" in track:
            pan, rest = track.split("=", 1)
            return pan, msg.get("14") or rest[:4]
        return None

    def _pin(self, msg: Message, pik: bytes, pan: str) -> str | None:
        block = msg.get("52")
        if block is None:
            return None
        return decrypt_pin(pik, bytes.fromhex(block), pan)

    def _approved_fields(self, rrn: str, auth_code: str | None) -> dict[str, str]:
        now = self.clock.now()
        fields = {
            "15": now.strftime("%m%d"),
            "37": rrn,
            "44": f"{'03080000':<11}{self.config.acquirer_id:<11}",
            "63": f"CUP{self.config.issuer_name}",
        }
        if auth_code:
            fields["38"] = auth_code
        return fields

    def _sale(
        self, conn: Connection, msg: Message, f60: Field60, rrn: str, pik: bytes, merchant_name: str
    ) -> Message:
        tid, mid, stan = msg["41"], msg["42"], msg["11"]
        base = self._approved_fields(rrn, None)
        tomb = conn.execute(
            select(tombstones.c.id).where(
                tombstones.c.tid == tid,
                tombstones.c.batch == f60.batch,
                tombstones.c.stan == stan,
                tombstones.c.mti == msg.mti,
            )
        ).first()
        if tomb is not None:
            return self._response(msg, RC.DUPLICATE, **base)
        card = self._card(msg)
        amount = msg.get("4")
        if card is None or amount is None or msg.get("49", CURRENCY_CNY) != CURRENCY_CNY:
            return self._response(msg, RC.FORMAT_ERROR, **base)
        pan, expiry = card
        try:
            pin = self._pin(msg, pik, pan)
        except PinBlockError:
            return self._response(msg, RC.INCORRECT_PIN, **base)
        now = self.clock.now()
        outcome = issuer.bank.debit(
            conn,
            pan=pan,
            expiry_yymm=expiry,
            pin=pin,
            amount_minor=int(amount),
            reference=rrn,
            merchant_name=merchant_name,
            now=now,
        )
        auth_code = _auth_code(outcome.authorization_id) if outcome.approved else None
        conn.execute(
            insert(transactions).values(
                rrn=rrn,
                tid=tid,
                mid=mid,
                batch=f60.batch,
                stan=stan,
                kind="sale",
                status=TxnStatus.APPROVED if outcome.approved else TxnStatus.DECLINED,
                response_code=outcome.code.value,
                amount_minor=int(amount),
                currency=CURRENCY_CNY,
                pan_masked=mask_pan(pan),
                auth_code=auth_code,
                issuer_ref=outcome.authorization_id,
                local_date=now.strftime("%m%d"),
                created_at=now,
                updated_at=now,
            )
        )
        return self._response(msg, outcome.code, **self._approved_fields(rrn, auth_code))

    def _balance(
        self, conn: Connection, msg: Message, f60: Field60, rrn: str, pik: bytes, merchant_name: str
    ) -> Message:
        card = self._card(msg)
        if card is None:
            return self._response(msg, RC.FORMAT_ERROR)
        pan, expiry = card
        try:
            pin = self._pin(msg, pik, pan)
        except PinBlockError:
            return self._response(msg, RC.INCORRECT_PIN)
        outcome = issuer.bank.balance(conn, pan=pan, expiry_yymm=expiry, pin=pin, now=self.clock.now())
        extra = self._approved_fields(rrn, None)
        if outcome.approved and outcome.balance_minor is not None:
            sign_char = "C" if outcome.balance_minor >= 0 else "D"
            extra["54"] = f"1002{CURRENCY_CNY}{sign_char}{abs(outcome.balance_minor):012d}"
        return self._response(msg, outcome.code, **extra)

    def _void(
        self, conn: Connection, msg: Message, f60: Field60, rrn: str, pik: bytes, merchant_name: str
    ) -> Message:
        tid, stan = msg["41"], msg["11"]
        base = self._approved_fields(rrn, None)
        try:
            f61 = Field61.parse(msg.get("61") or "")
        except DecodeError:
            return self._response(msg, RC.FORMAT_ERROR, **base)
        orig = (
            conn.execute(
                select(transactions)
                .where(
                    transactions.c.tid == tid,
                    transactions.c.batch == f61.batch,
                    transactions.c.stan == f61.stan,
                    transactions.c.kind == "sale",
                )
                .with_for_update()
            )
            .mappings()
            .first()
        )
        card = self._card(msg)
        if (
            orig is None
            or orig["batch"] != f60.batch
            or orig["rrn"] != msg.get("37")
            or orig["local_date"] != f61.date_mmdd
            or (card is not None and mask_pan(card[0]) != orig["pan_masked"])
            or orig["status"] == TxnStatus.DECLINED
        ):
            return self._response(msg, RC.ORIGINAL_NOT_FOUND, **base)
        if orig["status"] != TxnStatus.APPROVED:
            return self._response(msg, RC.INVALID_TRANSACTION, **base)
        if int(msg.get("4") or -1) != orig["amount_minor"]:
            return self._response(msg, RC.ORIGINAL_AMOUNT_INCORRECT, **base)
        now = self.clock.now()
        outcome = issuer.bank.credit(
            conn,
            authorization_id=int(orig["issuer_ref"]),
            amount_minor=int(orig["amount_minor"]),
            reason=Reason.VOID,
            reference=rrn,
            merchant_name=merchant_name,
            now=now,
        )
        auth_code = _auth_code(outcome.authorization_id) if outcome.approved else None
        conn.execute(
            update(transactions)
            .where(transactions.c.id == orig["id"])
            .values(status=TxnStatus.VOIDED, updated_at=now)
        )
        conn.execute(
            insert(transactions).values(
                rrn=rrn,
                tid=tid,
                mid=msg["42"],
                batch=f60.batch,
                stan=stan,
                kind="void",
                status=TxnStatus.APPROVED if outcome.approved else TxnStatus.DECLINED,
                response_code=outcome.code.value,
                amount_minor=int(orig["amount_minor"]),
                currency=CURRENCY_CNY,
                pan_masked=orig["pan_masked"],
                auth_code=auth_code,
                issuer_ref=outcome.authorization_id,
                original_id=orig["id"],
                local_date=now.strftime("%m%d"),
                created_at=now,
                updated_at=now,
            )
        )
        return self._response(msg, outcome.code, **self._approved_fields(rrn, auth_code))

    def _reversal(
        self, conn: Connection, msg: Message, f60: Field60, rrn: str, pik: bytes, merchant_name: str
    ) -> Message:
        tid, stan = msg["41"], msg["11"]
        now = self.clock.now()
        orig = (
            conn.execute(
                select(transactions)
                .where(
                    transactions.c.tid == tid,
                    transactions.c.batch == f60.batch,
                    transactions.c.stan == stan,
                    transactions.c.kind.in_(("sale", "void")),
                )
                .with_for_update()
            )
            .mappings()
            .first()
        )
        original_seen = (
            conn.execute(
                select(requests.c.id).where(
                    requests.c.tid == tid,
                    requests.c.batch == f60.batch,
                    requests.c.stan == stan,
                    requests.c.mti == Mti.FINANCIAL.value,
                )
            ).first()
            is not None
        )
        if orig is None and not original_seen:
            conn.execute(
                insert(tombstones).values(
                    tid=tid, batch=f60.batch, stan=stan, mti=Mti.FINANCIAL.value, created_at=now
                )
            )
        elif orig is not None and orig["status"] == TxnStatus.APPROVED:
            if orig["kind"] == "sale":
                issuer.bank.credit(
                    conn,
                    authorization_id=int(orig["issuer_ref"]),
                    amount_minor=int(orig["amount_minor"]),
                    reason=Reason.REVERSAL,
                    reference=rrn,
                    merchant_name=merchant_name,
                    now=now,
                )
            else:  # a reversed void puts the sale back
                issuer.bank.rebook_debit(
                    conn,
                    authorization_id=int(orig["issuer_ref"]),
                    amount_minor=int(orig["amount_minor"]),
                    reference=rrn,
                    merchant_name=merchant_name,
                    now=now,
                )
                conn.execute(
                    update(transactions)
                    .where(transactions.c.id == orig["original_id"])
                    .values(status=TxnStatus.APPROVED, updated_at=now)
                )
            conn.execute(
                update(transactions)
                .where(transactions.c.id == orig["id"])
                .values(status=TxnStatus.REVERSED, updated_at=now)
            )
        fields = self._approved_fields(rrn, None)
        return self._response(msg, RC.APPROVED, **fields)


def _auth_code(authorization_id: int | None) -> str | None:
    if authorization_id is None:
        return None
    # A bank's authorization code: 6 digits, derived from its own authorization record.
    return f"{(authorization_id * 7919 + 104729) % 1_000_000:06d}"


def _dump(msg: Message) -> str:
    return json.dumps({"mti": msg.mti, "fields": dict(msg.fields)})


def _load(text: str) -> Message:
    data = json.loads(text)
    return Message(data["mti"], data["fields"])
