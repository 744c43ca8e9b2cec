"""The card wire profile (PROFILE §2) as a pyiso8583 spec: the format is data.

Binary/BCD fields carry hex strings at this level; `messages` converts track data
('=' <-> 'D') and keeps everything else as pyiso8583 gives it.
"""

from __future__ import annotations

from typing import Any


def _bcd_fixed(digits: int, desc: str, *, right_aligned: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "data_enc": "b",
        "len_enc": "b",
        "len_type": 0,
        "max_len": digits,
        "len_count": "nibbles",
        "desc": desc,
    }
    spec["left_pad" if right_aligned else "right_pad"] = "0"
    return spec


def _bcd_var(len_bytes: int, max_digits: int, desc: str) -> dict[str, Any]:
    """Variable BCD digits, left-aligned with a 0 pad nibble; length counts digits."""
    return {
        "data_enc": "b",
        "len_enc": "bcd",
        "len_type": len_bytes,
        "max_len": max_digits,
        "len_count": "nibbles",
        "right_pad": "0",
        "desc": desc,
    }


def _ascii(length: int, desc: str, len_bytes: int = 0) -> dict[str, Any]:
    return {
        "data_enc": "ascii",
        "len_enc": "bcd",
        "len_type": len_bytes,
        "max_len": length,
        "desc": desc,
    }


def _binary(length: int, desc: str, len_bytes: int = 0) -> dict[str, Any]:
    return {
        "data_enc": "b",
        "len_enc": "bcd",
        "len_type": len_bytes,
        "max_len": length,
        "desc": desc,
    }


SPEC: dict[str, dict[str, Any]] = {
    "h": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0, "desc": "none"},
    "t": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 2, "desc": "MTI"},
    "p": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    "2": _bcd_var(1, 19, "PAN"),
    "3": _bcd_fixed(6, "Processing code"),
    "4": _bcd_fixed(12, "Amount, fen"),
    "11": _bcd_fixed(6, "STAN"),
    "12": _bcd_fixed(6, "Local time hhmmss"),
    "13": _bcd_fixed(4, "Local date MMDD"),
    "14": _bcd_fixed(4, "Expiry YYMM"),
    "15": _bcd_fixed(4, "Settlement date MMDD"),
    "22": _bcd_fixed(3, "Entry mode + PIN flag", right_aligned=False),
    "23": _bcd_fixed(3, "Card sequence number"),
    "25": _bcd_fixed(2, "Condition code"),
    "26": _bcd_fixed(2, "Max PIN length"),
    "32": _bcd_var(1, 11, "Acquirer id"),
    "35": _bcd_var(1, 37, "Track 2"),
    "36": _bcd_var(2, 104, "Track 3"),
    "37": _ascii(12, "RRN"),
    "38": _ascii(6, "Authorization code"),
    "39": _ascii(2, "Response code"),
    "41": _ascii(8, "TID"),
    "42": _ascii(15, "MID"),
    "44": _ascii(25, "Additional response data", len_bytes=1),
    "48": _bcd_var(2, 322, "Settlement totals / upload items"),
    "49": _ascii(3, "Currency"),
    "52": _binary(8, "PIN block"),
    "53": _bcd_fixed(16, "Security control"),
    "54": _ascii(20, "Balance", len_bytes=2),
    "55": _binary(255, "Chip data", len_bytes=2),
    "60": _bcd_var(2, 17, "Reserved private 60"),
    "61": _bcd_var(2, 29, "Original transaction"),
    "62": _binary(512, "Reserved private 62", len_bytes=2),
    "63": _ascii(163, "Reserved private 63", len_bytes=2),
    "64": _ascii(8, "MAC"),
}

# Fields whose values are hex strings of raw bytes at the spec level.
BINARY_FIELDS = frozenset({"52", "55", "62"})
# Track fields: '=' travels as nibble D.
TRACK_FIELDS = frozenset({"35", "36"})
SUPPORTED_FIELDS = frozenset(k for k in SPEC if k.isdigit())
