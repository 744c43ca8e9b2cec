"""Shared parts of the reconciliation tests (actions, diagnosis): the evening they run at,
journal copies as the terminal's upload stores them, one relay round to an SMTP sink."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hostwire import TID
from sqlalchemy import insert

from tillroll.clock import FakeClock
from tillroll.host.store import HostStore
from tillroll.notify.deadletter import back_office_dead_letter
from tillroll.notify.outbox import Channel
from tillroll.notify.relay import Relay, RelayConfig, Schedule
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import journal_entries, outbox

T0 = datetime(2026, 12, 2, 11, 2, 0)  # 19:02 in Shanghai


def journal_entry(store: HostStore, **values: Any) -> None:
    """A journal copy row the way the terminal's upload stores it."""
    row = {
        "tid": TID,
        "rail": "card",
        "kind": "sale",
        "batch": "000001",
        "stan": "000001",
        "card_masked": "622202*********0123",
        "receipt": "none",
        "created_at": T0,
        "updated_at": T0,
        "received_at": T0,
        **values,
    }
    with store.engine.begin() as conn:
        conn.execute(insert(journal_entries).values(**row))


def deliver(store: HostStore, sink: SmtpSink, clock: FakeClock) -> None:
    """One relay round to the SMTP sink (what `tillroll notify relay` does)."""
    sender = SmtpSender(SmtpConfig("127.0.0.1", sink.port, timeout_s=5.0))
    config = RelayConfig(lease_s=30.0, schedules={Channel.EMAIL: Schedule(retry_delays_s=(0.0,))})
    relay = Relay(
        store.engine,
        outbox,
        {Channel.EMAIL: sender},
        clock=clock,
        config=config,
        on_dead=back_office_dead_letter,
    )
    try:
        relay.run_once()
    finally:
        sender.close()
