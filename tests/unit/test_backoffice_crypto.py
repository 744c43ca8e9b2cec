"""The back-office key, delivery signatures and e-receipt tokens (crypto/backoffice.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillroll.crypto.backoffice import (
    TokenClaims,
    TokenError,
    backoffice_key,
    fact_signature_ok,
    make_token,
    read_token,
    sign_fact,
    verify_token,
)

TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
KEY = backoffice_key(TMK)
DAY = 20_421  # 2025-11-29


def test_the_key_is_hmac_of_the_tmk_as_documented() -> None:
    assert hmac.new(TMK, b"tillroll back office v1", hashlib.sha256).digest() == KEY
    assert backoffice_key(bytes(16)) != KEY


def test_a_delivery_signature_covers_terminal_and_body() -> None:
    body = b'{"message_id":"x"}'
    sig = sign_fact(KEY, "10000001", body)
    assert sig.startswith("v1=") and len(sig) == 3 + 64
    assert fact_signature_ok(KEY, "10000001", body, sig)
    assert not fact_signature_ok(KEY, "10000002", body, sig)
    assert not fact_signature_ok(KEY, "10000001", body + b" ", sig)
    assert not fact_signature_ok(backoffice_key(bytes(16)), "10000001", body, sig)
    assert not fact_signature_ok(KEY, "10000001", body, None)
    assert not fact_signature_ok(KEY, "10000001", body, sig.upper())


def test_a_token_verifies_until_it_expires() -> None:
    token = make_token(KEY, "10000001", "000001.000123", DAY)
    assert len(token) < 80
    assert token == make_token(KEY, "10000001", "000001.000123", DAY)  # a reprint: the same link
    claims = TokenClaims("10000001", "000001.000123", DAY)
    assert verify_token(KEY, token, today_day=DAY, ttl_days=180) == claims
    assert verify_token(KEY, token, today_day=DAY + 180, ttl_days=180) == claims
    assert verify_token(KEY, token, today_day=DAY + 181, ttl_days=180) is TokenError.EXPIRED
    assert verify_token(KEY, token, today_day=DAY - 2, ttl_days=180) is TokenError.NOT_YET_VALID


def test_a_token_under_another_key_or_altered_is_refused() -> None:
    token = make_token(KEY, "10000001", "000001.000123", DAY)
    other = backoffice_key(bytes(16))
    assert verify_token(other, token, today_day=DAY, ttl_days=180) is TokenError.BAD_SIGNATURE
    _payload, mac = token.split(".")
    # the same signature on another receipt's payload (a customer guessing a neighbour's receipt)
    forged_payload = base64.urlsafe_b64encode(b"10000001|000001.000124|20421").rstrip(b"=").decode()
    assert (
        verify_token(KEY, f"{forged_payload}.{mac}", today_day=DAY, ttl_days=180) is TokenError.BAD_SIGNATURE
    )
    # an extended lifetime
    later = base64.urlsafe_b64encode(b"10000001|000001.000123|20600").rstrip(b"=").decode()
    assert verify_token(KEY, f"{later}.{mac}", today_day=DAY + 200, ttl_days=180) is TokenError.BAD_SIGNATURE


@given(st.text(max_size=200))
def test_no_text_crashes_the_reader(text: str) -> None:
    claims = read_token(text)
    if claims is not None:
        assert verify_token(KEY, text, today_day=DAY, ttl_days=180) is not None


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=0, max_value=7))
def test_every_flipped_bit_is_refused(pos: int, bit: int) -> None:
    token = make_token(KEY, "10000001", "000001.000123", DAY)
    raw = bytearray(token.encode())
    raw[pos % len(raw)] ^= 1 << bit
    try:
        tampered = raw.decode("ascii")
    except UnicodeDecodeError:
        return
    if tampered == token:
        return
    assert not isinstance(verify_token(KEY, tampered, today_day=DAY, ttl_days=180), TokenClaims)


def test_tokens_are_made_only_for_plain_keys() -> None:
    with pytest.raises(ValueError):
        make_token(KEY, "1000000", "000001.000123", DAY)
    with pytest.raises(ValueError):
        make_token(KEY, "10000001", "a|b", DAY)
