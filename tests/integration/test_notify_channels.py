"""SMS through the local gateway and signed webhooks to a receiver written from the Standard
Webhooks description, over real HTTP on 127.0.0.1, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from notifywire import FACT_AT_LOCAL, MERCHANT_NAME, MID, back_office, cancelled_fact, states
from sqlalchemy import Engine, select
from walletserver import serve_app
from webhook_receiver import Receiver, create_receiver_app

from tillroll.clock import FakeClock, SystemClock
from tillroll.crypto.keystore import KeyStore
from tillroll.notify.deadletter import back_office_dead_letter
from tillroll.notify.endpoints import add_endpoint, webhook_secret
from tillroll.notify.outbox import Channel, MessageKind, MessageState, Sender, StoredMessage
from tillroll.notify.relay import DIRECT_SCHEDULE, WEBHOOK_SCHEDULE, Relay, RelayConfig, RelayCrash
from tillroll.notify.routing import fan_out
from tillroll.notify.sms import SmsGatewaySender
from tillroll.notify.webhook import WebhookSender
from tillroll.sim.sms_gateway import running_gateway
from tillroll.store.tables import outbox

PHONE = "+8613800138000"
LEASE_S = 30.0
SCHEDULES = {
    Channel.SMS: DIRECT_SCHEDULE.scaled(0.0001),
    Channel.WEBHOOK: WEBHOOK_SCHEDULE.scaled(0.0001),
    Channel.EMAIL: DIRECT_SCHEDULE.scaled(0.0001),
}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = back_office(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def keystore() -> KeyStore:
    return KeyStore(os.urandom(32))


def now_clock() -> FakeClock:
    """The relay's clock at the real time (the receiver checks timestamps against its own)."""
    return FakeClock(SystemClock().now())


def relay_for(engine: Engine, senders: dict[Channel, Sender], clock: FakeClock, **kw: object) -> Relay:
    config = RelayConfig(lease_s=LEASE_S, schedules=SCHEDULES)
    return Relay(engine, outbox, senders, clock=clock, config=config, on_dead=back_office_dead_letter,
                 **kw)  # type: ignore[arg-type]  # fmt: skip


def webhook_sender(engine: Engine, keystore: KeyStore, clock: FakeClock) -> WebhookSender:
    def secret_for(message: StoredMessage) -> str | None:
        with engine.connect() as conn:
            return webhook_secret(conn, keystore, mid=str(message.payload["mid"]), url=message.recipient)

    return WebhookSender(secret_for, clock)


def register_hook(engine: Engine, keystore: KeyStore, url: str, clock: FakeClock) -> str:
    with engine.begin() as conn:
        _, secret = add_endpoint(
            conn, keystore, mid=MID, channel=Channel.WEBHOOK, address=url, now=clock.now()
        )
    assert secret is not None and secret.startswith("whsec_")
    return secret


def test_sms_and_webhook_each_delivered_once_despite_a_crash(engine: Engine, keystore: KeyStore) -> None:
    clock = now_clock()
    receiver = Receiver(secret="")
    with serve_app(create_receiver_app(receiver)) as base, running_gateway() as (sms_url, gateway):
        receiver.secret = register_hook(engine, keystore, base + "/hook", clock)
        with engine.begin() as conn:
            fact = cancelled_fact(contact="138 0013 8000", at=clock.now().isoformat())
            written = fan_out(conn, MessageKind.PAYMENT_CANCELLED, fact, clock.now())
        assert sorted(m.channel for m in written) == [Channel.SMS, Channel.WEBHOOK]

        def crash(point: str, message_id: str | None) -> None:
            if point == "sent" and message_id == written[-1].message_id:  # both sent, none marked
                raise RelayCrash(point)

        sms, hook = SmsGatewaySender(sms_url), webhook_sender(engine, keystore, clock)
        senders: dict[Channel, Sender] = {Channel.SMS: sms, Channel.WEBHOOK: hook}
        with pytest.raises(RelayCrash):
            relay_for(engine, senders, clock, crash=crash).run_once()
        assert states(engine)[MessageState.PENDING] == 2
        clock.advance(LEASE_S + 1)
        report = relay_for(engine, senders, clock).run_once()
        sms.close()
        hook.close()
        assert report.delivered == 2 and states(engine)[MessageState.DELIVERED] == 2
        # Each receiver saw two requests with one id, and kept one message.
        assert gateway.requests == 2
        [text] = [s.text for s in gateway.messages(PHONE)]
        assert "¥12.51" in text and MERCHANT_NAME in text and "did not complete and was cancelled" in text
        assert receiver.requests == [written[1].message_id] * 2 and receiver.rejected == []
        [event] = receiver.events.values()
        assert event["type"] == "payment.cancelled"
        assert event["data"]["amount_minor"] == 1251 and event["data"]["merchant_name"] == MERCHANT_NAME
        assert FACT_AT_LOCAL not in json.dumps(event)  # events carry the UTC instant ...
        assert event["data"]["at"].endswith("Z")  # ... marked as such
        assert event["data"]["code_masked"] == "134567********1234"


