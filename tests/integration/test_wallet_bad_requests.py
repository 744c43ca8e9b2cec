"""Bad requests change nothing and get the envelope (HTTP 200, never 5xx), interleaved with good ones.

"Nothing changes" is checked on the whole database: every row of every wallet table is the same
before and after each bad request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, WalletServer, wallet_server

from tillroll.wallet.admin import add_merchant, add_user, balance_fen, issue_code, money_total_fen
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.sign import new_nonce, sign, signed
from tillroll.wallet.tables import metadata

START_FEN = 1000_00
WRONG_KEY = "0" * 32


@pytest.fixture
def wallet(db_url: str) -> Iterator[WalletServer]:
    # No background sweeper: nothing may change by itself between the two snapshots.
    with wallet_server(db_url, WalletConfig(refund_settle_s=0), background=False) as server:
        add_merchant(server.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_merchant(server.engine, "OTHER", "别家店", "other-merchant-key-123")
        add_user(server.engine, "amy", START_FEN)
        yield server


def snapshot(wallet: WalletServer) -> dict[str, list[tuple[Any, ...]]]:
    with wallet.engine.connect() as conn:
        return {
            t.name: sorted(tuple(r) for r in conn.execute(sa.select(t)).all()) for t in metadata.sorted_tables
        }


def good_fields(wallet: WalletServer, path: str, out_trade_no: str) -> dict[str, Any]:
    """A valid body for ``path`` against an order that exists (so a good call would change things)."""
    if path == "/v1/pay":
        code = issue_code(wallet.engine, "amy")
        return {"auth_code": code, "out_trade_no": out_trade_no, "total_fee": 100}
    if path in ("/v1/query", "/v1/reverse"):
        return {"out_trade_no": out_trade_no}
    if path == "/v1/refund":
        return {
            "out_trade_no": out_trade_no,
            "out_refund_no": "RF-" + out_trade_no,
            "total_fee": 100,
            "refund_fee": 50,
        }
    return {"out_refund_no": "RF-" + out_trade_no}


PATHS = ["/v1/pay", "/v1/query", "/v1/reverse", "/v1/refund", "/v1/refund/query"]


def _post(wallet: WalletServer, path: str, body: Any) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = wallet.post_raw(path, raw)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


@pytest.mark.parametrize("path", PATHS)
def test_bad_signature_changes_nothing(wallet: WalletServer, path: str) -> None:
    n = 0
    for _ in range(3):  # bad, good, bad, good … on the same orders
        n += 1
        order = f"B-{n}"
        pay = good_fields(wallet, "/v1/pay", order)
        assert wallet.call("/v1/pay", **pay)["result_code"] == "SUCCESS"
        fields = good_fields(wallet, path, order if path != "/v1/pay" else order + "x")
        before = snapshot(wallet)
        body = {"mch_id": MCH_ID, "nonce_str": new_nonce(), **fields}
        wrong = {**body, "sign": sign(body, WRONG_KEY)}
        tampered = {**signed(body, MCH_KEY), "total_fee": 99999} if "total_fee" in body else None
        other_merchant = signed(body, "other-merchant-key-123")
        unsigned = dict(body)
        lower = {**body, "sign": sign(body, MCH_KEY).lower()}
        for bad in (wrong, tampered, other_merchant, unsigned, lower):
            if bad is None:
                continue
            answer = _post(wallet, path, bad)
            assert answer == {"return_code": "FAIL", "return_msg": "签名错误 / signature is not valid"}, bad
            assert snapshot(wallet) == before
        good = wallet.call(path, **fields)
        assert good["return_code"] == "SUCCESS"


BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/pay", {"out_trade_no": "X-1", "total_fee": 100}, "auth_code is missing"),
    ("/v1/pay", {"auth_code": "CODE", "out_trade_no": "X-1"}, "total_fee is missing"),
    ("/v1/pay", {"auth_code": "CODE", "out_trade_no": "X-1", "total_fee": 0}, "total_fee 0 is out of range"),
    ("/v1/pay", {"auth_code": "CODE", "out_trade_no": "X-1", "total_fee": -5}, "out of range"),
    ("/v1/pay", {"auth_code": "CODE", "out_trade_no": "X-1", "total_fee": "12.50"}, "not a whole number"),
    (
        "/v1/pay",
        {"auth_code": "CODE", "out_trade_no": "X 1", "total_fee": 100},
        "out_trade_no 'X 1' is not valid",
    ),
    ("/v1/pay", {"auth_code": "CODE", "out_trade_no": "X" * 33, "total_fee": 100}, "is not valid"),
    (
        "/v1/pay",
        {"auth_code": "CODE", "out_trade_no": "X-1", "total_fee": 100, "body": "b" * 129},
        "body is longer",
    ),
    ("/v1/query", {}, "out_trade_no is missing"),
    ("/v1/refund", {"out_trade_no": "X-1", "out_refund_no": "R", "total_fee": 100}, "refund_fee is missing"),
    ("/v1/refund/query", {"out_refund_no": "R/1"}, "is not valid"),
]


@pytest.mark.parametrize(("path", "fields", "why"), BAD_FIELDS)
def test_bad_fields_are_param_error(
    wallet: WalletServer, path: str, fields: dict[str, Any], why: str
) -> None:
    if fields.get("auth_code") == "CODE":
        fields = {**fields, "auth_code": issue_code(wallet.engine, "amy")}
    before = snapshot(wallet)
    answer = wallet.call(path, **fields)
    assert answer["return_code"] == "SUCCESS" and answer["result_code"] == "FAIL"
    assert answer["err_code"] == "PARAM_ERROR" and why in answer["err_code_des"], answer
    assert snapshot(wallet) == before


def test_values_that_are_not_strings_or_integers(wallet: WalletServer) -> None:
    code = issue_code(wallet.engine, "amy")
    before = snapshot(wallet)
    for value in (12.5, True, None, [1], {"a": 1}):
        body = {"mch_id": MCH_ID, "nonce_str": new_nonce(), "auth_code": code, "out_trade_no": "V-1"}
        body["total_fee"] = value
        body["sign"] = "0" * 64
        answer = _post(wallet, "/v1/pay", body)
        if value is None:  # an empty value is left out of the signature: the sign is just wrong
            assert answer["return_code"] == "FAIL"
        else:
            assert answer["result_code"] == "FAIL" and answer["err_code"] == "PARAM_ERROR", value
            assert "total_fee must be a string or an integer" in answer["err_code_des"]
    assert snapshot(wallet) == before


def test_unreadable_bodies_and_unknown_merchants(wallet: WalletServer) -> None:
    before = snapshot(wallet)
    cases: list[tuple[bytes, str]] = [
        (b"", "body is not JSON"),
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe{}", "body is not JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'"text"', "body is not a JSON object"),
        (b"{}", "mch_id is missing"),
        (json.dumps({"mch_id": 12}).encode(), "mch_id is missing or not valid"),
        (json.dumps({"mch_id": "NOBODY", "nonce_str": "a"}).encode(), "unknown mch_id NOBODY"),
        (b"{" + b'"a": "' + b"x" * 70_000 + b'"}', "body larger than"),
    ]
    for path in PATHS:
        for raw, why in cases:
            answer = _post(wallet, path, raw)
            assert answer["return_code"] == "FAIL" and why in answer["return_msg"], (path, raw[:30], answer)
            assert set(answer) == {"return_code", "return_msg"}
    assert snapshot(wallet) == before


def test_bad_nonce_is_param_error(wallet: WalletServer) -> None:
    before = snapshot(wallet)
    for nonce in ("", "has space", "x" * 33, "中文"):
        body = signed({"mch_id": MCH_ID, "nonce_str": nonce, "out_trade_no": "N-1"}, MCH_KEY)
        answer = _post(wallet, "/v1/query", body)
        assert answer["result_code"] == "FAIL" and answer["err_code"] == "PARAM_ERROR", nonce
        assert "nonce_str" in answer["err_code_des"]
    assert snapshot(wallet) == before


def test_unknown_path_and_method(wallet: WalletServer) -> None:
    answer = httpx.post(wallet.base_url + "/v1/nothing", json={}, timeout=5)
    assert answer.status_code == 200 and answer.json()["return_code"] == "FAIL"
    answer = httpx.get(wallet.base_url + "/v1/pay", timeout=5)
    assert answer.status_code == 200 and answer.json()["return_code"] == "FAIL"


def test_bad_requests_between_good_ones_leave_the_books_right(wallet: WalletServer) -> None:
    total = money_total_fen(wallet.engine)
    for i in range(5):
        code = issue_code(wallet.engine, "amy")
        body = {
            "mch_id": MCH_ID,
            "nonce_str": new_nonce(),
            "auth_code": code,
            "out_trade_no": f"I-{i}",
            "total_fee": 10,
        }
        _post(wallet, "/v1/pay", {**body, "sign": sign(body, WRONG_KEY)})
        _post(wallet, "/v1/pay", {**signed(body, MCH_KEY), "total_fee": 1})
        assert _post(wallet, "/v1/pay", signed(body, MCH_KEY))["result_code"] == "SUCCESS"
        _post(
            wallet,
            "/v1/reverse",
            {**signed({"mch_id": MCH_ID, "nonce_str": "n", "out_trade_no": f"I-{i}"}, WRONG_KEY)},
        )
    assert balance_fen(wallet.engine, "amy") == START_FEN - 50
    assert money_total_fen(wallet.engine) == total


def test_logs_never_carry_a_payment_code_or_a_key(
    wallet: WalletServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code = issue_code(wallet.engine, "amy")
    assert (
        wallet.call("/v1/pay", auth_code=code, out_trade_no="L-1", total_fee=100)["result_code"] == "SUCCESS"
    )
    assert (
        wallet.call("/v1/pay", auth_code=code, out_trade_no="L-2", total_fee=100)["err_code"]
        == "AUTH_CODE_INVALID"
    )
    unknown = "134567890123456789"
    assert wallet.call("/v1/pay", auth_code=unknown, out_trade_no="L-3", total_fee=100)["err_code"] == (
        "AUTH_CODE_INVALID"
    )
    _post(wallet, "/v1/pay", {"mch_id": MCH_ID, "nonce_str": "x", "auth_code": code, "sign": "0"})
    text = caplog.text
    assert "L-2" in text  # the refusals were logged …
    assert code not in text and unknown not in text  # … with the codes masked
    assert code[:6] + "********" + code[-4:] in text
    assert MCH_KEY not in text
