"""The codec as it was before its fast paths (commit 76060ed), kept verbatim as the reference the
property tests in test_codec_fast_paths.py compare the current code with: same bytes, same values,
same exception type and text. Not used by the application."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import iso8583

from tillroll.crypto import des
from tillroll.iso8583.errors import DecodeError, EncodeError
from tillroll.iso8583.messages import MAC_FIELD, MAC_LEN, Message
from tillroll.iso8583.spec import BINARY_FIELDS, SPEC, SUPPORTED_FIELDS, TRACK_FIELDS

MTI_LEN = 2
BITMAP_LEN = 8
BODY_OFFSET = MTI_LEN + BITMAP_LEN
SECONDARY_BITMAP_BIT = 1
BCD_FIELDS = frozenset(k for k in SUPPORTED_FIELDS if SPEC[k]["data_enc"] == "b") - BINARY_FIELDS
_DIGITS = frozenset("0123456789")
_TRACK_NIBBLES = _DIGITS | {"D"}
_DEFINED_BITS = frozenset(int(k) for k in SUPPORTED_FIELDS)
_BYTE_BITS = tuple(tuple(b + 1 for b in range(8) if value & (0x80 >> b)) for value in range(256))


def mac_ecb(mak: bytes, mac_block: bytes) -> bytes:
    padded = mac_block + bytes(-len(mac_block) % 8)
    r = 0
    for i in range(0, len(padded), 8):  # XOR of all 8-byte blocks
        r ^= int.from_bytes(padded[i : i + 8], "big")
    r_hex = r.to_bytes(8, "big").hex().upper().encode("ascii")
    e1 = des.encrypt(mak, r_hex[:8])
    x = (int.from_bytes(e1, "big") ^ int.from_bytes(r_hex[8:], "big")).to_bytes(8, "big")
    e2 = des.encrypt(mak, x)
    return e2.hex().upper()[:8].encode("ascii")


def bitmap_bits(bitmap: bytes) -> list[int]:
    return [i * 8 + bit for i, byte in enumerate(bitmap) for bit in _BYTE_BITS[byte]]


def check_mti(raw: bytes, allowed: frozenset[str]) -> str:
    if len(raw) < MTI_LEN:
        raise DecodeError(f"message of {len(raw)} bytes has no MTI", field="t", offset=0)
    mti = raw[:MTI_LEN].hex().upper()
    if mti not in allowed:
        raise DecodeError(f"MTI {mti} is not one the profile accepts here", field="t", offset=0)
    return mti


def check_bitmap(raw: bytes) -> list[int]:
    bitmap = raw[MTI_LEN:BODY_OFFSET]
    if len(bitmap) != BITMAP_LEN:
        raise DecodeError("message ends inside the bitmap", field="p", offset=MTI_LEN)
    bits = bitmap_bits(bitmap)
    for bit in bits:
        if bit == SECONDARY_BITMAP_BIT:
            raise DecodeError("secondary bitmap: the profile uses none", field="1", offset=MTI_LEN)
        if bit not in _DEFINED_BITS:
            raise DecodeError(
                "bitmap names a field the profile does not define",
                field=str(bit),
                offset=MTI_LEN + (bit - 1) // 8,
            )
    return bits


def check_nibbles(encoded: Mapping[str, Mapping[str, bytes]]) -> None:
    offset = BODY_OFFSET
    for key, part in encoded.items():
        if not key.isdigit():
            continue
        prefix, data = part["len"], part["data"]
        start = offset + len(prefix)
        offset = start + len(data)
        if key not in BCD_FIELDS:
            continue
        allowed = _TRACK_NIBBLES if key in TRACK_FIELDS else _DIGITS
        nibbles = data.hex().upper()
        if set(nibbles) <= allowed:
            continue
        i = next(i for i, nibble in enumerate(nibbles) if nibble not in allowed)
        kind = "digits and D" if key in TRACK_FIELDS else "digits"
        raise DecodeError(f"nibble {nibbles[i]} in a field of {kind}", field=key, offset=start + i // 2)


def value_ok(key: str, wire_value: str) -> bool:
    if key not in BCD_FIELDS:
        return True
    return set(wire_value) <= (_TRACK_NIBBLES if key in TRACK_FIELDS else _DIGITS)


def with_fields(msg: Message, **changes: str | None) -> Message:
    new = dict(msg.fields)
    for k, v in changes.items():
        num = k.lstrip("f")
        if v is None:
            new.pop(num, None)
        else:
            new[num] = v
    return Message(msg.mti, new)


def _to_wire(msg: Message) -> dict[str, Any]:
    doc: dict[str, Any] = {"t": msg.mti}
    for key, value in msg.fields.items():
        if key not in SUPPORTED_FIELDS:
            raise EncodeError("field not in the profile", field=key)
        wire = value.replace("=", "D") if key in TRACK_FIELDS else value
        if not value_ok(key, wire):
            raise EncodeError("numeric field holds more than digits", field=key)
        doc[key] = wire
    return doc


def pack(msg: Message) -> bytes:
    try:
        raw, _ = iso8583.encode(_to_wire(msg), SPEC)
    except iso8583.EncodeError as exc:
        raise EncodeError(exc.msg, field=exc.field) from None
    return bytes(raw)


def unpack(raw: bytes, *, mtis: frozenset[str]) -> Message:
    check_mti(raw, mtis)
    check_bitmap(raw)
    try:
        doc, encoded = iso8583.decode(bytearray(raw), SPEC)
    except iso8583.DecodeError as exc:
        raise DecodeError(exc.msg, field=exc.field, offset=exc.pos) from None
    check_nibbles(encoded)
    mti = doc.pop("t")
    doc.pop("p", None)
    doc.pop("h", None)
    for key in TRACK_FIELDS & doc.keys():
        doc[key] = doc[key].replace("D", "=")
    return Message(mti=mti, fields=doc)


def sign(msg: Message, mak: bytes) -> bytes:
    placeholder = pack(with_fields(msg, f64="0" * MAC_LEN))
    return placeholder[:-MAC_LEN] + mac_ecb(mak, placeholder[:-MAC_LEN])


def mac_matches(raw: bytes, mak: bytes) -> bool:
    has_mac = len(raw) >= 10 and bool(raw[9] & 0x01)
    return has_mac and mac_ecb(mak, raw[:-MAC_LEN]) == raw[-MAC_LEN:]


assert MAC_FIELD == "64"
