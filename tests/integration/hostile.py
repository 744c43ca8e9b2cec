"""Hostile frames for host tests: other dialects, undefined fields, secondary bitmaps,
non-decimal digits, response MTIs, broken framing. Built from the profile's own packed messages
and then edited at the byte level, so they are exactly what the codec must refuse."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import iso8583

from tillroll.crypto.mac import mac_ecb
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, pack
from tillroll.iso8583.spec import SPEC

BODY_OFFSET = 10  # MTI (2) + primary bitmap (8)
UNDEFINED_BEFORE_TID = (5, 7, 18, 24, 33)
UNDEFINED_AFTER_TID = (43, 45, 47, 50, 56, 59)


def frame(body: bytes, tpdu: bytes = framing.TERMINAL_TPDU, header: bytes = framing.TERMINAL_HEADER) -> bytes:
    payload = tpdu + header + body
    return struct.pack(">H", len(payload)) + payload


def field_spans(raw: bytes) -> dict[int, tuple[int, int]]:
    """Where each field's data starts and ends in a packed message of the profile."""
    _, encoded = iso8583.decode(bytearray(raw), SPEC)
    spans: dict[int, tuple[int, int]] = {}
    offset = BODY_OFFSET
    for key in sorted((k for k in encoded if k.isdigit()), key=int):
        start = offset + len(encoded[key]["len"])
        offset = start + len(encoded[key]["data"])
        spans[int(key)] = (start, offset)
    return spans


def set_bit(raw: bytes, bit: int) -> bytes:
    bitmap = bytearray(raw[2:BODY_OFFSET])
    bitmap[(bit - 1) // 8] |= 0x80 >> ((bit - 1) % 8)
    return raw[:2] + bytes(bitmap) + raw[BODY_OFFSET:]


def with_foreign_field(raw: bytes, bit: int, data: bytes) -> bytes:
    """Add a field the profile does not define (its bit set, its bytes where it belongs)."""
    spans = field_spans(raw)
    before = [end for n, (_, end) in spans.items() if n < bit]
    at = max(before) if before else BODY_OFFSET
    return set_bit(raw[:at] + data + raw[at:], bit)


def with_secondary_bitmap(raw: bytes) -> bytes:
    """Bit 1 set and a secondary bitmap naming field 70 (network code 301, as other hosts use)."""
    secondary = (1 << (64 - (70 - 64))).to_bytes(8, "big")
    return set_bit(raw[:BODY_OFFSET] + secondary + raw[BODY_OFFSET:], 1) + bytes.fromhex("0301")


def with_nibbles(raw: bytes, field: int, hexdigits: str) -> bytes:
    """Overwrite a field's data bytes with other nibbles (same length)."""
    start, end = field_spans(raw)[field]
    data = bytes.fromhex(hexdigits)
    assert len(data) == end - start, (field, len(data), end - start)
    return raw[:start] + data + raw[end:]


def with_nibble(raw: bytes, field: int, index: int, nibble: str) -> bytes:
    """Set one nibble of a field's data (index counts nibbles from the field's first byte)."""
    start, end = field_spans(raw)[field]
    nibbles = list(raw[start:end].hex().upper())
    nibbles[index] = nibble
    return with_nibbles(raw, field, "".join(nibbles))


def resign(raw: bytes, mak: bytes) -> bytes:
    """Recompute field 64 over the (edited) bytes: a MAC-valid hostile message."""
    return raw[:-8] + mac_ecb(mak, raw[:-8])


def with_mti(raw: bytes, mti: str) -> bytes:
    return bytes.fromhex(mti) + raw[2:]


def generated_flood(tid: str, mid: str, seed: int) -> Iterator[bytes]:
    """An endless, reproducible mix of hostile frames (each a whole frame with its length)."""
    rng = random.Random(seed)
    base = pack(Message("0200", {"3": "000000", "4": "000000000100", "11": "000001", "41": tid, "42": mid}))
    sign_in = pack(Message("0800", {"11": "000001", "41": tid, "42": mid, "60": "00000001003"}))
    makers = [
        lambda: frame(with_foreign_field(base, rng.choice(UNDEFINED_BEFORE_TID), rng.randbytes(6))),
        lambda: frame(with_foreign_field(base, rng.choice(UNDEFINED_AFTER_TID), rng.randbytes(6))),
        lambda: frame(with_secondary_bitmap(base)),
        lambda: frame(with_nibbles(base, 4, f"0000000010{rng.choice('ABCDEF')}{rng.choice('ABCDEF')}")),
        lambda: frame(with_nibbles(base, 11, f"00{rng.choice('ABCDEF')}001")),
        lambda: frame(with_mti(sign_in, "0810")),
        lambda: frame(with_mti(base, rng.choice(["0210", "0100", "0110", "0420", "9999"]))),
        lambda: frame(rng.randbytes(rng.randint(2, 60))),  # garbage after a frame header
        lambda: struct.pack(">H", rng.choice([0, 5, 4000])),  # framing errors: the connection closes
        lambda: frame(rng.randbytes(rng.randint(2, 40)), tpdu=b"\x61" + rng.randbytes(4)),
    ]
    while True:
        yield rng.choice(makers)()
