"""The relay over a real database and a real SMTP server (aiosmtpd): at-least-once delivery,
one Message-ID per message, crashes between send and mark, retries, dead letters and alerts."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from notifywire import FACT_AT, FACT_AT_LOCAL, MERCHANT_NAME, MID, back_office, cancelled_fact, states
from sqlalchemy import Engine, select

from tillroll.clock import FakeClock
from tillroll.crypto.keystore import KeyStore
from tillroll.notify.deadletter import back_office_dead_letter
from tillroll.notify.endpoints import add_endpoint
from tillroll.notify.outbox import Channel, MessageKind, MessageState
from tillroll.notify.relay import DIRECT_SCHEDULE, Relay, RelayConfig, RelayCrash, Schedule
from tillroll.notify.routing import fan_out
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import outbox

FAST = Schedule(tuple(0.001 for _ in DIRECT_SCHEDULE.retry_delays_s), jitter_ratio=0.0)
LEASE_S = 30.0


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = back_office(db_url)
    yield engine
    engine.dispose()


def make_relay(engine: Engine, sink: SmtpSink, clock: FakeClock, **kw: object) -> tuple[Relay, SmtpSender]:
    sender = SmtpSender(SmtpConfig("127.0.0.1", sink.port, timeout_s=5.0))
    config = RelayConfig(lease_s=LEASE_S, schedules={Channel.EMAIL: FAST})
    relay = Relay(
        engine, outbox, {Channel.EMAIL: sender}, clock=clock, config=config,
        on_dead=back_office_dead_letter, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return relay, sender


def attempts_of(engine: Engine, message_id: str) -> list[str]:
    m, a = outbox.messages, outbox.attempts
    with engine.connect() as conn:
        rows = conn.execute(
            select(a.c.outcome)
            .join(m, m.c.id == a.c.message_pk)
            .where(m.c.message_id == message_id)
            .order_by(a.c.id)
        )
        return [str(r.outcome) for r in rows]


def test_a_fact_is_delivered_despite_a_crash_between_send_and_mark(engine: Engine, sink: SmtpSink) -> None:
    clock = FakeClock(FACT_AT)
    with engine.begin() as conn:
        [message] = fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(), clock.now())

    def crash(point: str, message_id: str | None) -> None:
        if point == "sent":
            raise RelayCrash(point)

    crashing, sender = make_relay(engine, sink, clock, crash=crash)
    with pytest.raises(RelayCrash):
        crashing.run_once()
    sender.close()
    assert len(sink.messages) == 1
    assert states(engine)[MessageState.PENDING] == 1  # sent, never marked

    # Another relay started at once finds it leased, not due: it sends nothing.
    second, sender2 = make_relay(engine, sink, clock)
    assert second.run_once().claimed == 0
    clock.advance(LEASE_S + 1)
    report = second.run_once()
    sender2.close()
    assert (report.claimed, report.delivered) == (1, 1)
    assert states(engine)[MessageState.DELIVERED] == 1
    # At least once: the mailbox got it twice, with one Message-ID (the receiver's dedup key).
    mails = sink.to("alice@example.com")
    assert len(mails) == 2
    assert {m.message_id for m in mails} == {f"<{message.message_id}@tillroll.localhost>"}
    # The message says what was committed: amount, merchant, merchant-local time.
    text = mails[0].text
    assert "¥12.51" in text and MERCHANT_NAME in text and FACT_AT_LOCAL in text
    assert "未完成，已撤销，占用的款项将退回" in text
    assert "did not complete and was cancelled; any amount held returns to you" in text
    assert mails[0].subject == f"{MERCHANT_NAME} 付款已撤销 / payment cancelled"
    assert attempts_of(engine, message.message_id) == ["delivered"]


def test_a_rolled_back_transaction_announces_nothing(engine: Engine, sink: SmtpSink) -> None:
    clock = FakeClock(FACT_AT)

    class FactFailed(Exception):
        pass

    with pytest.raises(FactFailed), engine.begin() as conn:
        assert fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(), clock.now())
        raise FactFailed("the fact's own write failed after its messages were written")
    relay, sender = make_relay(engine, sink, clock)
    assert relay.run_once().claimed == 0
    sender.close()
    assert states(engine) == {"pending": 0, "delivered": 0, "dead": 0}
    assert sink.messages == []


def test_a_fact_fanned_out_twice_is_sent_once(engine: Engine, sink: SmtpSink) -> None:
    clock = FakeClock(FACT_AT)
    with engine.begin() as conn:
        first = fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(), clock.now())
    with engine.begin() as conn:
        again = fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(), clock.now())
    assert len(first) == 1 and again == []
    relay, sender = make_relay(engine, sink, clock)
    relay.run_once()
    relay.run_once()
    sender.close()
    assert len(sink.messages) == 1


def test_dead_letter_after_the_retry_limit_raises_a_merchant_alert(engine: Engine, sink: SmtpSink) -> None:
    clock = FakeClock(FACT_AT)
    with engine.begin() as conn:
        add_endpoint(conn, KeyStore(os.urandom(32)), mid=MID, channel=Channel.EMAIL,
                     address="owner@shop.example", now=clock.now())  # fmt: skip
        [message] = fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(), clock.now())
    sink.fail_next(FAST.attempts_max, code=451)  # every attempt is refused "try later"
    relay, sender = make_relay(engine, sink, clock)
    for _ in range(FAST.attempts_max):
        clock.advance(1)
        relay.run_once()
    assert attempts_of(engine, message.message_id) == ["failed"] * (FAST.attempts_max - 1) + ["dead"]
    # The alert was written in the transaction that marked the dead letter; the next round sends it.
    clock.advance(1)
    assert relay.run_once().delivered == 1
    sender.close()
    [alert] = sink.to("owner@shop.example")
    assert f"after {FAST.attempts_max} attempt(s)" in alert.text
    assert "a***@example.com" in alert.text and "alice@example.com" not in alert.text
    assert states(engine) == {"pending": 0, "delivered": 1, "dead": 1}
    assert sink.to("alice@example.com") == []


def test_a_permanent_refusal_is_dead_at_once_and_a_dead_alert_raises_no_other(
    engine: Engine, sink: SmtpSink
) -> None:
    clock = FakeClock(FACT_AT)
    with engine.begin() as conn:
        add_endpoint(conn, KeyStore(os.urandom(32)), mid=MID, channel=Channel.EMAIL,
                     address="owner@shop.example", now=clock.now())  # fmt: skip
        fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(), clock.now())
    sink.fail_next(100, code=550)  # refused for good, the alert too
    relay, sender = make_relay(engine, sink, clock)
    for _ in range(5):
        clock.advance(1)
        relay.run_once()
    sender.close()
    # The customer's message died at its first attempt; its alert died too, and raised nothing.
    assert states(engine) == {"pending": 0, "delivered": 0, "dead": 2}
    with engine.connect() as conn:
        kinds = sorted(conn.execute(select(outbox.messages.c.kind)).scalars())
    assert kinds == [MessageKind.MERCHANT_ALERT, MessageKind.PAYMENT_CANCELLED]


def test_the_kept_open_connection_is_reopened_when_the_server_restarts(engine: Engine) -> None:
    clock = FakeClock(FACT_AT)
    with engine.begin() as conn:
        for n in (1, 2):
            fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(n), clock.now())
    first = SmtpSink().start()
    relay, sender = make_relay(engine, first, clock)
    relay.config = RelayConfig(lease_s=LEASE_S, batch_max=1, schedules={Channel.EMAIL: FAST})
    assert relay.run_once().delivered == 1
    port = first.port
    first.stop()
    with SmtpSink(port=port) as second:
        assert relay.run_once().delivered == 1  # the old connection fails; a new one is opened
        sender.close()
        assert len(second.messages) == 1
    assert len(first.messages) == 1
    assert states(engine)[MessageState.DELIVERED] == 2


def test_enqueue_says_whether_it_wrote(engine: Engine) -> None:
    from tillroll.notify.outbox import Outgoing, enqueue

    message = Outgoing("m1", MessageKind.E_RECEIPT, Channel.EMAIL, "alice@example.com", {"text": "x"})
    with engine.begin() as conn:
        assert enqueue(conn, outbox, message, FACT_AT) is True
        assert enqueue(conn, outbox, message, FACT_AT) is False
    with engine.begin() as conn:
        assert enqueue(conn, outbox, message, FACT_AT) is False
    assert states(engine)[MessageState.PENDING] == 1


def test_two_relays_on_one_database_never_send_the_same_message(engine: Engine, sink: SmtpSink) -> None:
    import threading
    from collections import Counter

    from tillroll.clock import SystemClock

    count = 300
    with engine.begin() as conn:
        for n in range(count):
            fan_out(
                conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(n, contact=f"c{n}@example.com"), FACT_AT
            )
    start = threading.Barrier(2)
    errors: list[BaseException] = []
    claimed: list[int] = []

    def work() -> None:
        sender = SmtpSender(SmtpConfig("127.0.0.1", sink.port, timeout_s=5.0))
        config = RelayConfig(lease_s=LEASE_S, batch_max=20, schedules={Channel.EMAIL: FAST})
        relay = Relay(engine, outbox, {Channel.EMAIL: sender}, clock=SystemClock(), config=config)
        try:
            start.wait(5)
            for _ in range(count):  # bounded: each round delivers at least one, or the outbox is empty
                report = relay.run_once()
                claimed.append(report.claimed)
                if report.claimed == 0 and states(engine)[MessageState.PENDING] == 0:
                    break
        except BaseException as exc:
            errors.append(exc)
        finally:
            sender.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert states(engine) == {"pending": 0, "delivered": count, "dead": 0}
    ids = Counter(m.message_id for m in sink.wait_for(count))
    assert len(ids) == count and set(ids.values()) == {1}  # each sent once, by one relay
    assert sum(claimed) == count


def test_run_delivers_what_is_committed_while_it_runs_and_stops_when_told(
    engine: Engine, sink: SmtpSink
) -> None:
    import threading

    from tillroll.clock import SystemClock

    sender = SmtpSender(SmtpConfig("127.0.0.1", sink.port))
    config = RelayConfig(poll_interval_s=0.05, schedules={Channel.EMAIL: FAST})
    relay = Relay(engine, outbox, {Channel.EMAIL: sender}, clock=SystemClock(), config=config)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        with engine.begin() as conn:
            fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(), SystemClock().now())
        assert len(sink.wait_for(1, timeout_s=10)) == 1
    finally:
        stop.set()
        thread.join(10)
        sender.close()
    assert not thread.is_alive()


def test_a_fact_holding_a_card_number_writes_nothing(engine: Engine) -> None:
    from tillroll.notify.facts import FactError

    with pytest.raises(FactError), engine.begin() as conn:
        fan_out(
            conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(detail="card 6222021234567890128"), FACT_AT
        )
    assert states(engine) == {"pending": 0, "delivered": 0, "dead": 0}


def test_a_relay_gives_back_what_it_cannot_send_within_half_its_lease(engine: Engine, sink: SmtpSink) -> None:
    clock = FakeClock(FACT_AT)
    with engine.begin() as conn:
        for n in range(3):
            fact = cancelled_fact(n, contact=f"c{n}@example.com")
            fan_out(conn, MessageKind.PAYMENT_CANCELLED, fact, FACT_AT)

    def slow(point: str, message_id: str | None) -> None:
        if point == "sent":
            clock.advance(LEASE_S * 0.6)  # the first send took most of the lease

    relay, sender = make_relay(engine, sink, clock, crash=slow)
    report = relay.run_once()
    assert (report.claimed, report.delivered, report.released) == (3, 1, 2)
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.messages.c.attempts, outbox.messages.c.lease_until)).all()
    assert sorted(r.attempts for r in rows) == [0, 0, 1]  # given back uncounted, due at once
    assert all(r.lease_until is None for r in rows)
    relay.crash = None
    assert relay.run_once().delivered == 2
    sender.close()
    assert len(sink.messages) == 3
