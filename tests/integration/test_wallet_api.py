"""The wallet provider over real HTTP (uvicorn on 127.0.0.1), on SQLite and PostgreSQL.

Every scenario ends by checking what each party would see: the user's balance and message stream,
the merchant's takings (recomputed from orders and refunds), and that users' balances plus
merchants' takings are what they were at the start (money is moved, never made or lost).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, WalletServer, wallet_server

from tillroll.clock import FakeClock
from tillroll.wallet.admin import (
    add_merchant,
    add_user,
    balance_fen,
    issue_code,
    money_total_fen,
    takings_fen,
    takings_from_records,
    user_messages,
)
from tillroll.wallet.config import WalletConfig

START_FEN = 1000_00
CLOSE_S = 1.0
SETTLE_S = 0.2
WAIT_S = 10.0
FAST = WalletConfig(userpaying_close_s=CLOSE_S, refund_settle_s=SETTLE_S, sweep_interval_s=0.05)


@pytest.fixture
def wallet(db_url: str) -> Iterator[WalletServer]:
    with wallet_server(db_url, FAST) as server:
        add_merchant(server.engine, MCH_ID, MCH_NAME, MCH_KEY)
        yield server


def user(wallet: WalletServer, name: str, behaviour: str = "ok", balance: int = START_FEN) -> str:
    add_user(wallet.engine, name, balance, behaviour=behaviour)
    return name


def pay(
    wallet: WalletServer, name: str, out_trade_no: str, fee: int, code: str | None = None
) -> dict[str, Any]:
    code = code or issue_code(wallet.engine, name)
    return wallet.call("/v1/pay", auth_code=code, out_trade_no=out_trade_no, total_fee=fee, body="测试商品")


def query(wallet: WalletServer, out_trade_no: str) -> dict[str, Any]:
    return wallet.call("/v1/query", out_trade_no=out_trade_no)


def until(what: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Ask again (as a client polls) until ``done``; bounded by WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = what()
        if done(answer):
            return answer
        assert time.monotonic() < deadline, f"still {answer} after {WAIT_S} s"
        time.sleep(0.05)


def check_books(wallet: WalletServer, balances: dict[str, int], streams: dict[str, list[str]]) -> None:
    for name, fen in balances.items():
        assert balance_fen(wallet.engine, name) == fen, name
    for name, texts in streams.items():
        assert user_messages(wallet.engine, name) == texts, name
    start = sum(balances.values()) + takings_fen(wallet.engine, MCH_ID)
    assert money_total_fen(wallet.engine) == start
    assert money_total_fen(wallet.engine) == START_FEN * len(balances)
    assert takings_fen(wallet.engine, MCH_ID) == takings_from_records(wallet.engine, MCH_ID)


def paid_msg(yuan: str) -> str:
    return f"您在{MCH_NAME}付款{yuan}元"


def test_success(wallet: WalletServer) -> None:
    alice = user(wallet, "alice")
    answer = pay(wallet, alice, "T-1", 1250)
    assert answer["return_code"] == "SUCCESS" and answer["result_code"] == "SUCCESS"
    assert answer["total_fee"] == 1250 and answer["brand"] == "wx" and answer["openid"] == "a***e"
    assert len(answer["time_end"]) == 14 and answer["transaction_id"]
    q = query(wallet, "T-1")
    assert q["trade_state"] == "SUCCESS" and q["transaction_id"] == answer["transaction_id"]
    assert q["time_end"] == answer["time_end"]
    check_books(wallet, {alice: START_FEN - 1250}, {alice: [paid_msg("12.50")]})


def test_ali_code_routes_to_ali(wallet: WalletServer) -> None:
    add_user(wallet.engine, "carol", START_FEN, brand="ali")  # type: ignore[arg-type]
    code = issue_code(wallet.engine, "carol")
    assert 16 <= len(code) <= 24 and 25 <= int(code[:2]) <= 30
    assert pay(wallet, "carol", "A-1", 99, code)["brand"] == "ali"
    check_books(wallet, {"carol": START_FEN - 99}, {"carol": [paid_msg("0.99")]})


def test_userpaying_resolved_by_confirm_seen_by_query(wallet: WalletServer) -> None:
    bob = user(wallet, "bob", "confirm:0.3")
    answer = pay(wallet, bob, "T-2", 500)
    assert answer["result_code"] == "FAIL" and answer["err_code"] == "USERPAYING"
    assert query(wallet, "T-2")["trade_state"] == "USERPAYING"
    final = until(lambda: query(wallet, "T-2"), lambda a: a["trade_state"] != "USERPAYING")
    assert final["trade_state"] == "SUCCESS" and final["total_fee"] == 500 and final["transaction_id"]
    again = pay(wallet, bob, "T-2", 500, code=_order_code(wallet, "T-2"))
    assert again["err_code"] == "ORDERPAID"
    check_books(wallet, {bob: START_FEN - 500}, {bob: [paid_msg("5.00")]})


def _order_code(wallet: WalletServer, out_trade_no: str) -> str:
    import sqlalchemy as sa

    from tillroll.wallet.tables import orders

    with wallet.engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(orders.c.auth_code).where(orders.c.out_trade_no == out_trade_no)
            ).scalar_one()
        )


def test_never_confirmed_is_closed(wallet: WalletServer) -> None:
    dan = user(wallet, "dan", "never")
    code = issue_code(wallet.engine, dan)
    # Timed from before the order exists, so the bound holds however long the answer took (timed
    # from the answer, a loaded CI machine saw the close 0.14 s later).
    began = time.monotonic()
    assert pay(wallet, dan, "T-3", 700, code)["err_code"] == "USERPAYING"
    final = until(lambda: query(wallet, "T-3"), lambda a: a["trade_state"] != "USERPAYING")
    assert final["trade_state"] == "CLOSED" and "transaction_id" not in final
    assert time.monotonic() - began >= CLOSE_S * 0.9  # not before its time (0.9: clock steps)
    assert pay(wallet, dan, "T-3", 700, code)["err_code"] == "ORDERCLOSED"
    rev = wallet.call("/v1/reverse", out_trade_no="T-3")
    assert rev["result_code"] == "SUCCESS" and rev["recall"] == "N"
    assert query(wallet, "T-3")["trade_state"] == "REVOKED"
    check_books(wallet, {dan: START_FEN}, {dan: []})


def test_reverse_refused_while_userpaying_then_succeeds(wallet: WalletServer) -> None:
    eve = user(wallet, "eve", "never")
    assert pay(wallet, eve, "T-4", 300)["err_code"] == "USERPAYING"
    first = wallet.call("/v1/reverse", out_trade_no="T-4")
    assert first["result_code"] == "FAIL" and first["err_code"] == "USERPAYING" and first["recall"] == "Y"
    final = until(
        lambda: wallet.call("/v1/reverse", out_trade_no="T-4"), lambda a: a["result_code"] == "SUCCESS"
    )
    assert final["recall"] == "N"
    assert query(wallet, "T-4")["trade_state"] == "REVOKED"
    repeat = wallet.call("/v1/reverse", out_trade_no="T-4")
    assert (repeat["result_code"], repeat["recall"]) == ("SUCCESS", "N")
    check_books(wallet, {eve: START_FEN}, {eve: []})


def test_reverse_of_a_paid_order_returns_the_money_once(wallet: WalletServer) -> None:
    fay = user(wallet, "fay", "confirm:0.2")
    assert pay(wallet, fay, "T-5", 1999)["err_code"] == "USERPAYING"
    until(lambda: query(wallet, "T-5"), lambda a: a["trade_state"] == "SUCCESS")
    for _ in range(3):
        rev = wallet.call("/v1/reverse", out_trade_no="T-5")
        assert (rev["result_code"], rev["recall"]) == ("SUCCESS", "N")
    assert query(wallet, "T-5")["trade_state"] == "REVOKED"
    assert (
        wallet.call("/v1/refund", out_trade_no="T-5", out_refund_no="R-5", total_fee=1999, refund_fee=1)[
            "err_code"
        ]
        == "ORDERNOTPAID"
    )
    check_books(
        wallet, {fay: START_FEN}, {fay: [paid_msg("19.99"), f"{MCH_NAME}的付款19.99元已撤销，已退回"]}
    )


def test_reverse_of_unseen_order_leaves_a_tombstone(wallet: WalletServer) -> None:
    gus = user(wallet, "gus")
    rev = wallet.call("/v1/reverse", out_trade_no="T-6")
    assert (rev["result_code"], rev["recall"]) == ("SUCCESS", "N")
    assert query(wallet, "T-6")["trade_state"] == "REVOKED"
    code = issue_code(wallet.engine, gus)
    late = pay(wallet, gus, "T-6", 800, code)
    assert late["result_code"] == "FAIL" and late["err_code"] == "ORDERREVERSED"
    assert query(wallet, "T-6")["trade_state"] == "REVOKED"
    assert pay(wallet, gus, "T-6b", 800, code)["result_code"] == "SUCCESS"  # the code was not used up
    check_books(wallet, {gus: START_FEN - 800}, {gus: [paid_msg("8.00")]})


def test_systemerror_once_then_query_shows_success_charged_once(wallet: WalletServer) -> None:
    hal = user(wallet, "hal", "error-once")
    code = issue_code(wallet.engine, hal)
    first = pay(wallet, hal, "T-7", 1000, code)
    assert first["return_code"] == "SUCCESS" and first["err_code"] == "SYSTEMERROR"
    assert query(wallet, "T-7")["trade_state"] == "SUCCESS"
    assert pay(wallet, hal, "T-7", 1000, code)["err_code"] == "ORDERPAID"
    assert pay(wallet, hal, "T-8", 200)["result_code"] == "SUCCESS"  # later calls tell the truth
    check_books(wallet, {hal: START_FEN - 1200}, {hal: [paid_msg("10.00"), paid_msg("2.00")]})


def test_lost_response_found_by_query_charged_once(wallet: WalletServer) -> None:
    ivy = user(wallet, "ivy", "slow:1.5")
    code = issue_code(wallet.engine, ivy)
    body = {"mch_id": MCH_ID, "auth_code": code, "out_trade_no": "T-9", "total_fee": 4321}
    from tillroll.wallet.sign import new_nonce, signed

    with pytest.raises(httpx.TimeoutException):  # the client gives up before the answer comes
        httpx.post(
            wallet.base_url + "/v1/pay", json=signed({**body, "nonce_str": new_nonce()}, MCH_KEY), timeout=0.4
        )
    # The client may have given up before the pay was even committed: it asks until it knows.
    q = until(lambda: query(wallet, "T-9"), lambda a: a.get("err_code") != "ORDERNOTEXIST")
    assert q["trade_state"] == "SUCCESS" and q["total_fee"] == 4321
    check_books(wallet, {ivy: START_FEN - 4321}, {ivy: [paid_msg("43.21")]})


def test_slow_answer_when_waited_for_is_success(wallet: WalletServer) -> None:
    jon = user(wallet, "jon", "slow:0.3")
    began = time.monotonic()
    assert pay(wallet, jon, "T-10", 100)["result_code"] == "SUCCESS"
    assert time.monotonic() - began >= 0.3
    check_books(wallet, {jon: START_FEN - 100}, {jon: [paid_msg("1.00")]})


def test_same_pay_repeated_and_other_content_under_a_used_number(wallet: WalletServer) -> None:
    kim = user(wallet, "kim")
    code = issue_code(wallet.engine, kim)
    assert pay(wallet, kim, "T-11", 600, code)["result_code"] == "SUCCESS"
    for _ in range(3):
        assert pay(wallet, kim, "T-11", 600, code)["err_code"] == "ORDERPAID"
    assert pay(wallet, kim, "T-11", 601, code)["err_code"] == "OUT_TRADE_NO_USED"
    assert pay(wallet, kim, "T-11", 600)["err_code"] == "OUT_TRADE_NO_USED"  # another code
    assert pay(wallet, kim, "T-12", 600, code)["err_code"] == "AUTH_CODE_INVALID"  # one-time code
    check_books(wallet, {kim: START_FEN - 600}, {kim: [paid_msg("6.00")]})


def test_refused_payments(wallet: WalletServer) -> None:
    low = user(wallet, "low", balance=START_FEN)
    nay = user(wallet, "nay", "fail:NOTENOUGH")
    code = issue_code(wallet.engine, low)
    broke = pay(wallet, low, "T-13", START_FEN + 1, code)
    assert broke["err_code"] == "NOTENOUGH"
    q = query(wallet, "T-13")
    assert q["trade_state"] == "PAYERROR"
    assert pay(wallet, low, "T-13", START_FEN + 1, code)["err_code"] == "NOTENOUGH"  # replayed
    assert pay(wallet, nay, "T-14", 100)["err_code"] == "NOTENOUGH"
    assert pay(wallet, low, "T-15", 100, "123456789012345678")["err_code"] == "AUTH_CODE_INVALID"  # unknown
    assert pay(wallet, low, "T-15", 100, "991234567890123456")["err_code"] == "AUTH_CODE_INVALID"  # no brand
    assert query(wallet, "T-15")["err_code"] == "ORDERNOTEXIST"
    check_books(wallet, {low: START_FEN, nay: START_FEN}, {low: [], nay: []})


def test_expired_code(db_url: str) -> None:
    """The contract's 60 s, on a clock the test moves (the server reads the same clock)."""
    clock = FakeClock()
    with wallet_server(db_url, clock=clock) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(wallet.engine, "old", START_FEN)
        code = issue_code(wallet.engine, "old", clock)
        clock.advance(60)
        assert pay(wallet, "old", "T-16", 100, code)["err_code"] == "AUTHCODEEXPIRE"
        assert query(wallet, "T-16")["err_code"] == "ORDERNOTEXIST"  # nothing was stored
        fresh = issue_code(wallet.engine, "old", clock)
        clock.advance(59)
        assert pay(wallet, "old", "T-16", 100, fresh)["result_code"] == "SUCCESS"  # same number
        check_books(wallet, {"old": START_FEN - 100}, {"old": [paid_msg("1.00")]})


