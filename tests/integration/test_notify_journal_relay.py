"""A terminal's facts, end to end: announced in the journal's transaction, relayed (at least
once) to a back-office intake that stores each fact and fans it out in one transaction, then
delivered to the customer by e-mail. The intake here is a minimal stand-in for `tillroll web`'s,
keeping the contract of tillroll.notify.backoffice: deduplicate on the message id."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from notifywire import FACT_AT_LOCAL, MID, back_office
from sqlalchemy import Column, Engine, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError
from walletserver import serve_app

from tillroll.clock import FakeClock, SystemClock
from tillroll.crypto.keystore import KeyStore
from tillroll.notify.backoffice import BackofficeSender
from tillroll.notify.deadletter import back_office_dead_letter, journal_dead_letter
from tillroll.notify.outbox import Channel, MessageKind, MessageState
from tillroll.notify.relay import BACKOFFICE_SCHEDULE, Relay, RelayConfig, RelayCrash
from tillroll.notify.routing import fan_out
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import outbox, terminals
from tillroll.terminal.announce import announce
from tillroll.terminal.journal import Journal
from tillroll.terminal.journal import outbox as journal_outbox

TID = "T0000001"
CODE_MASKED = "134567********1234"
LEASE_S = 30.0
_facts = MetaData()
received = Table("test_received_facts", _facts, Column("message_id", String(128), primary_key=True))


def intake_app(engine: Engine, clock: FakeClock) -> FastAPI:
    app = FastAPI()

    @app.post("/intake")
    async def intake(request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        fact = {**body["payload"], "id": body["message_id"]}
        if body["recipient"] != "merchant":
            fact["contact"] = body["recipient"]
        try:
            with engine.begin() as conn:  # the fact and its messages: one transaction
                conn.execute(insert(received).values(message_id=body["message_id"]))
                fan_out(conn, MessageKind(body["kind"]), fact, clock.now())
        except IntegrityError:
            return JSONResponse({"status": "duplicate"})
        return JSONResponse({"status": "stored"}, status_code=201)

    return app


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = back_office(db_url)
    _facts.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(terminals).values(tid=TID, mid=MID, tmk_enc=b"x", created_at=FakeClock().now()))
    yield engine
    engine.dispose()


def test_a_journal_fact_reaches_the_customer_once(engine: Engine, tmp_path: Path) -> None:
    clock = FakeClock(SystemClock().now())
    journal = Journal(tmp_path / "journal.db", KeyStore(os.urandom(32)))
    with journal.begin() as conn:
        announce(conn, kind=MessageKind.PAYMENT_CANCELLED, tid=TID, reference="ORDER0001",
                 recipient="bob@example.com",
                 fact={"at": clock.now().isoformat(), "amount_minor": 880, "code_masked": CODE_MASKED},
                 now=clock.now())  # fmt: skip
    with pytest.raises(RuntimeError), journal.begin() as conn:  # a fact that rolls back
        announce(conn, kind=MessageKind.PAYMENT_CANCELLED, tid=TID, reference="ORDER0002",
                 recipient="carol@example.com", fact={"at": clock.now().isoformat(), "amount_minor": 1},
                 now=clock.now())  # fmt: skip
        raise RuntimeError("the journal write after it failed")

    def crash(point: str, message_id: str | None) -> None:
        if point == "sent":
            raise RelayCrash(point)

    schedules = {Channel.BACKOFFICE: BACKOFFICE_SCHEDULE.scaled(0.001)}
    with serve_app(intake_app(engine, clock)) as base, SmtpSink() as sink:
        sender = BackofficeSender(base + "/intake")
        on_dead = journal_dead_letter(journal_outbox)

        def terminal_relay(**kw: Any) -> Relay:
            config = RelayConfig(lease_s=LEASE_S, schedules=schedules)
            return Relay(journal.engine, journal_outbox, {Channel.BACKOFFICE: sender}, clock=clock,
                         config=config, on_dead=on_dead, **kw)  # fmt: skip

        with pytest.raises(RelayCrash):
            terminal_relay(crash=crash).run_once()  # delivered to the intake, not marked
        clock.advance(LEASE_S + 1)
        assert terminal_relay().run_once().delivered == 1  # sent again; the intake deduplicates
        sender.close()
        with journal.engine.connect() as conn:
            assert conn.execute(select(journal_outbox.messages.c.state)).scalars().all() == [
                MessageState.DELIVERED
            ]
        smtp = SmtpSender(SmtpConfig("127.0.0.1", sink.port))
        back = Relay(engine, outbox, {Channel.EMAIL: smtp}, clock=clock, on_dead=back_office_dead_letter)
        assert back.run_once().delivered == 1
        assert back.run_once().claimed == 0
        smtp.close()
        [mail] = sink.messages
    journal.close()
    assert mail.rcpt_tos == ("bob@example.com",)
    assert "¥8.80" in mail.text and "did not complete and was cancelled" in mail.text
    assert "134567********1234" in mail.text
    assert FACT_AT_LOCAL not in mail.text  # the fact's own time, not the fixture's
    with engine.connect() as conn:
        assert len(conn.execute(select(received)).all()) == 1
