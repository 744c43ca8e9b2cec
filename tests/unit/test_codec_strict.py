"""Strict decoding (PROFILE §2, §7): other dialects, secondary bitmaps, non-decimal digits and
non-request MTIs are `DecodeError`s naming field and offset, and nothing else ever escapes."""

from __future__ import annotations

import iso8583
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tillroll.crypto.mac import mac_ecb, mac_equal
from tillroll.iso8583.errors import DecodeError, EncodeError
from tillroll.iso8583.messages import Message, pack, read_mti_and_tid, sign, unpack, unpack_request
from tillroll.iso8583.spec import SPEC
from tillroll.iso8583.strict import REQUEST_MTIS

MAK = bytes.fromhex("0123456789ABCDEF")
SALE = Message(
    "0200",
    {
        "2": "6222021234567890123",
        "3": "000000",
        "4": "000000001000",
        "11": "000123",
        "14": "3012",
        "22": "012",
        "25": "00",
        "41": "12345678",
        "42": "123456789012345",
        "49": "156",
        "53": "2600000000000000",
        "60": "22000001000",
    },
)


def _set_bit(raw: bytes, bit: int) -> bytes:
    bitmap = bytearray(raw[2:10])
    bitmap[(bit - 1) // 8] |= 0x80 >> ((bit - 1) % 8)
    return raw[:2] + bytes(bitmap) + raw[10:]


def _field4_at(raw: bytes) -> int:
    _, enc = iso8583.decode(bytearray(raw), SPEC)
    return 10 + sum(len(enc[k]["len"]) + len(enc[k]["data"]) for k in ("2", "3"))


def test_a_bitmap_bit_for_an_undefined_field_is_a_format_error_at_the_bitmap() -> None:
    raw = _set_bit(pack(SALE), 24) + b"\x00\x01"
    with pytest.raises(DecodeError) as err:
        unpack(raw)
    assert (err.value.field, err.value.offset) == ("24", 2 + 23 // 8)


def test_a_secondary_bitmap_is_a_format_error() -> None:
    raw = pack(SALE)
    raw = _set_bit(raw[:10] + bytes(8) + raw[10:], 1)
    with pytest.raises(DecodeError) as err:
        unpack(raw)
    assert err.value.field == "1"


def test_nibbles_a_to_f_in_the_amount_are_a_format_error_with_their_offset() -> None:
    raw = pack(SALE)
    at = _field4_at(raw)
    bad = raw[:at] + bytes.fromhex("0000000010AB") + raw[at + 6 :]
    with pytest.raises(DecodeError) as err:
        unpack(bad)
    assert (err.value.field, err.value.offset) == ("4", at + 5)


def test_track_fields_take_digits_and_d_only() -> None:
    track = SALE.without("2").with_fields(f35="6222021234567890123=3012")
    assert unpack(pack(track))["35"] == "6222021234567890123=3012"
    raw = bytearray(pack(track))
    _, enc = iso8583.decode(raw, SPEC)
    at = 10 + sum(len(enc[k]["len"]) + len(enc[k]["data"]) for k in ("3", "4", "11", "14", "22", "25"))
    raw[at + 1 + 2] = 0xE2  # a nibble E in track 2 (after its 1-byte length)
    with pytest.raises(DecodeError) as err:
        unpack(bytes(raw))
    assert err.value.field == "35"


def test_only_request_mtis_are_requests() -> None:
    for mti in sorted(REQUEST_MTIS):
        assert unpack_request(pack(Message(mti, {"11": "000001", "41": "12345678"}))).mti == mti
    for mti in ("0810", "0210", "0410"):
        raw = pack(Message(mti, {"11": "000001", "41": "12345678"}))
        assert unpack(raw).mti == mti  # a terminal reads responses
        with pytest.raises(DecodeError) as err:
            unpack_request(raw)
        assert (err.value.field, err.value.offset) == ("t", 0)
    with pytest.raises(DecodeError):
        unpack(bytes.fromhex("0100") + pack(SALE)[2:])


def test_pack_refuses_non_digits_in_numeric_fields() -> None:
    with pytest.raises(EncodeError) as err:
        pack(SALE.with_fields(f4="0000000010AB"))
    assert err.value.field == "4"
    with pytest.raises(EncodeError):
        pack(SALE.without("2").with_fields(f35="62220212345=30E2"))


def test_the_tid_of_a_foreign_message_is_read_when_nothing_before_it_is_foreign() -> None:
    raw = pack(SALE)
    assert read_mti_and_tid(_set_bit(raw, 43) + b"ANOTHER DIALECT") == ("0200", "12345678")
    assert read_mti_and_tid(_set_bit(raw, 7) + b"\x12\x15\x14\x30\x22") == ("0200", None)
    secondary = _set_bit(raw[:10] + bytes(8) + raw[10:], 1)
    assert read_mti_and_tid(secondary) == ("0200", "12345678")
    assert read_mti_and_tid(b"\x0a\x00" + raw[2:]) == (None, None)
    assert read_mti_and_tid(b"\x02") == (None, None)


def test_macs_are_compared_in_constant_time_and_still_compare() -> None:
    mac = mac_ecb(MAK, b"block")
    assert mac_equal(mac, mac_ecb(MAK, b"block"))
    assert not mac_equal(mac, bytes(8))


def _only_decode_errors(raw: bytes) -> None:
    try:
        msg = unpack(raw)
    except DecodeError:
        pass
    else:  # what decodes is the profile's own: it packs back to the same bytes
        assert pack(msg) == raw
    read_mti_and_tid(raw)  # never raises


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_errors(raw: bytes) -> None:
    _only_decode_errors(raw)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutations_of_a_valid_message_raise_only_decode_errors(data: st.DataObject) -> None:
    raw = bytearray(sign(SALE, MAK))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "bit"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255))
        elif kind == "set" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "bit" and len(raw) >= 10:
            bit = data.draw(st.integers(1, 64))
            raw[2 + (bit - 1) // 8] ^= 0x80 >> ((bit - 1) % 8)
    _only_decode_errors(bytes(raw))
