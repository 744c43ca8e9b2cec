"""The daily statement (WALLET.md §4) over HTTP: Beijing-time days, yuan, one row per event."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import httpx
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, WalletServer, wallet_server

from tillroll.clock import FakeClock
from tillroll.wallet.admin import add_merchant, add_user, issue_code
from tillroll.wallet.bill import HEADER
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.sign import new_nonce, sign, signed

HEADER_LINE = (
    "trade_time,mch_id,out_trade_no,transaction_id,trade_state,brand,total_fee,"
    "out_refund_no,refund_id,refund_fee,refund_status"
)


def get_bill(wallet: WalletServer, day: str, key: str = MCH_KEY, mch_id: str = MCH_ID) -> httpx.Response:
    params = signed({"mch_id": mch_id, "bill_date": day, "nonce_str": new_nonce()}, key)
    answer = httpx.get(
        wallet.base_url + "/v1/bill", params={k: str(v) for k, v in params.items()}, timeout=10
    )
    assert answer.status_code == 200
    return answer


def rows_of(answer: httpx.Response) -> list[dict[str, str]]:
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    text = answer.text
    assert text.split("\n", 1)[0] == HEADER_LINE
    return list(csv.DictReader(io.StringIO(text)))


def pay(wallet: WalletServer, clock: FakeClock, name: str, no: str, fee: int) -> dict[str, Any]:
    code = issue_code(wallet.engine, name, clock)
    return wallet.call("/v1/pay", auth_code=code, out_trade_no=no, total_fee=fee)


def test_statement_for_days_with_payments_a_reversal_and_refunds(db_url: str) -> None:
    clock = FakeClock(datetime(2026, 12, 1, 15, 58, 0))  # 23:58:00 in Beijing on 1 December
    config = WalletConfig(refund_settle_s=0)
    with wallet_server(db_url, config, clock) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_merchant(wallet.engine, "OTHER", "别家店", "other-merchant-key-123")
        add_user(wallet.engine, "ada", 1000_00)
        add_user(wallet.engine, "ali", 1000_00, brand="ali")  # type: ignore[arg-type]
        add_user(wallet.engine, "nev", 1000_00, behaviour="never")
        t1 = pay(wallet, clock, "ada", "D-1", 1250)
        clock.advance(10)
        t2 = pay(wallet, clock, "ali", "D-2", 300)
        clock.advance(10)
        assert wallet.call("/v1/reverse", out_trade_no="D-2")["result_code"] == "SUCCESS"
        assert pay(wallet, clock, "nev", "D-3", 999)["err_code"] == "USERPAYING"  # never paid: no row
        wallet.call("/v1/reverse", out_trade_no="D-4")  # a tombstone: no row
        clock.advance(10)
        r1 = wallet.call(
            "/v1/refund", out_trade_no="D-1", out_refund_no="DR-1", total_fee=1250, refund_fee=500
        )
        assert r1["refund_status"] == "SUCCESS"
        other_code = issue_code(wallet.engine, "ada", clock)
        wallet.call(
            "/v1/pay",
            key="other-merchant-key-123",
            mch_id="OTHER",
            auth_code=other_code,
            out_trade_no="D-1",
            total_fee=7,
        )
        clock.advance(120)  # 00:00:30 on 2 December in Beijing (16:00:30 UTC)
        r2 = wallet.call("/v1/refund", out_trade_no="D-1", out_refund_no="DR-2", total_fee=1250, refund_fee=1)
        clock.advance(1)
        t5 = pay(wallet, clock, "ada", "D-5", 99_00)

        first = rows_of(get_bill(wallet, "20261201"))
        second = rows_of(get_bill(wallet, "20261202"))
        empty = get_bill(wallet, "20261130")
        other = rows_of(get_bill(wallet, "20261201", "other-merchant-key-123", "OTHER"))

    assert [tuple(r.values()) for r in first] == [
        ("20261201235800", MCH_ID, "D-1", t1["transaction_id"], "SUCCESS", "wx", "12.50", "", "", "", ""),
        ("20261201235810", MCH_ID, "D-2", t2["transaction_id"], "REVOKED", "ali", "3.00", "", "", "", ""),
        (
            "20261201235830",
            MCH_ID,
            "D-1",
            t1["transaction_id"],
            "REFUND",
            "wx",
            "12.50",
            "DR-1",
            r1["refund_id"],
            "5.00",
            "SUCCESS",
        ),
    ]
    assert [tuple(r.values()) for r in second] == [
        (
            "20261202000030",
            MCH_ID,
            "D-1",
            t1["transaction_id"],
            "REFUND",
            "wx",
            "12.50",
            "DR-2",
            r2["refund_id"],
            "0.01",
            "SUCCESS",
        ),
        ("20261202000031", MCH_ID, "D-5", t5["transaction_id"], "SUCCESS", "wx", "99.00", "", "", "", ""),
    ]
    assert empty.text == HEADER_LINE + "\n"
    assert [(r["mch_id"], r["out_trade_no"], r["total_fee"]) for r in other] == [("OTHER", "D-1", "0.07")]
    assert list(HEADER) == HEADER_LINE.split(",")


def test_statement_requests_are_authenticated(db_url: str) -> None:
    with wallet_server(db_url, background=False) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        bad = get_bill(wallet, "20261201", key="0" * 32)
        assert bad.json() == {"return_code": "FAIL", "return_msg": "签名错误 / signature is not valid"}
        for day in ("2026121", "20261301", "20260230", "2026-12-01"):
            answer = get_bill(wallet, day).json()
            assert answer["err_code"] == "PARAM_ERROR" and "bill_date" in answer["err_code_des"], day
        params = {"mch_id": MCH_ID, "bill_date": "20261201", "nonce_str": "abc"}
        params["sign"] = sign(params, MCH_KEY)
        answer = httpx.get(
            wallet.base_url + "/v1/bill", params={**params, "bill_date": "20261202"}, timeout=10
        )
        assert answer.json()["return_code"] == "FAIL"
