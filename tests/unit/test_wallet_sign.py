"""The profile's signature against WeChat Pay's documented HMAC-SHA256 example (WALLET.md §1)."""

from __future__ import annotations

import pytest

from tillroll.wallet.sign import NONCE_RE, new_nonce, sign, signed, signing_string, verify

KEY = "192006250b4c09247ec02edce69f6a2d"
FIELDS = {
    "appid": "wxd930ea5d5a258f4f",
    "mch_id": "10000100",
    "device_info": "1000",
    "body": "test",
    "nonce_str": "ibuaiVcKdpRxkhJA",
}
EXPECTED = "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"


def test_wechat_documented_vector() -> None:
    assert signing_string(FIELDS, KEY) == (
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100"
        "&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d"
    )
    assert sign(FIELDS, KEY) == EXPECTED


def test_empty_values_and_sign_itself_are_left_out() -> None:
    assert sign({**FIELDS, "attach": "", "detail": None, "sign": "WHATEVER"}, KEY) == EXPECTED


def test_order_of_fields_does_not_matter() -> None:
    assert sign(dict(reversed(list(FIELDS.items()))), KEY) == EXPECTED


def test_integers_are_signed_in_decimal() -> None:
    assert sign({"total_fee": 1250}, KEY) == sign({"total_fee": "1250"}, KEY)


def test_verify_accepts_the_signed_and_refuses_any_change() -> None:
    body = signed(FIELDS, KEY)
    assert body["sign"] == EXPECTED and verify(body, KEY)
    assert not verify({**body, "body": "tesT"}, KEY)
    assert not verify({**body, "extra": "1"}, KEY)
    assert not verify(body, KEY[:-1] + "e")
    assert not verify({**body, "sign": EXPECTED.lower()}, KEY)
    assert not verify(dict(FIELDS), KEY)
    assert not verify({**body, "total_fee": 1.5}, KEY)  # cannot be signed: not authenticated


@pytest.mark.parametrize("value", [1.5, True, [1], {"a": 1}])
def test_values_that_are_not_strings_or_integers_cannot_be_signed(value: object) -> None:
    from tillroll.wallet.sign import SignatureInputError

    with pytest.raises(SignatureInputError):
        sign({"x": value}, KEY)


def test_nonce() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100 and all(NONCE_RE.match(n) for n in nonces)
