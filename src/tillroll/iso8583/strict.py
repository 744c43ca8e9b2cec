"""Strict reading of the profile (PROFILE §2, §7): what pyiso8583 does not check. Pure.

pyiso8583 decodes by the spec but trusts the bytes: a bitmap bit for a field the spec lacks (any
other ISO 8583 dialect, a secondary bitmap) raises KeyError from its spec lookup, and a BCD field
is returned as whatever hex nibbles it holds ('0000000010AB'). Here the bitmap is checked before
decoding and every BCD field's nibbles after it, so each of these is a `DecodeError` that names
the field and the byte offset (counted from the first byte of the MTI).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

from tillroll.iso8583.errors import DecodeError
from tillroll.iso8583.spec import BINARY_FIELDS, SPEC, SUPPORTED_FIELDS, TRACK_FIELDS

MTI_LEN = 2
BITMAP_LEN = 8
BODY_OFFSET = MTI_LEN + BITMAP_LEN  # first byte of field 2..64
SECONDARY_BITMAP_BIT = 1
# The request MTIs the host processes (PROFILE §7); everything else is answered 30 or closed.
REQUEST_MTIS = frozenset({"0200", "0220", "0320", "0400", "0500", "0800", "0820"})
# Every MTI of the profile, requests and their responses.
PROFILE_MTIS = REQUEST_MTIS | frozenset(m[:2] + str(int(m[2]) + 1) + m[3] for m in REQUEST_MTIS)

# BCD fields: packed digits (n), or digits and nibble D for the track separator (z).
BCD_FIELDS = frozenset(k for k in SUPPORTED_FIELDS if SPEC[k]["data_enc"] == "b") - BINARY_FIELDS
DIGITS = frozenset("0123456789")
TRACK_NIBBLES = DIGITS | {"D"}
_DEFINED_BITS = frozenset(int(k) for k in SUPPORTED_FIELDS)
# The primary bitmap's bits (as one big-endian integer) of fields the profile lacks, bit 1 included.
_UNDEFINED_MASK = sum(1 << (64 - bit) for bit in range(1, 65) if bit not in _DEFINED_BITS)
# Per BCD field, the byte values of two allowed nibbles: `data.translate(None, these)` is empty
# exactly when every nibble of `data` is allowed (the rule of `check_nibbles`, in one C call).
_DIGIT_BYTES = bytes(hi << 4 | lo for hi in range(10) for lo in range(10))
_TRACK_BYTES = bytes(hi << 4 | lo for hi in (*range(10), 0xD) for lo in (*range(10), 0xD))
_BCD_BYTES = {key: _TRACK_BYTES if key in TRACK_FIELDS else _DIGIT_BYTES for key in BCD_FIELDS}


# For each byte value, the 1-based positions of its set bits (most significant first).
_BYTE_BITS = tuple(tuple(b + 1 for b in range(8) if value & (0x80 >> b)) for value in range(256))


def bitmap_bits(bitmap: bytes) -> list[int]:
    """The field numbers whose bits are set, in order (bit 1 is the first bit of byte 0)."""
    return [i * 8 + bit for i, byte in enumerate(bitmap) for bit in _BYTE_BITS[byte]]


def check_mti(raw: bytes, allowed: frozenset[str] = PROFILE_MTIS) -> str:
    if len(raw) < MTI_LEN:
        raise DecodeError(f"message of {len(raw)} bytes has no MTI", field="t", offset=0)
    mti = raw[:MTI_LEN].hex().upper()
    if mti not in allowed:
        raise DecodeError(f"MTI {mti} is not one the profile accepts here", field="t", offset=0)
    return mti


def check_bitmap(raw: bytes) -> list[int]:
    """The primary bitmap names only fields the profile defines, and no secondary bitmap."""
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


def check_bitmap_fields(raw: bytes) -> None:
    """`check_bitmap` without the list of bits (what `unpack` needs): one mask test, and on a
    bitmap that fails it `check_bitmap` itself raises, naming the first offending bit."""
    bitmap = raw[MTI_LEN:BODY_OFFSET]
    if len(bitmap) != BITMAP_LEN or int.from_bytes(bitmap, "big") & _UNDEFINED_MASK:
        check_bitmap(raw)


def check_nibbles(encoded: Mapping[str, Mapping[str, bytes]]) -> None:
    """Every BCD field holds digits (tracks: digits and D), pad nibbles included.

    `encoded` is pyiso8583's encoded document: per field its length prefix and data bytes, in
    wire order after MTI and bitmap, which gives each field's offset.
    """
    allowed_bytes = _BCD_BYTES.get
    for key, part in encoded.items():
        allowed = allowed_bytes(key)
        if allowed is not None and part["data"].translate(None, allowed):
            _raise_bad_nibble(encoded)


def _raise_bad_nibble(encoded: Mapping[str, Mapping[str, bytes]]) -> NoReturn:
    """`check_nibbles` once a field failed it: find the first bad nibble, its field and offset."""
    offset = BODY_OFFSET
    # pyiso8583 fills the document in wire order (MTI, bitmap, then fields by number).
    for key, part in encoded.items():
        if not key.isdigit():
            continue
        prefix, data = part["len"], part["data"]
        start = offset + len(prefix)
        offset = start + len(data)
        if key not in BCD_FIELDS:
            continue
        allowed = TRACK_NIBBLES if key in TRACK_FIELDS else DIGITS
        nibbles = data.hex().upper()
        if set(nibbles) <= allowed:
            continue
        i = next(i for i, nibble in enumerate(nibbles) if nibble not in allowed)
        kind = "digits and D" if key in TRACK_FIELDS else "digits"
        raise DecodeError(f"nibble {nibbles[i]} in a field of {kind}", field=key, offset=start + i // 2)
    raise AssertionError("check_nibbles found a bad nibble that its exact rule does not")


def value_ok(key: str, wire_value: str) -> bool:
    """The same rule for a value about to be packed (tracks already with D for '=')."""
    if key not in BCD_FIELDS:
        return True
    return set(wire_value) <= (TRACK_NIBBLES if key in TRACK_FIELDS else DIGITS)
