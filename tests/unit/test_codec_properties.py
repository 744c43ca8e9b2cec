"""Properties of the codec: whatever the profile allows packs and unpacks to itself, the MAC
covers every byte before field 64, and damaged bytes never decode silently into other values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillroll.iso8583.errors import CodecError, DecodeError
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack


def n(length: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=length, max_size=length)


def nvar(max_len: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=1, max_size=max_len)


def ans(length: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=length, max_size=length)


def hexbytes(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=min_size, max_size=max_size).map(lambda b: b.hex().upper())


FIELDS: dict[str, st.SearchStrategy[str]] = {
    "2": nvar(19),
    "3": n(6),
    "4": n(12),
    "11": n(6),
    "12": n(6),
    "13": n(4),
    "14": n(4),
    "22": n(3),
    "23": n(3),
    "25": n(2),
    "26": n(2),
    "32": nvar(11),
    "35": st.tuples(nvar(19), nvar(17)).map(lambda t: f"{t[0]}={t[1]}"),
    "37": ans(12),
    "38": ans(6),
    "39": ans(2),
    "41": ans(8),
    "42": ans(15),
    "44": st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=25),
    "48": nvar(322),
    "49": ans(3),
    "52": hexbytes(8, 8),
    "53": n(16),
    "54": st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    "55": hexbytes(0, 255),
    "60": nvar(17),
    "61": nvar(29),
    "62": hexbytes(0, 512),
    "63": st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=163),
}

messages = st.builds(
    Message,
    st.sampled_from(["0200", "0210", "0220", "0400", "0500", "0800", "0320"]),
    st.fixed_dictionaries({}, optional=FIELDS),
)


@given(messages)
def test_pack_then_unpack_is_identity(msg: Message) -> None:
    back = unpack(pack(msg))
    assert back.mti == msg.mti
    assert dict(back.fields) == dict(msg.fields)


@given(messages, st.binary(min_size=8, max_size=8))
def test_mac_covers_every_byte_before_field_64(msg: Message, mak: bytes) -> None:
    raw = bytearray(sign(msg, mak))
    assert mac_matches(bytes(raw), mak)
    for i in range(0, len(raw) - 8, max(1, (len(raw) - 8) // 7)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x01
        assert not mac_matches(bytes(damaged), mak), f"flipping byte {i} went unnoticed"


@given(messages, st.data())
def test_truncation_is_an_error_naming_a_field_and_offset(msg: Message, data: st.DataObject) -> None:
    raw = pack(msg)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    try:
        back = unpack(raw[:cut])
    except DecodeError as exc:
        assert exc.field is not None and exc.offset is not None
        assert exc.offset <= cut
    else:  # the bitmap promises every field, so no cut can decode
        pytest.fail(f"truncated message decoded as {back}")


def test_unknown_field_does_not_encode() -> None:
    with pytest.raises(CodecError, match="field 5"):
        pack(Message("0200", {"5": "1"}))
