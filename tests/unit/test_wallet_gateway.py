"""The wallet gateway's verdict on both result layers, and the HTTP client's envelope handling.

The verdicts are pure (``judge_*`` over a :class:`Reply`). The client is driven through
``httpx.MockTransport`` — a fake transport, because these answers (a forged signature, another
merchant's answer, a 502 from a proxy, a body of a megabyte, a read timeout after the request
left) are what the real provider never sends; tests/integration/test_terminal_wallet.py runs the
client against the real `tillroll wallet serve`."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tillroll.terminal.wallet_gateway import (
    HttpWalletGateway,
    Layer,
    PayOutcome,
    QueryOutcome,
    RefundOutcome,
    RefundQueryOutcome,
    RefundStatus,
    Reply,
    ReverseOutcome,
    TradeState,
    judge_pay,
    judge_query,
    judge_refund,
    judge_refund_query,
    judge_reverse,
    wallet_time_utc,
)
from tillroll.wallet.sign import signed, verify

KEY = "k" * 32
MCH = "1900000109"
CODE = "134567890123456789"


def ok(**fields: object) -> Reply:
    return Reply(Layer.ANSWERED, {"return_code": "SUCCESS", **fields})


def fail(err: str, **fields: object) -> Reply:
    return ok(result_code="FAIL", err_code=err, err_code_des="…", **fields)


# --- pure verdicts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (ok(result_code="SUCCESS", total_fee=100, out_trade_no="A", transaction_id="T"), PayOutcome.PAID),
        (ok(result_code="SUCCESS", total_fee=99, out_trade_no="A"), PayOutcome.UNKNOWN),  # not our amount
        (ok(result_code="SUCCESS", total_fee=100, out_trade_no="B"), PayOutcome.UNKNOWN),  # not our order
        (ok(result_code="SUCCESS", total_fee="100"), PayOutcome.PAID),
        (fail("USERPAYING"), PayOutcome.USER_PAYING),
        (fail("SYSTEMERROR"), PayOutcome.UNKNOWN),
        (fail("ORDERPAID"), PayOutcome.UNKNOWN),  # our order is known: query says how it stands
        (fail("ORDERREVERSED"), PayOutcome.UNKNOWN),
        (fail("SOMETHING_NEW"), PayOutcome.UNKNOWN),  # never assume a refusal we do not know
        (fail("NOTENOUGH"), PayOutcome.REFUSED),
        (fail("AUTHCODEEXPIRE"), PayOutcome.REFUSED),
        (fail("PARAM_ERROR"), PayOutcome.REFUSED),
        (ok(result_code="MAYBE"), PayOutcome.UNKNOWN),
        (ok(), PayOutcome.UNKNOWN),  # no result layer at all
        (Reply(Layer.REJECTED, {"return_code": "FAIL", "return_msg": "签名错误"}), PayOutcome.REFUSED),
        (Reply(Layer.UNVERIFIED, {}), PayOutcome.UNKNOWN),
        (Reply(Layer.NO_ANSWER, {}), PayOutcome.UNKNOWN),
        (Reply(Layer.NOT_SENT, {}), PayOutcome.NOT_SENT),
    ],
)
def test_pay_is_judged_on_both_layers(reply: Reply, outcome: PayOutcome) -> None:
    assert judge_pay(reply, out_trade_no="A", total_fee=100).outcome is outcome


def test_a_rejected_pay_names_the_wallets_reason() -> None:
    r = judge_pay(Reply(Layer.REJECTED, {"return_msg": "签名错误 bad sign"}), out_trade_no="A", total_fee=1)
    assert r.code == "RETURN_FAIL" and "签名错误" in r.message


def test_query_verdicts() -> None:
    paid = judge_query(ok(result_code="SUCCESS", trade_state="SUCCESS", total_fee=100), total_fee=100)
    assert paid.outcome is QueryOutcome.FOUND and paid.trade_state is TradeState.SUCCESS
    wrong = judge_query(ok(result_code="SUCCESS", trade_state="REFUND", total_fee=5), total_fee=100)
    assert wrong.outcome is QueryOutcome.UNKNOWN
    assert judge_query(fail("ORDERNOTEXIST"), total_fee=1).outcome is QueryOutcome.NOT_FOUND
    assert judge_query(fail("SYSTEMERROR"), total_fee=1).outcome is QueryOutcome.UNKNOWN
    assert (
        judge_query(ok(result_code="SUCCESS", trade_state="ODD"), total_fee=1).outcome is QueryOutcome.UNKNOWN
    )
    assert judge_query(Reply(Layer.REJECTED, {}), total_fee=1).outcome is QueryOutcome.UNKNOWN
    closed = judge_query(ok(result_code="SUCCESS", trade_state="CLOSED"), total_fee=1)
    assert closed.trade_state is TradeState.CLOSED


def test_reverse_verdicts() -> None:
    assert judge_reverse(ok(result_code="SUCCESS", recall="N")).outcome is ReverseOutcome.REVERSED
    assert judge_reverse(ok(result_code="SUCCESS", recall="Y")).outcome is ReverseOutcome.AGAIN
    assert judge_reverse(fail("USERPAYING", recall="Y")).outcome is ReverseOutcome.AGAIN
    assert judge_reverse(fail("SYSTEMERROR")).outcome is ReverseOutcome.AGAIN
    assert judge_reverse(fail("REVERSE_EXPIRE")).outcome is ReverseOutcome.EXPIRED
    assert judge_reverse(Reply(Layer.NO_ANSWER, {})).outcome is ReverseOutcome.UNKNOWN
    assert judge_reverse(Reply(Layer.REJECTED, {})).outcome is ReverseOutcome.REFUSED


def test_refund_verdicts() -> None:
    r = judge_refund(ok(result_code="SUCCESS", refund_id="R1", refund_status="PROCESSING"))
    assert r.outcome is RefundOutcome.ACCEPTED and r.status is RefundStatus.PROCESSING and r.refund_id == "R1"
    assert judge_refund(fail("REFUND_FEE_INVALID")).outcome is RefundOutcome.REFUSED
    assert judge_refund(fail("SYSTEMERROR")).outcome is RefundOutcome.UNKNOWN
    assert judge_refund(Reply(Layer.NO_ANSWER, {})).outcome is RefundOutcome.UNKNOWN
    assert judge_refund(Reply(Layer.NOT_SENT, {})).outcome is RefundOutcome.UNKNOWN  # sent again
    q = judge_refund_query(ok(result_code="SUCCESS", refund_status="SUCCESS", refund_fee=5))
    assert q.outcome is RefundQueryOutcome.FOUND and q.status is RefundStatus.SUCCESS
    assert judge_refund_query(fail("REFUNDNOTEXIST")).outcome is RefundQueryOutcome.NOT_FOUND
    assert judge_refund_query(ok(result_code="SUCCESS")).outcome is RefundQueryOutcome.UNKNOWN


def test_wallet_times_are_beijing() -> None:
    t = wallet_time_utc("20261202093015")
    assert t is not None and (t.hour, t.minute) == (1, 30)
    assert wallet_time_utc("2026-12-02") is None and wallet_time_utc(None) is None


# --- the HTTP client ----------------------------------------------------------------------------


def gateway(handler: Callable[[httpx.Request], httpx.Response], key: str = KEY) -> HttpWalletGateway:
    return HttpWalletGateway(
        "http://wallet.test",
        MCH,
        key,
        connect_timeout_s=1.0,
        response_timeout_s=1.0,
        transport=httpx.MockTransport(handler),
    )


def answer(fields: dict[str, object], key: str = KEY) -> httpx.Response:
    return httpx.Response(
        200, json=signed({"return_code": "SUCCESS", "nonce_str": "n1", "mch_id": MCH, **fields}, key)
    )


def test_requests_are_signed_and_carry_the_profile_fields() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/pay"
        assert request.headers["content-type"].startswith("application/json")
        body = json.loads(request.content)
        seen.append(body)
        return answer(
            {"result_code": "SUCCESS", "total_fee": 100, "out_trade_no": "A", "transaction_id": "T"}
        )

    g = gateway(handler)
    assert g.pay(out_trade_no="A", auth_code=CODE, total_fee=100, body="测试").outcome is PayOutcome.PAID
    (body,) = seen
    assert verify(body, KEY) and body["mch_id"] == MCH and body["auth_code"] == CODE
    assert isinstance(body["nonce_str"], str) and len(body["nonce_str"]) == 32
    assert KEY not in repr(g)
    g.close()


@pytest.mark.parametrize(
    ("respond", "outcome"),
    [
        (lambda: answer({"result_code": "SUCCESS", "total_fee": 100}, key="wrong" * 6), PayOutcome.UNKNOWN),
        (
            lambda: httpx.Response(200, json={"return_code": "SUCCESS", "result_code": "SUCCESS"}),
            PayOutcome.UNKNOWN,
        ),
        (lambda: answer({"result_code": "SUCCESS", "total_fee": 100, "mch_id": "other"}), PayOutcome.UNKNOWN),
        (
            lambda: httpx.Response(200, json={"return_code": "FAIL", "return_msg": "签名错误"}),
            PayOutcome.REFUSED,
        ),
        (lambda: httpx.Response(502, text="bad gateway"), PayOutcome.UNKNOWN),
        (lambda: httpx.Response(200, text="<html>"), PayOutcome.UNKNOWN),
        (lambda: httpx.Response(200, json=["a"]), PayOutcome.UNKNOWN),
        (lambda: httpx.Response(200, content=b"{" + b" " * 70_000 + b"}"), PayOutcome.UNKNOWN),
    ],
)
def test_answers_that_cannot_be_believed_are_unknown(
    respond: Callable[[], httpx.Response], outcome: PayOutcome
) -> None:
    g = gateway(lambda _: respond())
    assert g.pay(out_trade_no="A", auth_code=CODE, total_fee=100, body="").outcome is outcome
    g.close()


def test_a_timeout_is_unknown_and_a_refused_connection_is_not_sent() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("closed", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler, outcome in (
        (timeout, PayOutcome.UNKNOWN),
        (broken, PayOutcome.UNKNOWN),
        (refused, PayOutcome.NOT_SENT),
    ):
        g = gateway(handler)
        assert g.pay(out_trade_no="A", auth_code=CODE, total_fee=1, body="").outcome is outcome
        assert g.reverse(out_trade_no="A").outcome is ReverseOutcome.UNKNOWN
        g.close()
