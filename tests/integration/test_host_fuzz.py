"""Property-based fuzzing of the host pipeline (PROFILE §7): arbitrary bytes and arbitrary
mutations of valid frames produce only a response or a close, never an exception, never a change
in any balance (the issuer's cards and every ledger account), and never disturb the request that
shares their group commit."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pytest
from hostile import frame, resign
from hostwire import EXPIRY, MID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tillroll.clock import FakeClock
from tillroll.crypto import encrypt_pin_block, unwrap_working_keys
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.config import HostConfig
from tillroll.host.pipeline import HostPipeline
from tillroll.host.store import open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, pack, sign, unpack
from tillroll.iso8583.strict import PROFILE_MTIS
from tillroll.ledger import postings as ledger
from tillroll.store.tables import issuer_cards

TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
FUNDED, EMPTY = "6222021234567890123", "6222029876543210987"
FUZZ_TID, ECHO_TID = "F0000001", "F0000002"


class Rig:
    """A pipeline on a fresh database, with one signed-in terminal and one approved sale."""

    def __init__(self, db_url: str) -> None:
        self.store = open_store(db_url)
        add_merchant(self.store, MID, "一号便利店")
        for tid in (FUZZ_TID, ECHO_TID):
            add_terminal(self.store, tid, MID, TMK)
        add_card(self.store, FUNDED, EXPIRY, "123456", 100_000)
        add_card(self.store, EMPTY, EXPIRY, "123456", 0)
        self.pipeline = HostPipeline(
            self.store.engine, self.store.keystore, FakeClock(), HostConfig(key_lifetime_s=3600)
        )
        self.stan = 0
        signed_in = self.ask(pack(Message("0800", {**self.who(), "60": "00000001003", "63": "001"})))
        self.keys = unwrap_working_keys(TMK, bytes.fromhex(signed_in["62"]))
        self.sale = self.message("0200", "000000", FUNDED, 2_000, "22")
        answer = self.ask(sign(self.sale, self.keys.mak))
        assert answer["39"] == "00"
        self.sale_answer = answer

    def who(self, tid: str = FUZZ_TID) -> dict[str, str]:
        self.stan += 1
        return {"11": f"{self.stan:06d}", "41": tid, "42": MID}

    def message(self, mti: str, code: str, pan: str, amount: int, type_code: str) -> Message:
        fields = {**self.who(), "2": pan, "3": code, "4": f"{amount:012d}", "14": EXPIRY,
                  "22": "022", "25": "00", "49": "156", "53": "2600000000000000",
                  "60": f"{type_code}000001000"}  # fmt: skip
        return Message(mti, fields)

    def ask(self, body: bytes) -> Message:
        (reply,) = self.pipeline.handle_batch([frame(body)[2:]])
        assert reply.frame is not None
        return unpack(framing.parse_payload(reply.frame[2:]).message)

    def money(self) -> tuple[dict[str, int], dict[str, int]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(issuer_cards.select()).mappings().all()
            return {str(r["id"]): int(r["balance_minor"]) for r in rows}, ledger.balances(conn)

    def valid_frames(self) -> dict[str, bytes]:
        """Signed, valid requests; the money-moving ones are only ever sent mutated (MAC broken)."""
        mak = self.keys.mak
        refund = Message(
            "0220",
            {**self.who(), "2": FUNDED, "3": "200000", "4": f"{1_000:012d}", "25": "00",
             "37": self.sale_answer["37"], "49": "156", "60": "25000001000",
             "61": f"000001{self.sale['11']}{self.sale_answer['13']}", "63": "000"},
        )  # fmt: skip
        reversal = Message(
            "0400", {k: v for k, v in self.sale.fields.items() if k not in ("53",)} | {"39": "98"}
        )
        pin = encrypt_pin_block(self.keys.pik, "123456", FUNDED).hex().upper()
        return {
            "sale": sign(self.message("0200", "000000", FUNDED, 500, "22"), mak),
            "sale with PIN": sign(
                self.message("0200", "000000", FUNDED, 500, "22").with_fields(f22="021", f26="12", f52=pin),
                mak,
            ),
            "refund": sign(refund, mak),
            "reversal": sign(reversal, mak),
        }

    def harmless_frames(self) -> dict[str, bytes]:
        """Requests that move no money whatever their content, so they may be re-signed after
        mutation (MAC-valid hostile content reaches every step)."""
        mak = self.keys.mak
        return {
            "declined sale": sign(self.message("0200", "000000", EMPTY, 700, "22"), mak),
            "balance": sign(self.message("0200", "310000", EMPTY, 0, "01").without("4"), mak),
            "echo": pack(Message("0820", {**self.who(), "60": "00000001301"})),
        }


def mutate(data: st.DataObject, raw: bytes, start: int) -> bytes:
    """1-4 edits (flip, set, cut, insert, bitmap bit) at or after `start`."""
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "bit"]))
        at = data.draw(st.integers(start, max(start, len(out) - 1)))
        if kind == "flip" and at < len(out):
            out[at] ^= data.draw(st.integers(1, 255))
        elif kind == "set" and at < len(out):
            out[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "bit" and len(out) >= 10:
            bit = data.draw(st.integers(1, 64))
            out[2 + (bit - 1) // 8] ^= 0x80 >> ((bit - 1) % 8)
    return bytes(out)


def check_reply(reply_frame: bytes | None, close: bool) -> None:
    """A response of this profile, or a close."""
    if reply_frame is None:
        assert close
        return
    payload = reply_frame[2:]
    assert struct.unpack(">H", reply_frame[:2])[0] == len(payload)
    message = framing.parse_payload(payload).message
    mti = message[:2].hex()
    assert mti.isdigit()
    if mti in PROFILE_MTIS:
        unpack(message)
    else:  # an answer to another profile's MTI: 30 only
        assert b"30" in message


@pytest.fixture
def rig(db_url: str) -> Iterator[Rig]:
    r = Rig(db_url)
    yield r
    r.store.engine.dispose()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_group(rig: Rig, hostile: list[bytes]) -> None:
    """The hostile payloads and one legitimate echo from another terminal, in one group."""
    before = rig.money()
    echo = frame(pack(Message("0820", {**rig.who(ECHO_TID), "60": "00000001301"})))[2:]
    replies = rig.pipeline.handle_batch([*hostile, echo])
    for reply in replies:
        check_reply(reply.frame, reply.close)
    legit = replies[-1]
    assert legit.frame is not None and not legit.close
    assert unpack(framing.parse_payload(legit.frame[2:]).message)["39"] == "00"
    assert rig.money() == before


@FUZZ
@given(data=st.data())
def test_arbitrary_payloads_never_escape_and_move_no_money(rig: Rig, data: st.DataObject) -> None:
    payloads = data.draw(
        st.lists(
            st.one_of(
                st.binary(max_size=200),  # not even a frame
                st.binary(min_size=2, max_size=200).map(
                    lambda b: framing.TERMINAL_TPDU + framing.TERMINAL_HEADER + b
                ),
            ),
            min_size=1,
            max_size=3,
        )
    )
    run_group(rig, payloads)


@FUZZ
@given(data=st.data())
def test_mutated_valid_requests_never_escape_and_move_no_money(rig: Rig, data: st.DataObject) -> None:
    frames = rig.valid_frames()
    name = data.draw(st.sampled_from(sorted(frames)), label="request")
    raw = frames[name]
    mutated = mutate(data, raw, start=0)  # inside the MAC'd bytes: the MAC no longer verifies
    if mutated == raw:
        return
    run_group(rig, [frame(mutated)[2:]])


@FUZZ
@given(data=st.data())
def test_mac_valid_hostile_content_never_escapes_and_moves_no_money(rig: Rig, data: st.DataObject) -> None:
    frames = rig.harmless_frames()
    name = data.draw(st.sampled_from(sorted(frames)), label="request")
    mutated = mutate(data, frames[name], start=0)
    body: Callable[[bytes], bytes] = (
        (lambda b: resign(b, rig.keys.mak)) if len(mutated) > 8 else (lambda b: b)
    )
    header = data.draw(st.binary(min_size=6, max_size=6), label="header")
    run_group(rig, [framing.TERMINAL_TPDU + header + body(mutated)])
