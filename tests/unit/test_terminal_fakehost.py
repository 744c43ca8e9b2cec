"""A scripted fake acquirer host behind the terminal's HostLink protocol (no sockets).

It speaks the real codec with real keys and MACs, so the engine under test is exercised end to
end except for TCP. Faults are scripted per request: ``host.script.append(Act.DROP_RESPONSE)``.
Imported by the other terminal unit tests; it holds one self-test of its own.

It is NOT the host's rules (tests/integration/test_terminal_host.py runs the engine against the
real HostServer): it is kept for what the real host never does — an approval without field 38,
wrong key check values, a batch number set by hand — and for tests that count tries on a fake
clock, where a dead line must fail at once rather than after a connect timeout.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from tillroll.crypto import decrypt_pin, wrap_working_keys
from tillroll.crypto.keys import WorkingKeys
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack
from tillroll.terminal.hostlink import LinkResult, LinkStatus

TID = "T0000001"
MID = "M00000000000001"
TMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PAN = "6222021234567890123"
EXPIRY = "3012"
PIN = "123456"


class Act(enum.Enum):
    """What the fake does with the next request that is not a sign-in."""

    DROP_RESPONSE = "drop_response"  # processed, answer lost
    DROP_REQUEST = "drop_request"  # never processed, no answer
    CORRUPT_MAC = "corrupt_mac"  # processed, answer's MAC broken
    ANSWER_77 = "77"  # not processed: sign in again
    ANSWER_96 = "96"  # verified 96, nothing done
    NO_AUTH_CODE = "no_auth"  # approved without field 38
    UNREACHABLE = "unreachable"  # no line for this one request


@dataclass
class FakeHost:
    tmk: bytes = TMK
    batch: str = "000001"
    balances: dict[str, int] = field(default_factory=lambda: {PAN: 100_000})
    keys: WorkingKeys | None = None
    script: deque[Act] = field(default_factory=deque)
    unreachable: bool = False
    bad_kcv: bool = False
    requests: list[Message] = field(default_factory=list)
    sign_ins: int = 0
    approved: dict[tuple[str, str], int] = field(default_factory=dict)  # (batch, stan) -> amount
    stored: dict[tuple[str, str, str], Message] = field(default_factory=dict)
    tombstones: set[tuple[str, str]] = field(default_factory=set)
    rrn_seq: int = 0
    closes: int = 0

    # --- the HostLink protocol ---
    def close(self) -> None:
        self.closes += 1

    def abort(self) -> None:  # nothing blocks in a fake exchange
        pass

    def exchange(self, message: bytes) -> LinkResult:
        if self.unreachable:
            return LinkResult(LinkStatus.NOT_SENT)
        msg = unpack(message)
        act = self.script.popleft() if self.script and msg.mti != "0800" else None
        if act is Act.UNREACHABLE:
            return LinkResult(LinkStatus.NOT_SENT)
        self.requests.append(msg)
        if act is Act.DROP_REQUEST:
            return LinkResult(LinkStatus.NO_ANSWER)
        resp, mac, must_sign_in = self._handle(msg, message, act)
        if act is Act.DROP_RESPONSE:
            return LinkResult(LinkStatus.NO_ANSWER)
        raw = sign(resp, self.keys.mak) if mac and self.keys else pack(resp)
        if act is Act.CORRUPT_MAC:
            raw = raw[:-1] + bytes([raw[-1] ^ 0xFF])
        header = framing.reply_header(framing.TERMINAL_HEADER, must_sign_in=must_sign_in)
        frame = framing.parse_payload(framing.reply_tpdu(framing.TERMINAL_TPDU) + header + raw)
        return LinkResult(LinkStatus.ANSWERED, frame, line="fake")

    # --- views for tests ---
    def of_mti(self, mti: str) -> list[Message]:
        return [m for m in self.requests if m.mti == mti]

    @property
    def ledger_minor(self) -> int:
        return sum(self.approved.values())

    # --- the host ---
    def _respond(self, req: Message, code: str, **extra: str) -> Message:
        fields = {k: req.fields[k] for k in ("2", "3", "4", "11", "25", "41", "42", "49", "60") if k in req}
        fields.update({"12": "093015", "13": "1129", "39": code})
        fields.update({k.lstrip("f"): v for k, v in extra.items()})
        return Message(req.mti[:2] + str(int(req.mti[2]) + 1) + req.mti[3], fields)

    def _handle(self, req: Message, raw: bytes, act: Act | None) -> tuple[Message, bool, bool]:
        if req.mti == "0800":
            self.sign_ins += 1
            self.keys = WorkingKeys.generate()
            f62 = bytearray(wrap_working_keys(self.tmk, self.keys))
            if self.bad_kcv:
                f62[16] ^= 0x01
            resp = self._respond(req, "00", f32="00010000", f37="000000000001", f62=f62.hex().upper())
            resp = resp.with_fields(f60=f"00{self.batch}{req['60'][8:11]}")
            return resp, False, False
        if req.mti == "0820":
            self.keys = None
            return self._respond(req, "00"), False, False
        if self.keys is None:
            return self._respond(req, "77"), False, True
        if not mac_matches(raw, self.keys.mak):
            return self._respond(req, "A0"), False, True
        if act is Act.ANSWER_77:
            return self._respond(req, "77"), False, True
        if act is Act.ANSWER_96:
            return self._respond(req, "96"), True, False
        key = (req["60"][2:8], req["11"], req.mti)
        if key in self.stored and req.mti != "0400":
            return self.stored[key], True, False
        resp = self._financial(req, act)
        self.stored[key] = resp
        return resp, True, False

    def _refs(self, with_auth: bool = True) -> dict[str, str]:
        self.rrn_seq += 1
        refs = {
            "f15": "1129",
            "f37": f"{self.rrn_seq:012d}",
            "f44": f"{'03080000':<11}{'00010000':<11}",
            "f63": "CUPFAKE BANK",
        }
        if with_auth:
            refs["f38"] = f"{self.rrn_seq:06d}"
        return refs

    def _financial(self, req: Message, act: Act | None) -> Message:
        batch, stan = req["60"][2:8], req["11"]
        if req.mti == "0400":
            if (batch, stan) in self.approved:
                amount = self.approved.pop((batch, stan))
                orig = next(m for m in self.requests if m.mti == "0200" and m["11"] == stan)
                if orig["3"] == "000000":
                    self.balances[orig["2"]] += amount
            else:
                self.tombstones.add((batch, stan))
            return self._respond(req, "00")
        if (batch, stan) in self.tombstones:
            return self._respond(req, "94")
        pan = req["2"]
        if pan not in self.balances:
            return self._respond(req, "14")
        pin_block = bytes.fromhex(req.get("52") or "")
        if pin_block and self.keys is not None and decrypt_pin(self.keys.pik, pin_block, pan) != PIN:
            return self._respond(req, "55")
        pc = req["3"]
        if pc == "310000":
            bal = self.balances[pan]
            refs = self._refs(with_auth=False)
            return self._respond(req, "00", f54=f"1002156C{bal:012d}", **refs)
        amount = int(req["4"])
        if pc == "000000":
            if amount > self.balances[pan]:
                return self._respond(req, "51")
            self.balances[pan] -= amount
            self.approved[(batch, stan)] = amount
            return self._respond(req, "00", **self._refs(with_auth=act is not Act.NO_AUTH_CODE))
        # void: undo the original named in 61
        orig_stan = req["61"][6:12]
        orig_amount = self.approved.pop((req["61"][:6], orig_stan), None)
        if orig_amount is None:
            return self._respond(req, "12")
        self.balances[pan] += orig_amount
        self.approved[(batch, stan)] = 0
        return self._respond(req, "00", **self._refs())


def test_fake_host_signs_in_with_keys_that_unwrap() -> None:
    from tillroll.crypto import unwrap_working_keys

    host = FakeHost()
    req = Message("0800", {"11": "000001", "41": TID, "42": MID, "60": "00000001003", "63": "001"})
    res = host.exchange(pack(req))
    assert res.frame is not None
    resp = unpack(res.frame.message)
    keys = unwrap_working_keys(TMK, bytes.fromhex(resp["62"]))
    assert host.keys is not None and keys.mak == host.keys.mak