def test_the_receiver_refuses_a_stale_timestamp_a_wrong_secret_and_a_changed_body(
    engine: Engine, keystore: KeyStore
) -> None:
    receiver = Receiver(secret="")
    with serve_app(create_receiver_app(receiver)) as base:
        real = now_clock()
        receiver.secret = register_hook(engine, keystore, base + "/hook", real)
        with engine.begin() as conn:
            fan_out(conn, MessageKind.REFUND_APPROVED, cancelled_fact(contact=None), real.now())
        # A relay whose clock is 10 minutes fast signs a timestamp outside the tolerance.
        skewed = FakeClock(real.now() + timedelta(minutes=10))
        hook = webhook_sender(engine, keystore, skewed)
        report = relay_for(engine, {Channel.WEBHOOK: hook}, skewed).run_once()
        assert (report.failed, receiver.rejected, receiver.events) == (1, ["timestamp outside tolerance"], {})
        # The same request with its body changed, or signed with another secret, is refused too.
        good = WebhookSender(lambda m: receiver.secret, real)
        other = WebhookSender(lambda m: "whsec_" + "QUJD" * 8, real)
        message = StoredMessage("msg_x", MessageKind.REFUND_APPROVED, Channel.WEBHOOK, base + "/hook",
                                {"body": '{"a":1}'}, 1, real.now())  # fmt: skip
        with pytest.raises(Exception, match="401"):
            other.send(message)
        ts = str(int(real.now().timestamp()))
        tampered = httpx.post(base + "/hook", content=b'{"a":2}', headers={
            "webhook-id": "msg_x", "webhook-timestamp": ts, "webhook-signature": "v1,AAAA"})  # fmt: skip
        assert tampered.status_code == 401
        good.send(message)  # and the honest one passes
        assert list(receiver.events) == ["msg_x"]
        for sender in (hook, good, other):
            sender.close()
        assert receiver.rejected == [
            "timestamp outside tolerance",
            "no signature matches",
            "no signature matches",
        ]


def test_webhook_retries_until_acknowledged_and_410_stops_it(engine: Engine, keystore: KeyStore) -> None:
    clock = now_clock()
    receiver = Receiver(secret="", fail_next=3)
    with serve_app(create_receiver_app(receiver)) as base:
        receiver.secret = register_hook(engine, keystore, base + "/hook", clock)
        with engine.begin() as conn:
            add_endpoint(conn, keystore, mid=MID, channel=Channel.SMS, address="13900139000", now=clock.now())
            fan_out(conn, MessageKind.REFUND_APPROVED, cancelled_fact(1, contact=None), clock.now())
        hook = webhook_sender(engine, keystore, clock)
        relay = relay_for(engine, {Channel.WEBHOOK: hook}, clock)
        outcomes = []
        for _ in range(5):
            clock.advance(5)  # past any scaled delay, well within the receiver's tolerance
            r = relay.run_once()
            outcomes.append((r.failed, r.delivered))
        assert outcomes[:4] == [(1, 0), (1, 0), (1, 0), (0, 1)]
        assert len(receiver.events) == 1 and len(receiver.requests) == 4
        # 410 Gone: the endpoint does not want webhooks; dead at once, and the merchant is told by SMS.
        receiver.answer_status = 410
        with engine.begin() as conn:
            fan_out(conn, MessageKind.REFUND_APPROVED, cancelled_fact(2, contact=None), clock.now())
        clock.advance(1)
        assert relay.run_once().dead == 1
        hook.close()
    assert states(engine) == {"pending": 1, "delivered": 1, "dead": 1}  # the pending one: the SMS alert
    with running_gateway() as (sms_url, gateway):
        sms = SmsGatewaySender(sms_url)
        assert relay_for(engine, {Channel.SMS: sms}, clock).run_once().delivered == 1
        sms.close()
        [alert] = gateway.messages("+8613900139000")
    assert "could not be delivered after 1 attempt(s)" in alert.text and base + "/hook" in alert.text
    assert "endpoint disabled" in alert.text
    # The endpoint is off: the next fact goes to the merchant's SMS only, never to the gone webhook.
    with engine.begin() as conn:
        fault = {"id": "a3", "alert": "printer_fault", "mid": MID, "at": clock.now().isoformat(),
                 "tid": "T0000001", "receipts_owed": 1}  # fmt: skip
        later = fan_out(conn, MessageKind.MERCHANT_ALERT, fault, clock.now())
    assert [m.channel for m in later] == [Channel.SMS]


def test_sms_gateway_failures_are_retried_and_bad_numbers_dead(engine: Engine) -> None:
    clock = now_clock()
    with running_gateway() as (sms_url, gateway):
        httpx.post(sms_url + "/control/fail", json={"count": 2, "status": 503}).raise_for_status()
        with engine.begin() as conn:
            fan_out(conn, MessageKind.REFUND_APPROVED, cancelled_fact(contact="13800138000"), clock.now())
        sms = SmsGatewaySender(sms_url)
        relay = relay_for(engine, {Channel.SMS: sms}, clock)
        delivered = 0
        for _ in range(4):
            clock.advance(5)
            delivered += relay.run_once().delivered
        sms.close()
        assert delivered == 1 and gateway.requests == 3
        [text] = [s.text for s in gateway.messages(PHONE)]
        assert "退款¥12.51已批准" in text and "Your refund of ¥12.51 from 测试便利店 was approved" in text


def test_a_retry_after_from_the_gateway_is_honoured(engine: Engine) -> None:
    clock = now_clock()
    with running_gateway() as (sms_url, gateway):
        order = {"count": 1, "status": 503, "retry_after_s": 600}
        httpx.post(sms_url + "/control/fail", json=order).raise_for_status()
        with engine.begin() as conn:
            fan_out(conn, MessageKind.REFUND_APPROVED, cancelled_fact(contact="13800138000"), clock.now())
        sms = SmsGatewaySender(sms_url)
        relay = relay_for(engine, {Channel.SMS: sms}, clock)
        assert relay.run_once().failed == 1
        with engine.connect() as conn:
            due = conn.execute(select(outbox.messages.c.next_attempt_at)).scalar_one()
        assert due >= clock.now() + timedelta(seconds=600)  # not the schedule's scaled milliseconds
        clock.advance(599)
        assert relay.run_once().claimed == 0
        clock.advance(2)
        assert relay.run_once().delivered == 1
        sms.close()
        assert gateway.requests == 2
