"""The wallet provider's pure core: states, code routing, behaviours, decisions, statement, yuan."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillroll.money import format_yuan, parse_yuan
from tillroll.wallet import core
from tillroll.wallet.behaviour import Behaviour, BehaviourError, BehaviourKind, parse_behaviour
from tillroll.wallet.bill import HEADER, BillPayment, BillRefund, statement_csv
from tillroll.wallet.codes import Brand, brand_of, mask_code, new_code
from tillroll.wallet.config import NOTIFY_SCHEDULE_S, WalletConfig, WalletConfigError
from tillroll.wallet.core import ErrCode
from tillroll.wallet.notifier import is_ack, next_attempts
from tillroll.wallet.states import (
    ORDER_TRANSITIONS,
    IllegalTransition,
    OrderEvent,
    OrderState,
    RefundStatus,
    check_refund_step,
    next_state,
)

NOW = datetime(2026, 12, 2, 2, 0, 0)
CFG = WalletConfig()


# ---- states ------------------------------------------------------------------------------------


def test_every_pair_not_in_the_table_is_refused() -> None:
    for state in OrderState:
        for event in OrderEvent:
            if (state, event) in ORDER_TRANSITIONS:
                assert next_state(state, event) is ORDER_TRANSITIONS[(state, event)]
            else:
                with pytest.raises(IllegalTransition):
                    next_state(state, event)


def test_final_states_only_go_to_revoked() -> None:
    for state in (OrderState.CLOSED, OrderState.PAYERROR, OrderState.REVOKED):
        targets = {t for (s, _), t in ORDER_TRANSITIONS.items() if s is state}
        assert targets == {OrderState.REVOKED}


def test_money_states_never_go_back_to_unpaid() -> None:
    for (s, _), t in ORDER_TRANSITIONS.items():
        if s in (OrderState.SUCCESS, OrderState.REFUND):
            assert t in (OrderState.REFUND, OrderState.REVOKED)


def test_refund_steps() -> None:
    assert check_refund_step(RefundStatus.PROCESSING, RefundStatus.SUCCESS) is RefundStatus.SUCCESS
    for old in (RefundStatus.SUCCESS, RefundStatus.CHANGE):
        for new in RefundStatus:
            with pytest.raises(IllegalTransition):
                check_refund_step(old, new)


# ---- codes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "brand"),
    [
        ("134567890123456789", Brand.WX),
        ("104567890123456789", Brand.WX),
        ("154567890123456789", Brand.WX),
        ("164567890123456789", None),  # 16: not a wx prefix
        ("094567890123456789", None),
        ("13456789012345678", None),  # 17 digits
        ("1345678901234567890", None),  # 19 digits
        ("2812345678901234", Brand.ALI),  # 16 digits
        ("281234567890123456789012", Brand.ALI),  # 24 digits
        ("28123456789012345678901", Brand.ALI),
        ("281234567890123", None),  # 15
        ("2812345678901234567890123", None),  # 25
        ("251234567890123456", Brand.ALI),
        ("301234567890123456", Brand.ALI),
        ("241234567890123456", None),
        ("311234567890123456", None),
        ("13456789012345678x", None),
        ("１３４５６７８９０１２３４５６７８９", None),  # full-width digits are not digits here
        ("", None),
    ],
)
def test_routing_by_prefix(code: str, brand: Brand | None) -> None:
    assert brand_of(code) is brand


@given(st.sampled_from(list(Brand)))
def test_new_codes_route_to_their_brand(brand: Brand) -> None:
    assert brand_of(new_code(brand)) is brand


def test_mask_code() -> None:
    assert mask_code("134567890123456789") == "134567********6789"


# ---- behaviours --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("ok", Behaviour(BehaviourKind.OK)),
        ("confirm:3", Behaviour(BehaviourKind.CONFIRM, 3.0)),
        ("confirm:0.5", Behaviour(BehaviourKind.CONFIRM, 0.5)),
        ("never", Behaviour(BehaviourKind.NEVER)),
        ("fail:NOTENOUGH", Behaviour(BehaviourKind.FAIL, err_code="NOTENOUGH")),
        ("error-once", Behaviour(BehaviourKind.ERROR_ONCE)),
        ("slow:10", Behaviour(BehaviourKind.SLOW, 10.0)),
    ],
)
def test_behaviours(text: str, parsed: Behaviour) -> None:
    assert parse_behaviour(text) == parsed
    assert parse_behaviour(str(parsed)) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "maybe",
        "confirm",
        "confirm:",
        "confirm:-1",
        "slow:1e3",
        "slow:9999",
        "fail:",
        "fail:ORDERPAID",
        "ok:1",
    ],
)
def test_bad_behaviours(text: str) -> None:
    with pytest.raises(BehaviourError):
        parse_behaviour(text)


# ---- config ------------------------------------------------------------------------------------


def test_config_validated() -> None:
    for bad in ({"code_ttl_s": 0}, {"userpaying_close_s": -1}, {"notify_scale": 0}, {"refunds_max": 0}):
        with pytest.raises(WalletConfigError):
            WalletConfig(**bad)  # type: ignore[arg-type]


def test_notification_schedule_scaled() -> None:
    assert NOTIFY_SCHEDULE_S[:4] == (15, 15, 30, 180)
    assert len(NOTIFY_SCHEDULE_S) == 15 and sum(NOTIFY_SCHEDULE_S) == 24 * 3600 + 4 * 60  # 24 h 4 min in all
    times = next_attempts(NOW, WalletConfig(notify_scale=0.01))
    assert len(times) == 16
    assert [round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(times)][:3] == [
        0.15,
        0.15,
        0.3,
    ]
    assert CFG.notify_interval_s(16) is None and CFG.notify_interval_s(0) is None


def test_ack() -> None:
    assert is_ack(200, b'{"return_code": "SUCCESS"}')
    assert not is_ack(200, b'{"return_code": "FAIL"}')
    assert not is_ack(500, b'{"return_code": "SUCCESS"}')
    assert not is_ack(200, b"SUCCESS")
    assert not is_ack(200, b"[]")


# ---- pay decisions ----------------------------------------------------------------------------


def order(state: OrderState, **kw: object) -> core.OrderView:
    base: dict[str, object] = {"auth_code": "134567890123456789", "total_fee": 100, "created_at": NOW}
    return core.OrderView(state=state, **{**base, **kw})  # type: ignore[arg-type]


REQ = core.PayRequest("134567890123456789", "T1", 100)


@pytest.mark.parametrize(
    ("state", "err"),
    [
        (OrderState.SUCCESS, ErrCode.ORDERPAID),
        (OrderState.REFUND, ErrCode.ORDERPAID),
        (OrderState.USERPAYING, ErrCode.USERPAYING),
        (OrderState.CLOSED, ErrCode.ORDERCLOSED),
        (OrderState.REVOKED, ErrCode.ORDERREVERSED),
        (OrderState.PAYERROR, ErrCode.NOTENOUGH),
    ],
)
def test_repeated_pay_answers_as_the_order_stands(state: OrderState, err: ErrCode) -> None:
    assert core.repeated_pay(order(state), REQ) is err
    assert (
        core.repeated_pay(order(state), core.PayRequest(REQ.auth_code, "T1", 101))
        is ErrCode.OUT_TRADE_NO_USED
    )
    other = core.PayRequest("134567890123456780", "T1", 100)
    assert core.repeated_pay(order(state), other) is ErrCode.OUT_TRADE_NO_USED


def test_tombstone_answers_reversed_whatever_is_asked() -> None:
    assert (
        core.repeated_pay(order(OrderState.REVOKED, auth_code=None, total_fee=None), REQ)
        is ErrCode.ORDERREVERSED
    )


def test_code_checks() -> None:
    live = core.CodeView(NOW, used=False)
    assert core.check_code(REQ.auth_code, live, NOW + timedelta(seconds=59), CFG) is None
    expired = core.check_code(REQ.auth_code, live, NOW + timedelta(seconds=60), CFG)
    assert expired is not None and expired.err_code is ErrCode.AUTHCODEEXPIRE
    used = core.check_code(REQ.auth_code, core.CodeView(NOW, used=True), NOW, CFG)
    assert used is not None and used.err_code is ErrCode.AUTH_CODE_INVALID
    unknown = core.check_code(REQ.auth_code, None, NOW, CFG)
    assert unknown is not None and unknown.err_code is ErrCode.AUTH_CODE_INVALID
    bad = core.check_code("99", live, NOW, CFG)
    assert bad is not None and bad.err_code is ErrCode.AUTH_CODE_INVALID


def user(behaviour: str, balance: int = 1000, spent: bool = False) -> core.UserView:
    return core.UserView(balance, Brand.WX, parse_behaviour(behaviour), spent)


def test_new_order_by_behaviour() -> None:
    assert core.new_order(user("ok"), REQ, NOW, CFG) == core.NewOrder(OrderState.SUCCESS, True, None, None)
    poor = core.new_order(user("ok", balance=99), REQ, NOW, CFG)
    assert (poor.state, poor.debit, poor.answer) == (OrderState.PAYERROR, False, ErrCode.NOTENOUGH)
    conf = core.new_order(user("confirm:5"), REQ, NOW, CFG)
    assert conf.state is OrderState.USERPAYING and not conf.debit
    assert conf.confirm_at == NOW + timedelta(seconds=5) and conf.close_at == NOW + timedelta(seconds=45)
    never = core.new_order(user("never"), REQ, NOW, CFG)
    assert never.confirm_at is None and never.close_at == NOW + timedelta(seconds=45)
    fail = core.new_order(user("fail:AUTHCODEEXPIRE"), REQ, NOW, CFG)
    assert (fail.state, fail.err_code, fail.answer) == (
        OrderState.PAYERROR,
        "AUTHCODEEXPIRE",
        "AUTHCODEEXPIRE",
    )
    once = core.new_order(user("error-once"), REQ, NOW, CFG)
    assert (once.state, once.debit, once.answer, once.spend_error_once) == (
        OrderState.SUCCESS,
        True,
        ErrCode.SYSTEMERROR,
        True,
    )
    after = core.new_order(user("error-once", spent=True), REQ, NOW, CFG)
    assert (after.state, after.answer) == (OrderState.SUCCESS, None)
    slow = core.new_order(user("slow:7"), REQ, NOW, CFG)
    assert (slow.state, slow.debit, slow.delay_s) == (OrderState.SUCCESS, True, 7.0)


def test_due() -> None:
    up = order(
        OrderState.USERPAYING, confirm_at=NOW + timedelta(seconds=5), close_at=NOW + timedelta(seconds=45)
    )
    assert core.due(up, NOW + timedelta(seconds=4)) is None
    assert core.due(up, NOW + timedelta(seconds=5)) == (core.Due.CONFIRM, NOW + timedelta(seconds=5))
    assert core.due(up, NOW + timedelta(seconds=100)) == (core.Due.CONFIRM, NOW + timedelta(seconds=5))
    late = order(
        OrderState.USERPAYING, confirm_at=NOW + timedelta(seconds=50), close_at=NOW + timedelta(seconds=45)
    )
    assert core.due(late, NOW + timedelta(seconds=60)) == (core.Due.CLOSE, NOW + timedelta(seconds=45))
    assert core.due(order(OrderState.SUCCESS), NOW + timedelta(days=1)) is None
    assert core.confirm_event(100, 100) is OrderEvent.CONFIRM
    assert core.confirm_event(99, 100) is OrderEvent.CONFIRM_REFUSED


def test_reverse_decisions() -> None:
    rd = core.decide_reverse
    assert rd(None, NOW, CFG).action is core.ReverseAction.TOMBSTONE
    assert rd(order(OrderState.REVOKED), NOW, CFG).action is core.ReverseAction.NOTHING
    busy = rd(order(OrderState.USERPAYING), NOW, CFG)
    assert (busy.action, busy.err_code, busy.recall) == (core.ReverseAction.REFUSE, ErrCode.USERPAYING, True)
    assert rd(order(OrderState.SUCCESS), NOW, CFG).action is core.ReverseAction.REVOKE_AND_RETURN
    assert rd(order(OrderState.CLOSED), NOW, CFG).action is core.ReverseAction.REVOKE
    assert rd(order(OrderState.PAYERROR), NOW, CFG).action is core.ReverseAction.REVOKE
    old = rd(order(OrderState.SUCCESS), NOW + timedelta(days=7, seconds=1), CFG)
    assert (old.err_code, old.recall) == (ErrCode.REVERSE_EXPIRE, False)
    assert (
        rd(order(OrderState.SUCCESS), NOW + timedelta(days=7), CFG).action
        is core.ReverseAction.REVOKE_AND_RETURN
    )
    assert rd(order(OrderState.REFUND), NOW, CFG).err_code is ErrCode.REVERSE_EXPIRE


def test_refund_decisions() -> None:
    req = core.RefundRequest("T1", "R1", 100, 40)
    assert core.check_refund(None, req, CFG) is ErrCode.ORDERNOTEXIST
    assert core.check_refund(order(OrderState.CLOSED), req, CFG) is ErrCode.ORDERNOTPAID
    assert core.check_refund(order(OrderState.SUCCESS), req, CFG) is None
    assert core.check_refund(order(OrderState.REFUND, refunded_fee=60, refund_count=1), req, CFG) is None
    assert (
        core.check_refund(order(OrderState.REFUND, refunded_fee=61), req, CFG) is ErrCode.REFUND_FEE_INVALID
    )
    assert (
        core.check_refund(order(OrderState.REFUND, refund_count=50), req, CFG) is ErrCode.REFUND_COUNT_EXCEED
    )
    assert core.check_refund(order(OrderState.SUCCESS, total_fee=101), req, CFG) is ErrCode.PARAM_ERROR
    same = core.RefundView("T1", 100, 40)
    assert core.repeated_refund(same, req) is None
    assert core.repeated_refund(core.RefundView("T1", 100, 41), req) is ErrCode.OUT_REFUND_NO_USED
    assert core.repeated_refund(core.RefundView("T2", 100, 40), req) is ErrCode.OUT_REFUND_NO_USED


def test_every_err_code_has_a_text_in_both_languages() -> None:
    for code in ErrCode:
        chinese, _, english = core.ERR_TEXT[code].partition(" / ")
        assert chinese and english


def test_message_texts() -> None:
    assert core.paid_text("测试便利店", format_yuan(1250)) == "您在测试便利店付款12.50元"
    assert core.refunded_text("测试便利店", format_yuan(500)) == "测试便利店退款5.00元已到账"
    assert core.reversed_text("测试便利店", format_yuan(1250)) == "测试便利店的付款12.50元已撤销，已退回"


# ---- yuan and the statement --------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**12 - 1))
def test_yuan_round_trip_is_exact(fen: int) -> None:
    text = format_yuan(fen)
    assert text.count(".") == 1 and len(text.split(".")[1]) == 2
    assert parse_yuan(text) == fen


def test_yuan_examples() -> None:
    assert format_yuan(1) == "0.01" and format_yuan(98750) == "987.50" and format_yuan(0) == "0.00"
    assert parse_yuan("0.1") == 10 and parse_yuan("987.5") == 98750


def test_statement() -> None:
    pay = BillPayment(NOW, "20261202100000", "T1", "4200X", False, "wx", 1250)
    rev = BillPayment(NOW - timedelta(hours=1), "20261202090000", "T2", "4200Y", True, "ali", 1)
    ref = BillRefund(NOW, "20261202100000", "T1", "4200X", "wx", 1250, "R1", "50Z", 500, "SUCCESS")
    text = statement_csv("M1", [pay, rev], [ref])
    assert text.split("\n") == [
        ",".join(HEADER),
        "20261202090000,M1,T2,4200Y,REVOKED,ali,0.01,,,,",
        "20261202100000,M1,T1,4200X,SUCCESS,wx,12.50,,,,",
        "20261202100000,M1,T1,4200X,REFUND,wx,12.50,R1,50Z,5.00,SUCCESS",
        "",
    ]
    assert statement_csv("M1", [], []) == ",".join(HEADER) + "\n"
    assert ",".join(HEADER) == (
        "trade_time,mch_id,out_trade_no,transaction_id,trade_state,brand,total_fee,"
        "out_refund_no,refund_id,refund_fee,refund_status"
    )
