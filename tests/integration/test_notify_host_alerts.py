"""The host's own merchant alerts, written in the transaction that closes a batch: a journal
loss detected at sign-in, and a cut-over; delivered over real SMTP by the relay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from hostwire import EXPIRY, MID, PAN, PIN, TID, TMK, WireClient
from sqlalchemy import select

from tillroll.clock import FakeClock, merchant_zone, to_merchant_local
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.closing import cutover
from tillroll.host.store import HostStore, open_store
from tillroll.notify.deadletter import back_office_dead_letter
from tillroll.notify.endpoints import add_endpoint
from tillroll.notify.outbox import Channel, MessageKind
from tillroll.notify.relay import Relay
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import outbox

OWNER = "owner@shop.example"
NAME = "一号便利店"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_url: str, clock: FakeClock) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, NAME)
    add_terminal(s, TID, MID, TMK)
    add_card(s, PAN, EXPIRY, PIN, 100_000)
    with s.engine.begin() as conn:
        add_endpoint(conn, s.keystore, mid=MID, channel=Channel.EMAIL, address=OWNER, now=clock.now())
    yield s
    s.engine.dispose()


@pytest.fixture
def host(store: HostStore, clock: FakeClock) -> Iterator[HostServer]:
    with HostServer(store, clock=clock) as h:
        yield h


def deliver(store: HostStore, clock: FakeClock) -> list[str]:
    with SmtpSink() as sink:
        sender = SmtpSender(SmtpConfig("127.0.0.1", sink.port))
        Relay(
            store.engine, outbox, {Channel.EMAIL: sender}, clock=clock, on_dead=back_office_dead_letter
        ).run_once()
        sender.close()
        return [m.text for m in sink.to(OWNER)]


def alerts(store: HostStore) -> list[str]:
    with store.engine.connect() as conn:
        query = select(outbox.messages.c.message_id).where(
            outbox.messages.c.kind == MessageKind.MERCHANT_ALERT
        )
        return list(conn.execute(query).scalars())


def local(clock: FakeClock) -> str:
    return f"{to_merchant_local(clock.now(), merchant_zone('Asia/Shanghai')):%Y-%m-%d %H:%M:%S}"


def test_a_journal_loss_alerts_the_merchant(host: HostServer, store: HostStore, clock: FakeClock) -> None:
    old = WireClient(host.address)
    assert old.sign_in().code == "00"
    assert old.send(old.sale_message(2_500, pin=None)).code == "00"
    assert old.send(old.sale_message(1_000, pin=None)).code == "00"
    old.close()
    assert alerts(store) == []
    new = WireClient(host.address)  # the replacement device: its STAN starts again
    assert new.sign_in().code == "00" and new.batch == "000002"
    assert new.sign_in().code == "00"  # a second sign-in finds no loss, and alerts nothing more
    new.close()
    assert len(alerts(store)) == 1
    [text] = deliver(store, clock)
    assert f"terminal {TID} lost its journal ({local(clock)})" in text
    assert "batch 000001 (2 sale(s), ¥35.00)" in text and NAME in text


def test_a_cutover_alerts_the_merchant_per_batch(
    host: HostServer, store: HostStore, clock: FakeClock
) -> None:
    dead = WireClient(host.address)
    assert dead.sign_in().code == "00"
    assert dead.send(dead.sale_message(6_000, pin=None)).code == "00"
    dead.close()
    clock.advance(3600)
    [closed] = cutover(store.engine, before=clock.now() - timedelta(minutes=30), now=clock.now())
    assert cutover(store.engine, before=clock.now() - timedelta(minutes=30), now=clock.now()) == []
    assert len(alerts(store)) == 1
    [text] = deliver(store, clock)
    assert f"batch 000001 of terminal {TID} (1 sale(s), ¥60.00, net ¥{closed.net_minor / 100:.2f})" in text
    assert local(clock) in text