def test_concurrent_pays_on_one_order_charge_once(db_url: str) -> None:
    """Two provider processes' worth of servers on one database, 16 requests racing."""
    with wallet_server(db_url, FAST) as one, wallet_server(db_url, FAST) as two:
        add_merchant(one.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(one.engine, "lee", START_FEN)
        code = issue_code(one.engine, "lee")
        servers = [one, two]
        barrier = threading.Barrier(16)

        def racer(i: int) -> str:
            barrier.wait(timeout=WAIT_S)
            answer = servers[i % 2].call("/v1/pay", auth_code=code, out_trade_no="T-R", total_fee=1500)
            return str(answer.get("err_code") or answer["result_code"])

        with ThreadPoolExecutor(16) as pool:
            results = sorted(pool.map(racer, range(16)))
        assert results.count("SUCCESS") == 1 and results.count("ORDERPAID") == 15, results
        check_books(one, {"lee": START_FEN - 1500}, {"lee": [paid_msg("15.00")]})

        code2 = issue_code(one.engine, "lee")
        barrier2 = threading.Barrier(8)

        def other_numbers(i: int) -> str:
            barrier2.wait(timeout=WAIT_S)
            answer = servers[i % 2].call("/v1/pay", auth_code=code2, out_trade_no=f"T-S{i}", total_fee=100)
            return str(answer.get("err_code") or answer["result_code"])

        with ThreadPoolExecutor(8) as pool:
            results = sorted(pool.map(other_numbers, range(8)))
        assert results.count("SUCCESS") == 1 and results.count("AUTH_CODE_INVALID") == 7, results
        check_books(one, {"lee": START_FEN - 1600}, {"lee": [paid_msg("15.00"), paid_msg("1.00")]})


def refund(
    wallet: WalletServer, out_trade_no: str, out_refund_no: str, total: int, fee: int
) -> dict[str, Any]:
    return wallet.call(
        "/v1/refund", out_trade_no=out_trade_no, out_refund_no=out_refund_no, total_fee=total, refund_fee=fee
    )


def refund_query(wallet: WalletServer, out_refund_no: str) -> dict[str, Any]:
    return wallet.call("/v1/refund/query", out_refund_no=out_refund_no)


def test_refunds_partial_repeated_over_the_total(wallet: WalletServer) -> None:
    mia = user(wallet, "mia")
    assert pay(wallet, mia, "T-20", 1000)["result_code"] == "SUCCESS"
    first = refund(wallet, "T-20", "R-1", 1000, 300)
    assert first["result_code"] == "SUCCESS" and first["refund_status"] in ("PROCESSING", "SUCCESS")
    again = refund(wallet, "T-20", "R-1", 1000, 300)
    assert again["refund_id"] == first["refund_id"]
    assert refund(wallet, "T-20", "R-1", 1000, 301)["err_code"] == "OUT_REFUND_NO_USED"
    assert refund(wallet, "T-20", "R-2", 999, 100)["err_code"] == "PARAM_ERROR"  # not the order's amount
    assert refund(wallet, "T-20", "R-3", 1000, 701)["err_code"] == "REFUND_FEE_INVALID"
    assert refund(wallet, "T-20", "R-3", 1000, 700)["result_code"] == "SUCCESS"  # exactly the rest
    assert refund(wallet, "T-20", "R-4", 1000, 1)["err_code"] == "REFUND_FEE_INVALID"
    assert refund(wallet, "T-NONE", "R-5", 1000, 1)["err_code"] == "ORDERNOTEXIST"
    assert refund_query(wallet, "R-NONE")["err_code"] == "REFUNDNOTEXIST"
    for no in ("R-1", "R-3"):
        done = until(lambda no=no: refund_query(wallet, no), lambda a: a["refund_status"] != "PROCESSING")
        assert done["refund_status"] == "SUCCESS"
    assert refund_query(wallet, "R-1")["refund_id"] == first["refund_id"]
    assert query(wallet, "T-20")["trade_state"] == "REFUND"
    rev = wallet.call("/v1/reverse", out_trade_no="T-20")
    assert rev["result_code"] == "FAIL" and rev["err_code"] == "REVERSE_EXPIRE"
    check_books(
        wallet,
        {mia: START_FEN},
        {mia: [paid_msg("10.00"), f"{MCH_NAME}退款3.00元已到账", f"{MCH_NAME}退款7.00元已到账"]},
    )


def test_refund_of_unpaid_orders(wallet: WalletServer) -> None:
    ned = user(wallet, "ned", "never")
    assert pay(wallet, ned, "T-21", 100)["err_code"] == "USERPAYING"
    assert refund(wallet, "T-21", "R-21", 100, 100)["err_code"] == "ORDERNOTPAID"
    wallet.call("/v1/reverse", out_trade_no="T-22")
    assert refund(wallet, "T-22", "R-22", 100, 100)["err_code"] == "ORDERNOTPAID"  # a tombstone
    check_books(wallet, {ned: START_FEN}, {ned: []})


def test_refunds_past_fifty(wallet: WalletServer) -> None:
    ola = user(wallet, "ola")
    assert pay(wallet, ola, "T-23", 100)["result_code"] == "SUCCESS"
    for i in range(50):
        assert refund(wallet, "T-23", f"R-23-{i}", 100, 1)["result_code"] == "SUCCESS", i
    assert refund(wallet, "T-23", "R-23-50", 100, 1)["err_code"] == "REFUND_COUNT_EXCEED"
    assert refund(wallet, "T-23", "R-23-7", 100, 1)["result_code"] == "SUCCESS"  # a repeat is no new refund
    until(lambda: refund_query(wallet, "R-23-49"), lambda a: a["refund_status"] == "SUCCESS")
    until(lambda: {"b": balance_fen(wallet.engine, ola)}, lambda a: a["b"] == START_FEN - 50)
    check_books(
        wallet, {ola: START_FEN - 50}, {ola: [paid_msg("1.00")] + [f"{MCH_NAME}退款0.01元已到账"] * 50}
    )


def test_concurrent_refunds_never_exceed_the_order(db_url: str) -> None:
    with wallet_server(db_url, FAST) as one, wallet_server(db_url, FAST) as two:
        add_merchant(one.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(one.engine, "pia", START_FEN)
        assert pay(one, "pia", "T-24", 1000)["result_code"] == "SUCCESS"
        barrier = threading.Barrier(10)

        def racer(i: int) -> str:
            barrier.wait(timeout=WAIT_S)
            answer = refund((one, two)[i % 2], "T-24", f"R-24-{i}", 1000, 300)
            return str(answer.get("err_code") or answer["result_code"])

        with ThreadPoolExecutor(10) as pool:
            results = sorted(pool.map(racer, range(10)))
        assert results.count("SUCCESS") == 3 and results.count("REFUND_FEE_INVALID") == 7, results
        until(lambda: {"b": balance_fen(one.engine, "pia")}, lambda a: a["b"] == START_FEN - 100)
        check_books(
            one, {"pia": START_FEN - 100}, {"pia": [paid_msg("10.00")] + [f"{MCH_NAME}退款3.00元已到账"] * 3}
        )
