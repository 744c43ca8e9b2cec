"""Foreign ISO 8583 traffic, as pure data: what another dialect's client (or an attacker) sends
to the host's port. Each message is a whole frame (length prefix included), built from the
profile's own packed messages and then edited at the byte level, or written in another
dialect's encoding, so it is exactly what PROFILE §1 and §7 say the host must refuse (30 or a
closed connection) without disturbing anyone else.

No IO here: :func:`foreign_frames` is a reproducible iterator over a seeded RNG, shared by the
demo's flood (:mod:`tillroll.sim.foreign_client`) and by tests.
"""

from __future__ import annotations

import enum
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, pack

BODY_OFFSET = 10  # MTI (2 bytes BCD) + primary bitmap (8)
UNDEFINED_FIELDS = (5, 7, 18, 24, 33, 43, 45, 47, 50, 56, 59)  # bits the profile does not define
OVERSIZE_LENGTHS = (0, 5, 2049, 4000, 0xFFFF)  # outside 13..2048: a framing error (PROFILE §1)


class ForeignKind(enum.StrEnum):
    ASCII_DIALECT = "ascii_0100"  # an 0100 with an ASCII MTI and a hex-ASCII bitmap
    UNDEFINED_FIELD = "undefined_field"  # our 0200 naming a field the profile does not define
    SECONDARY_BITMAP = "secondary_bitmap"  # bit 1 set, a secondary bitmap naming field 70
    NON_DECIMAL = "non_decimal"  # nibbles A-F in a numeric field (amount or STAN)
    RESPONSE_MTI = "response_mti"  # 0810 / 0210 / 0110 sent as a request
    RANDOM_BYTES = "random_bytes"  # a valid length prefix, then noise
    OVERSIZE_LENGTH = "oversize_length"  # a length prefix outside the profile's bounds


@dataclass(frozen=True)
class ForeignFrame:
    kind: ForeignKind
    data: bytes  # what goes on the wire, length prefix included


def frame(body: bytes, tpdu: bytes = framing.TERMINAL_TPDU, header: bytes = framing.TERMINAL_HEADER) -> bytes:
    payload = tpdu + header + body
    return struct.pack(">H", len(payload)) + payload


def set_bit(raw: bytes, bit: int) -> bytes:
    bitmap = bytearray(raw[2:BODY_OFFSET])
    bitmap[(bit - 1) // 8] |= 0x80 >> ((bit - 1) % 8)
    return raw[:2] + bytes(bitmap) + raw[BODY_OFFSET:]


def with_mti(raw: bytes, mti: str) -> bytes:
    return bytes.fromhex(mti) + raw[2:]


def with_undefined_field(raw: bytes, bit: int, data: bytes) -> bytes:
    """The bit for a field the profile does not define, and some bytes for it after the bitmap
    (where a decoder that trusts the bitmap would look for the first field)."""
    return set_bit(raw[:BODY_OFFSET] + data + raw[BODY_OFFSET:], bit)


def with_secondary_bitmap(raw: bytes) -> bytes:
    """Bit 1 set and a secondary bitmap naming field 70 (network code 301, as other hosts use)."""
    secondary = (1 << (64 - (70 - 64))).to_bytes(8, "big")
    return set_bit(raw[:BODY_OFFSET] + secondary + raw[BODY_OFFSET:], 1) + bytes.fromhex("0301")


def ascii_dialect_0100(rng: random.Random, tid: str, mid: str) -> bytes:
    """An authorization request of an ASCII dialect (MTI and bitmap as ASCII text, fields
    3, 4, 11, 41, 42 as ASCII digits), sometimes without any TPDU/header at all."""
    stan = f"{rng.randrange(1_000_000):06d}"
    amount = f"{rng.randrange(1, 10**7):012d}"
    bitmap = (1 << (64 - 3)) | (1 << (64 - 4)) | (1 << (64 - 11)) | (1 << (64 - 41)) | (1 << (64 - 42))
    body = b"0100" + f"{bitmap:016X}".encode() + b"000000" + amount.encode() + stan.encode()
    body += tid.encode()[:8].ljust(8) + mid.encode()[:15].ljust(15)
    if rng.random() < 0.5:
        return struct.pack(">H", len(body)) + body  # no TPDU: not a frame of ours
    return frame(body)


def foreign_frames(seed: int, tids: Sequence[str], mid: str) -> Iterator[ForeignFrame]:
    """An endless, reproducible mix of foreign frames. Half name one of ``tids`` (a client that
    knows a real terminal id), half a TID nobody registered."""
    rng = random.Random(seed)

    def tid() -> str:
        return rng.choice(tids) if tids and rng.random() < 0.5 else f"9{rng.randrange(10**7):07d}"

    def stan() -> str:
        return f"{rng.randrange(1, 1_000_000):06d}"

    def sale() -> bytes:
        amount = f"{rng.randrange(1, 10**6):012d}"
        fields = {"3": "000000", "4": amount, "11": stan(), "41": tid(), "42": mid, "49": "156",
                  "60": "22000001000"}  # fmt: skip
        return pack(Message("0200", fields))

    def sign_in() -> bytes:
        return pack(Message("0800", {"11": stan(), "41": tid(), "42": mid, "60": "00000001003", "63": "001"}))

    def non_decimal() -> bytes:
        raw = bytearray(sale())
        # field 3 is bytes 10..12, field 4 bytes 13..18, field 11 bytes 19..21 (all BCD, fixed)
        at = rng.choice([17, 18, 20, 21])
        raw[at] = (raw[at] & 0xF0) | rng.randrange(0xA, 0x10)
        return bytes(raw)

    makers: dict[ForeignKind, Callable[[], bytes]] = {
        ForeignKind.ASCII_DIALECT: lambda: ascii_dialect_0100(rng, tid(), mid),
        ForeignKind.UNDEFINED_FIELD: lambda: frame(
            with_undefined_field(sale(), rng.choice(UNDEFINED_FIELDS), rng.randbytes(6))
        ),
        ForeignKind.SECONDARY_BITMAP: lambda: frame(with_secondary_bitmap(sale())),
        ForeignKind.NON_DECIMAL: lambda: frame(non_decimal()),
        ForeignKind.RESPONSE_MTI: lambda: frame(
            with_mti(sign_in(), "0810")
            if rng.random() < 0.5
            else with_mti(sale(), rng.choice(["0210", "0110"]))
        ),
        ForeignKind.RANDOM_BYTES: lambda: frame(rng.randbytes(rng.randint(2, 80))),
        ForeignKind.OVERSIZE_LENGTH: lambda: (
            struct.pack(">H", rng.choice(OVERSIZE_LENGTHS)) + rng.randbytes(rng.randint(0, 40))
        ),
    }
    kinds = list(makers)
    while True:
        kind = rng.choice(kinds)
        yield ForeignFrame(kind, makers[kind]())
