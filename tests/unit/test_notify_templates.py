"""Facts, contacts and templates: validated, final, masked, and naming the fact's own figures."""

from __future__ import annotations

import random
import re
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillroll.notify.contacts import Channel, ContactError, parse_contact
from tillroll.notify.facts import AlertKind, FactError, full_card_numbers, parse_fact
from tillroll.notify.outbox import MessageKind
from tillroll.notify.relay import DIRECT_SCHEDULE, WEBHOOK_SCHEDULE, Schedule
from tillroll.notify.templates import help_url, render, webhook_event
from tillroll.pan import luhn_ok

AT = datetime(2026, 12, 2, 1, 30, 15)  # 09:30:15 in Shanghai
T = "T0000001"
PAN = "6222021234567890128"  # passes Luhn
assert luhn_ok(PAN)


def fact(**extra: Any) -> dict[str, Any]:
    return {"id": "f1", "mid": "898310048160001", "merchant_name": "测试便利店", "at": AT.isoformat(),
            "amount_minor": 1250, **extra}  # fmt: skip


def luhn_number(rng: random.Random, length: int) -> str:
    body = "".join(rng.choice("0123456789") for _ in range(length - 1))
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


@pytest.mark.parametrize(
    ("kind", "extra", "zh", "en"),
    [
        (MessageKind.PAYMENT_CANCELLED, {}, "您在测试便利店的付款¥12.50未完成，已撤销，占用的款项将退回",
         "Your payment of ¥12.50 at 测试便利店 did not complete and was cancelled; "
         "any amount held returns to you"),
        (MessageKind.REFUND_APPROVED, {}, "退款¥12.50已批准",
         "Your refund of ¥12.50 from 测试便利店 was approved"),
        (MessageKind.E_RECEIPT, {"link": "http://127.0.0.1:8000/r/abc"}, "付款¥12.50",
         "you paid ¥12.50 on 2026-12-02 09:30:15"),
    ],
)  # fmt: skip
def test_customer_messages_name_the_fact_amount_merchant_and_local_time(
    kind: MessageKind, extra: dict[str, Any], zh: str, en: str
) -> None:
    out = render(parse_fact(kind, fact(**extra)))
    assert zh in out.text and en in out.text
    assert "2026-12-02 09:30:15" in out.text  # merchant-local, not the UTC 01:30:15
    assert "01:30:15" not in out.text
    assert "测试便利店" in out.subject


def test_an_e_receipt_carries_its_link_and_the_masked_number() -> None:
    link = "http://127.0.0.1:8000/r/tok"
    out = render(
        parse_fact(MessageKind.E_RECEIPT, fact(link=link, pan_masked="622202*********0128", brand="银联"))
    )
    assert link in out.text and "622202*********0128" in out.text


@pytest.mark.parametrize(
    "kind", [MessageKind.E_RECEIPT, MessageKind.PAYMENT_CANCELLED, MessageKind.REFUND_APPROVED]
)
def test_every_customer_message_links_the_self_service_page_when_given(kind: MessageKind) -> None:
    help_link = help_url("https://shop.example.com/")
    extra = {"link": "http://127.0.0.1:8000/r/tok", "state": "reversed"}
    out = render(parse_fact(kind, fact(help=help_link, **extra)))
    assert help_link == "https://shop.example.com/console/help"
    zh, en = out.text.split("\n")
    assert zh.endswith(help_link) and en.endswith(help_link)
    # every link stands apart: what a phone would make a link of is exactly one of ours
    assert set(re.findall(r"https?://\S+", out.text)) <= {help_link, extra["link"]}
    assert "console/help" not in render(parse_fact(kind, fact(**extra))).text  # none given, none shown


@pytest.mark.parametrize(
    ("alert", "extra", "expect"),
    [
        (AlertKind.REVERSAL_OVERDUE, {"tid": T}, "a reversal of ¥12.50 at terminal T0000001"),
        (AlertKind.PRINTER_FAULT, {"tid": T, "receipts_owed": 3, "amount_minor": None}, "3 receipt(s)"),
        (AlertKind.SIGN_IN_FAILURES, {"tid": T, "count": 5, "amount_minor": None}, "5 times in a row"),
        (AlertKind.JOURNAL_LOSS, {"tid": T, "batch": "000001", "count": 2}, "(2 sale(s), ¥12.50)"),
        (AlertKind.CUTOVER, {"tid": T, "batch": "000002", "count": 1, "net_minor": 1243}, "net ¥12.43"),
        (AlertKind.DEAD_LETTER, {"attempts": 6, "detail": "x", "amount_minor": None}, "after 6 attempt(s)"),
    ],
)  # fmt: skip
def test_merchant_alerts(alert: AlertKind, extra: dict[str, Any], expect: str) -> None:
    given_fact = {k: v for k, v in fact(alert=alert.value, **extra).items() if v is not None}
    out = render(parse_fact(MessageKind.MERCHANT_ALERT, given_fact))
    assert expect in out.text
    assert "测试便利店" in out.text and "2026-12-02 09:30:15" in out.text


def test_a_full_card_number_is_refused_anywhere_in_a_fact() -> None:
    for bad in (
        fact(pan_masked=PAN),
        fact(detail=f"card {PAN} declined"),
        fact(nested={"list": [int(PAN)]}),
        fact(pan="622202*********0128"),  # a field meant for a clear number, whatever it holds
        fact(payment_code="134567********1234"),
    ):
        with pytest.raises(FactError):
            parse_fact(MessageKind.PAYMENT_CANCELLED, bad)
    # Digit runs that are not card numbers pass: too short, too long, or failing Luhn.
    parse_fact(MessageKind.PAYMENT_CANCELLED, fact(reference="000001.000123", order="2026120209301512345678"))
    assert full_card_numbers("6222021234567890123") == []  # fails Luhn


