"""Every worked example in tests/data/vectors.json (the profile's, see docs/protocol.md) is reproduced."""

from __future__ import annotations

from typing import Any

import pytest

from tillroll.crypto import des
from tillroll.crypto.keys import KeyCheckError, WorkingKeys, unwrap_working_keys, wrap_working_keys
from tillroll.crypto.mac import mac_ecb
from tillroll.crypto.pin import clear_pin_block, decrypt_pin, encrypt_pin_block
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack

h = bytes.fromhex
V = dict[str, dict[str, Any]]


def test_tdes_decrypts_mak_under_tmk(vectors: V) -> None:
    v = vectors["tdes_decrypt_mak_under_tmk"]
    assert des.decrypt(h(v["key"]), h(v["ciphertext"])).hex().upper() == v["plaintext"]
    assert des.encrypt(h(v["key"]), h(v["plaintext"])).hex().upper() == v["ciphertext"]


@pytest.mark.parametrize("name", ["kcv_tmk", "kcv_mak", "kcv_pik"])
def test_check_values(vectors: V, name: str) -> None:
    v = vectors[name]
    assert des.check_value(h(v["key"])).hex().upper() == v["kcv"]


@pytest.mark.parametrize("name", ["field62_mode003", "field62_mode004"])
def test_field62_wraps_and_unwraps(vectors: V, name: str) -> None:
    v = vectors[name]
    keys = WorkingKeys(
        pik=h(v["pik_clear"]),
        mak=h(v["mak_clear"]),
        tdk=h(v["tdk_clear"]) if v["tdk_clear"] else None,
    )
    assert wrap_working_keys(h(v["tmk"]), keys).hex().upper() == v["field62"]
    back = unwrap_working_keys(h(v["tmk"]), h(v["field62"]))
    assert (back.pik, back.mak, back.tdk) == (keys.pik, keys.mak, keys.tdk)


def test_field62_with_a_wrong_check_value_is_refused(vectors: V) -> None:
    v = vectors["field62_mode003"]
    bad = bytearray(h(v["field62"]))
    bad[39] ^= 0x01
    with pytest.raises(KeyCheckError, match="MAK"):
        unwrap_working_keys(h(v["tmk"]), bytes(bad))


def test_pin_block(vectors: V) -> None:
    v = vectors["pin_block_iso0"]
    assert clear_pin_block(v["pin"], v["pan"]).hex().upper() == v["pin_block_clear"]
    enc = encrypt_pin_block(h(v["pik"]), v["pin"], v["pan"])
    assert enc.hex().upper() == v["pin_block_encrypted"]
    assert decrypt_pin(h(v["pik"]), enc, v["pan"]) == v["pin"]


@pytest.mark.parametrize("name", ["mac_two_blocks", "mac_padded", "mac_short"])
def test_mac(vectors: V, name: str) -> None:
    v = vectors[name]
    mac = mac_ecb(h(v["mak"]), h(v["mac_block"]))
    assert mac.decode() == v["mac_ascii"]
    assert mac.hex().upper() == v["mac_hex"]


def test_sale_request_framed(vectors: V) -> None:
    v = vectors["sale_request_framed"]
    pin_block = encrypt_pin_block(h(v["pik"]), v["pin"], v["fields"]["2"])
    assert pin_block.hex().upper() == v["field52"]
    msg = Message(v["mti"], {**v["fields"], "52": v["field52"]})
    raw = sign(msg, h(v["mak"]))
    assert raw.hex().upper() == v["iso_message"]
    assert raw[:-8].hex().upper() == v["mac_block"]
    assert raw[-8:].decode() == v["field64_ascii"]
    assert mac_matches(raw, h(v["mak"]))
    frame = framing.Frame(h(v["tpdu"]), h(v["header"]), raw)
    assert frame.encode().hex().upper() == v["frame"]
    back = unpack(raw)
    assert back.mti == "0200"
    assert {k: back[k] for k in v["fields"]} == v["fields"]


def test_signin_response_framed(vectors: V) -> None:
    v = vectors["signin_response_0810_framed"]
    keys = WorkingKeys(pik=h(v["pik_clear"]), mak=h(v["mak_clear"]))
    f62 = wrap_working_keys(h(v["tmk"]), keys).hex().upper()
    assert f62 == v["field62"]
    resp = Message(
        "0810",
        {
            **v["response"],
            "11": v["request"]["11"],
            "41": v["request"]["41"],
            "42": v["request"]["42"],
            "60": v["field60"],
            "62": f62,
        },
    )
    resp = resp.without("batch")
    raw = pack(resp)
    assert raw.hex().upper() == v["iso_message"]
    tpdu = framing.reply_tpdu(h(v["request_tpdu"]))
    header = framing.reply_header(h(v["request_header"]), must_sign_in=False)
    assert framing.Frame(tpdu, header, raw).encode().hex().upper() == v["frame"]
