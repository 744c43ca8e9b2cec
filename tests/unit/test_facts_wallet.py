"""The wallet rail's facts as the back office accepts them (terminal/facts_wallet.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tillroll.notify.outbox import MessageKind
from tillroll.terminal.facts import FactError
from tillroll.terminal.facts_wallet import check_wallet_fact, is_wallet_fact
from tillroll.terminal.receipt import TransType

TID = "10000001"
CODE = "134567890123456789"


def paid(**kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tid": TID,
        "reference": "1000000120261202103319000001",
        "rail": "wallet",
        "state": "paid",
        "amount_minor": 1250,
        "amount_yuan": "12.50",
        "currency": "156",
        "merchant_name": "测试便利店",
        "mid": "898310048990001",
        "wallet_merchant": "1900000109",
        "brand": "wx",
        "brand_label": "微信支付 WeChat Pay",
        "code_masked": "134567********6789",
        "out_trade_no": "1000000120261202103319000001",
        "transaction_id": "4200000001202612020000000001",
        "batch": "000001",
        "trace": "000007",
        "at": "2026-12-02T02:33:19",
        "time_utc": "2026-12-02T02:33:19Z",
        "time_local": "2026-12-02T10:33:19",
        "merchant_tz": "Asia/Shanghai",
    }
    doc.update(kw)
    return doc


def test_a_paid_order_becomes_the_qr_pay_slip_the_terminal_printed() -> None:
    assert is_wallet_fact(paid())
    checked = check_wallet_fact(MessageKind.E_RECEIPT, TID, paid())
    slip = checked.slip
    assert slip is not None and slip.trans_type is TransType.QR_PAY
    assert (slip.amount_minor, slip.issuer, slip.mid) == (1250, "微信支付 WeChat Pay", "1900000109")
    assert slip.reference == "订单号 ORDER 1000000120261202103319000001 付款码 CODE 134567********6789"
    assert slip.when.isoformat() == "2026-12-02T10:33:19"


def test_a_refund_and_a_cancellation_check() -> None:
    refund = paid(
        state="refund_approved",
        amount_minor=500,
        order_amount_minor=1250,
        out_refund_no="1000000120261202103319000002",
        refund_id="50000001",
        reference="1000000120261202103319000001:1000000120261202103319000002",
    )
    checked = check_wallet_fact(MessageKind.REFUND_APPROVED, TID, refund)
    assert checked.slip is not None and checked.slip.trans_type is TransType.REFUND
    for state in ("closed", "revoked"):
        assert check_wallet_fact(MessageKind.PAYMENT_CANCELLED, TID, paid(state=state)).slip is None


@pytest.mark.parametrize(
    ("kind", "doc", "field"),
    [
        (MessageKind.E_RECEIPT, paid(state="unknown"), "state"),  # never from an unknown outcome
        (MessageKind.PAYMENT_CANCELLED, paid(), "state"),
        (MessageKind.E_RECEIPT, paid(code_masked=CODE), "code_masked"),
        (MessageKind.E_RECEIPT, paid(brand_label=f"WeChat {CODE}"), "brand_label"),
        (MessageKind.E_RECEIPT, paid(amount_minor=12.5), "amount_minor"),
        (MessageKind.E_RECEIPT, paid(tid="10000002"), "tid"),
        (MessageKind.E_RECEIPT, paid(extra=1), "extra"),
        (MessageKind.E_RECEIPT, paid(time_local="today"), "time_local"),
        (MessageKind.MERCHANT_ALERT, paid(), "rail"),
    ],
)
def test_bad_wallet_facts_are_refused_by_name(kind: MessageKind, doc: dict[str, Any], field: str) -> None:
    with pytest.raises(FactError) as err:
        check_wallet_fact(kind, TID, doc)
    assert err.value.field == field