def test_a_merchant_id_that_passes_luhn_is_not_taken_for_a_card_number() -> None:
    mid = "898310048160004"  # 15 digits, like a card number, and Luhn happens to pass
    assert luhn_ok(mid)
    for named in (fact(mid=mid), fact(mid=mid, merchant_name=None)):  # no name: the id is the merchant
        f = parse_fact(MessageKind.PAYMENT_CANCELLED, named)
        out = render(f)
        assert webhook_event(f)["data"]["mid"] == mid
        assert ("测试便利店" if named["merchant_name"] else mid) in out.subject
    # The id is exempt only as itself: a card number beside it is still refused, and so is the
    # same digits in a fact about another merchant.
    with pytest.raises(FactError):
        parse_fact(MessageKind.PAYMENT_CANCELLED, fact(mid=mid, detail=f"card {PAN}"))
    with pytest.raises(FactError):
        parse_fact(MessageKind.PAYMENT_CANCELLED, fact(detail=f"card {mid}"))


@given(st.integers(13, 19), st.integers(0, 2**32), st.text(max_size=20))
def test_no_rendered_message_ever_holds_a_full_pan(length: int, seed: int, noise: str) -> None:
    pan = luhn_number(random.Random(seed), length)
    for value in (pan, f"{noise}{pan}{noise}", pan[:6] + "*" * (length - 10) + pan[-4:]):
        try:
            f = parse_fact(
                MessageKind.E_RECEIPT, fact(link="https://r.example/r/x", detail=value, pan_masked=value)
            )
        except FactError:
            continue
        rendered = render(f)
        event = webhook_event(f)
        assert pan not in rendered.text and pan not in rendered.subject and pan not in str(event)


def test_a_clear_payment_code_that_fails_luhn_is_masked_in_the_message() -> None:
    code = "134567890123456789"  # 18 digits, not a card number (Luhn fails), still never shown
    assert not luhn_ok(code)
    out = render(parse_fact(MessageKind.PAYMENT_CANCELLED, fact(code_masked=code)))
    assert code not in out.text and "134567********6789" in out.text


@pytest.mark.parametrize("state", ["USERPAYING", "unknown", "PROCESSING"])
def test_only_final_states_are_announced(state: str) -> None:
    with pytest.raises(FactError, match="not final"):
        parse_fact(MessageKind.PAYMENT_CANCELLED, fact(state=state))


@pytest.mark.parametrize(
    "bad",
    [{"id": None}, {"at": "yesterday"}, {"amount_minor": 12.5}, {"amount_minor": -1}, {"amount_minor": True},
     {"currency": "840"}],
)  # fmt: skip
def test_bad_facts_are_refused_with_a_reason(bad: dict[str, Any]) -> None:
    given_fact = {k: v for k, v in {**fact(), **bad}.items() if v is not None}
    with pytest.raises(FactError):
        render(parse_fact(MessageKind.REFUND_APPROVED, given_fact))


def test_an_e_receipt_needs_an_http_link_and_an_alert_a_known_kind() -> None:
    with pytest.raises(FactError, match="link"):
        parse_fact(MessageKind.E_RECEIPT, fact())
    with pytest.raises(FactError, match="link"):
        parse_fact(MessageKind.E_RECEIPT, fact(link="javascript:alert(1)"))
    with pytest.raises(FactError, match="alert"):
        parse_fact(MessageKind.MERCHANT_ALERT, fact(alert="fire"))


@pytest.mark.parametrize(
    ("text", "channel", "address"),
    [
        ("alice@example.com", Channel.EMAIL, "alice@example.com"),
        (" 13800138000 ", Channel.SMS, "+8613800138000"),
        ("138-0013-8000", Channel.SMS, "+8613800138000"),
        ("+8613800138000", Channel.SMS, "+8613800138000"),
        ("008613800138000", Channel.SMS, "+8613800138000"),
        ("+14155550123", Channel.SMS, "+14155550123"),
    ],
)
def test_contacts(text: str, channel: Channel, address: str) -> None:
    contact = parse_contact(text)
    assert (contact.channel, contact.address) == (channel, address)


@pytest.mark.parametrize(
    "text",
    ["", "alice@", "@example.com", "a@b", "a b@example.com", "12345", "1380013800", "+0123456789", "phone",
     "a@@example.com"],
)  # fmt: skip
def test_bad_contacts_are_refused(text: str) -> None:
    with pytest.raises(ContactError):
        parse_contact(text)


def test_contacts_are_masked_for_merchants() -> None:
    assert parse_contact("alice@example.com").masked() == "a***@example.com"
    assert parse_contact("13800138000").masked() == "+86138****8000"


def test_schedules() -> None:
    assert WEBHOOK_SCHEDULE.retry_delays_s == (5, 300, 1800, 7200, 18000, 36000, 36000)  # Svix's
    assert WEBHOOK_SCHEDULE.attempts_max == 8
    assert sum(DIRECT_SCHEDULE.retry_delays_s) < sum(WEBHOOK_SCHEDULE.retry_delays_s)
    rng = random.Random(1)
    for attempt, base in enumerate(WEBHOOK_SCHEDULE.retry_delays_s, start=1):
        delay = WEBHOOK_SCHEDULE.delay_after(attempt, rng)
        assert delay is not None and base * 0.8 <= delay <= base * 1.2  # jitter, bounded
    assert WEBHOOK_SCHEDULE.delay_after(8, rng) is None
    fast = WEBHOOK_SCHEDULE.scaled(0.001)
    assert fast.retry_delays_s[0] == pytest.approx(0.005) and fast.attempts_max == 8
    with pytest.raises(ValueError):
        Schedule((-1.0,))
