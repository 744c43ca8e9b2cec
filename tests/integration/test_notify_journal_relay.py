"""A terminal's fact, end to end: announced in the journal's transaction, relayed (at least
once, signed with the terminal's back-office key) to the real intake of `tillroll web`, which
stores it and fans it out in one transaction, then delivered to the merchant by e-mail. A crash
between the send and the mark sends it again; the intake keeps it once; a fact whose journal
transaction rolled back is never announced."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tillroll.clock import FakeClock, SystemClock
from tillroll.crypto.keystore import KeyStore
from tillroll.host.admin import add_merchant, add_terminal
from tillroll.host.store import HostStore, open_store
from tillroll.notify.deadletter import back_office_dead_letter, journal_dead_letter
from tillroll.notify.endpoints import add_endpoint
from tillroll.notify.outbox import Channel, MessageKind, MessageState
from tillroll.notify.relay import BACKOFFICE_SCHEDULE, Relay, RelayConfig, RelayCrash
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import backoffice_facts, outbox
from tillroll.terminal.announce import announce
from tillroll.terminal.backoffice import BackOfficeSender
from tillroll.terminal.journal import Journal
from tillroll.terminal.journal import outbox as journal_outbox
from tillroll.web import WebConfig, WebServer, create_app

TID = "10000001"
MID = "898310048160001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
OWNER = "owner@example.com"
LEASE_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "测试便利店")
    add_terminal(s, TID, MID, TMK)
    with s.engine.begin() as conn:
        add_endpoint(conn, s.keystore, mid=MID, channel=Channel.EMAIL, address=OWNER, now=SystemClock().now())
    yield s
    s.engine.dispose()


def test_a_journal_fact_reaches_the_merchant_once(store: HostStore, tmp_path: Path) -> None:
    clock = FakeClock(SystemClock().now())
    journal = Journal(tmp_path / "journal.db", KeyStore(os.urandom(32)))
    fact = {"alert": "printer_fault", "at": clock.now().isoformat(), "count": 2, "mid": MID}
    with journal.begin() as conn:
        announce(conn, kind=MessageKind.MERCHANT_ALERT, tid=TID, reference="printer.1", recipient=None,
                 fact=fact, now=clock.now())  # fmt: skip
    with pytest.raises(RuntimeError), journal.begin() as conn:  # a fact that rolls back
        announce(conn, kind=MessageKind.MERCHANT_ALERT, tid=TID, reference="printer.2", recipient=None,
                 fact=fact, now=clock.now())  # fmt: skip
        raise RuntimeError("the journal write after it failed")

    def crash(point: str, message_id: str | None) -> None:
        if point == "sent":
            raise RelayCrash(point)

    port = free_port()
    config = WebConfig(port=port)
    with WebServer(create_app(config, store), port=port), SmtpSink() as sink:
        sender = BackOfficeSender(config.base_url, TID, TMK, timeout_s=5.0, clock=clock)
        schedules = {Channel.BACKOFFICE: BACKOFFICE_SCHEDULE.scaled(0.001)}

        def terminal_relay(**kw: object) -> Relay:
            return Relay(journal.engine, journal_outbox, {Channel.BACKOFFICE: sender}, clock=clock,
                         config=RelayConfig(lease_s=LEASE_S, schedules=schedules),
                         on_dead=journal_dead_letter(journal_outbox), **kw)  # type: ignore[arg-type]  # fmt: skip

        with pytest.raises(RelayCrash):
            terminal_relay(crash=crash).run_once()  # delivered to the intake, not marked
        clock.advance(LEASE_S + 1)
        assert terminal_relay().run_once().delivered == 1  # sent again; the intake keeps it once
        sender.close()
        with journal.engine.connect() as conn:
            assert conn.execute(select(journal_outbox.messages.c.state)).scalars().all() == [
                MessageState.DELIVERED
            ]
        smtp = SmtpSender(SmtpConfig("127.0.0.1", sink.port))
        back = Relay(
            store.engine, outbox, {Channel.EMAIL: smtp}, clock=clock, on_dead=back_office_dead_letter
        )
        assert back.run_once().delivered == 1
        assert back.run_once().claimed == 0
        smtp.close()
        [mail] = sink.messages
    journal.close()
    assert mail.rcpt_tos == (OWNER,)
    assert "printer fault" in mail.subject and "2 receipt(s) are owed" in mail.text
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(backoffice_facts)).scalar_one() == 1
