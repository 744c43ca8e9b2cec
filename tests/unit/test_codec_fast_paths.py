"""The codec's fast paths do exactly what the code before them did (tests/unit/codec_reference.py):
the same bytes and values for every input, and for every bad input the same exception type, text,
field and offset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import codec_reference as ref
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_codec_properties import FIELDS

from tillroll.crypto import des
from tillroll.crypto.mac import mac_ecb, xor_blocks
from tillroll.iso8583 import strict
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack, unpack_request
from tillroll.iso8583.spec import SPEC, SUPPORTED_FIELDS

MAK = bytes.fromhex("C24A8FB57AA20123FEDCBA9876543210")


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """What a call gives: its value, or its exception's type, text, field and offset."""
    try:
        return ("value", fn(*args, **kwargs))
    except Exception as exc:
        return ("raised", type(exc), str(exc), getattr(exc, "field", None), getattr(exc, "offset", None))


keys = st.sampled_from([8, 16, 24, 0, 7, 15]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@given(mak=keys, block=st.binary(max_size=600))
@example(mak=MAK, block=b"")
@example(mak=MAK, block=bytes(8))
@example(mak=MAK, block=b"\xff" * 17)
def test_mac_ecb_is_the_reference(mak: bytes, block: bytes) -> None:
    assert outcome(mac_ecb, mak, block) == outcome(ref.mac_ecb, mak, block)


@given(block=st.binary(max_size=2100))
def test_xor_blocks_xors_the_padded_blocks(block: bytes) -> None:
    padded = block + bytes(-len(block) % 8)
    expected = 0
    for i in range(0, len(padded), 8):
        expected ^= int.from_bytes(padded[i : i + 8], "big")
    assert xor_blocks(block) == expected


def test_block_encryptor_is_encrypt() -> None:
    for key in (MAK[:8], MAK, MAK + MAK[:8]):
        assert des.block_encryptor(key)(b"01234567") == des.encrypt(key, b"01234567")


# check_nibbles: documents shaped like pyiso8583's, any fields, any bytes (mostly nibble-valid).
nibble_bytes = st.one_of(
    st.binary(max_size=20),
    st.lists(
        st.sampled_from([*range(0x00, 0x0A), *range(0x10, 0x1A), 0x12, 0x3D, 0xD9, 0x99]), max_size=20
    ).map(bytes),
)
part = st.fixed_dictionaries({"len": st.binary(max_size=2), "data": nibble_bytes})
field_keys = st.sampled_from([*sorted(SUPPORTED_FIELDS, key=int), "1", "70", "h"])


@st.composite
def encoded_docs(draw: st.DrawFn) -> dict[str, dict[str, bytes]]:
    doc: dict[str, dict[str, bytes]] = {
        "t": {"len": b"", "data": b"\x02\x00"},
        "p": {"len": b"", "data": bytes(8)},
    }
    chosen = set(draw(st.lists(field_keys, max_size=14)))
    for key in sorted(chosen, key=lambda k: int(k) if k.isdigit() else 0):
        doc[key] = draw(part)
    return doc


@given(doc=encoded_docs())
def test_check_nibbles_is_the_reference(doc: dict[str, dict[str, bytes]]) -> None:
    assert outcome(strict.check_nibbles, doc) == outcome(ref.check_nibbles, doc)


def test_check_nibbles_is_the_reference_for_every_byte_of_every_field() -> None:
    for key in sorted(SUPPORTED_FIELDS, key=int):
        for value in range(256):
            doc = {
                "t": {"len": b"", "data": b"\x02\x00"},
                "p": {"len": b"", "data": bytes(8)},
                "2": {"len": b"\x19", "data": bytes.fromhex("62220212345678901230")},
                key: {"len": b"\x03", "data": bytes([0x12, value, 0x34])},
            }
            assert outcome(strict.check_nibbles, doc) == outcome(ref.check_nibbles, doc), (key, value)


defined_bits = sorted(int(k) for k in SUPPORTED_FIELDS)
bitmaps = st.tuples(
    st.sets(st.sampled_from(defined_bits)), st.sets(st.integers(1, 64), max_size=2) | st.just(set())
).map(lambda t: sum(1 << (64 - bit) for bit in t[0] | t[1]).to_bytes(8, "big"))
heads = st.tuples(st.binary(min_size=2, max_size=2), bitmaps, st.binary(max_size=3)).map(b"".join)


@given(raw=st.binary(max_size=12) | heads)
@example(raw=bytes.fromhex("0200") + bytes.fromhex("8000000000000000"))
@example(raw=bytes.fromhex("0200") + bytes.fromhex("0000000000000002"))
@example(raw=bytes.fromhex("0200") + bytes.fromhex("0000000000000001"))
def test_check_bitmap_is_the_reference(raw: bytes) -> None:
    expected = outcome(ref.check_bitmap, raw)
    assert outcome(strict.check_bitmap, raw) == expected
    assert outcome(strict.check_bitmap_fields, raw) == (
        ("value", None) if expected[0] == "value" else expected
    )


def test_check_bitmap_fields_is_the_reference_for_each_single_bit() -> None:
    typical = sum(1 << (64 - bit) for bit in (2, 3, 4, 11, 22, 25, 35, 41, 42, 49, 52, 53, 60, 64))
    for bit in range(1, 65):
        for others in (0, typical):
            raw = b"\x02\x00" + ((1 << (64 - bit)) | others).to_bytes(8, "big")
            expected = outcome(ref.check_bitmap, raw)
            got = outcome(strict.check_bitmap_fields, raw)
            assert got == (("value", None) if expected[0] == "value" else expected), bit


# Messages: valid ones from the profile's strategies, then damaged values and unknown fields.
valid_messages = st.builds(
    Message,
    st.sampled_from(sorted(strict.PROFILE_MTIS)),
    st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none()).flatmap(
        lambda chosen: st.fixed_dictionaries({k: FIELDS[k] for k in chosen})
    ),
)
odd_values = st.text(st.sampled_from("0123456789=DdAF ²٣x\u00e9"), max_size=24)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    msg = draw(valid_messages)
    fields = dict(msg.fields)
    for key in draw(st.lists(st.sampled_from([*sorted(SPEC), "1", "65", "99", "f4", "x"]), max_size=3)):
        fields[key] = draw(odd_values)
    if draw(st.booleans()):
        fields["64"] = draw(st.sampled_from(["00000000", "ABCDEF12", "x", ""]))
    mti = draw(st.sampled_from([msg.mti, "0200", "02A0", "200", ""]))
    return Message(mti, fields)


@settings(max_examples=300)
@given(msg=messages())
def test_pack_and_sign_are_the_reference(msg: Message) -> None:
    assert outcome(pack, msg) == outcome(ref.pack, msg)
    assert outcome(sign, msg, MAK) == outcome(ref.sign, msg, MAK)


@settings(max_examples=300)
@given(msg=valid_messages, data=st.data())
def test_unpack_is_the_reference_on_damaged_bytes(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(sign(msg, MAK))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = bytes(raw[: data.draw(st.integers(0, len(raw)))]) if data.draw(st.booleans()) else bytes(raw)
    for got in (cut, bytearray(cut)):
        assert outcome(unpack, got) == outcome(ref.unpack, got, mtis=strict.PROFILE_MTIS)
        assert outcome(unpack_request, got) == outcome(ref.unpack, got, mtis=strict.REQUEST_MTIS)
        assert outcome(mac_matches, got, MAK) == outcome(ref.mac_matches, got, MAK)


@given(raw=st.binary(max_size=80))
def test_unpack_is_the_reference_on_any_bytes(raw: bytes) -> None:
    assert outcome(unpack, raw) == outcome(ref.unpack, raw, mtis=strict.PROFILE_MTIS)
