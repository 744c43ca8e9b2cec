"""Reconciliation on a schedule, end to end on SQLite and PostgreSQL: a real host charges a sale
the terminal never saw (its journal copy says unknown); the scheduled run finds it and the
automatic action reverses it at the host; the nightly job reconciles yesterday once; inside
`tillroll web` (its lifespan) the schedule runs by itself."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from hostwire import PAN, TID, WireClient, host_store
from sqlalchemy import func, insert, select

from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.admin import card_balance
from tillroll.host.store import HostStore
from tillroll.recon.model import ActionKind, ActionOutcome
from tillroll.recon.scheduler import ReconScheduleConfig, ReconScheduler, ScheduleConfigError
from tillroll.store.tables import journal_entries, recon_exceptions, recon_runs
from tillroll.web.app import create_app
from tillroll.web.config import WebConfig
from tillroll.web.server import WebServer

T0 = datetime(2026, 12, 2, 11, 2, 0)  # 19:02 in Shanghai, 2026-12-02
WAIT_S = 30.0


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    with host_store(db_url) as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def unseen_charge(store: HostStore, clock: FakeClock) -> str:
    """A sale approved by the host whose answer the terminal never got (it reversed in vain:
    the line stayed down), its journal copy uploaded as unknown."""
    with HostServer(store, clock=clock, key_lifetime_s=3600) as host:
        client = WireClient(host.address)
        try:
            client.sign_in()
            sale = client.sale_message(1250)
            answer = client.send(sale)
            assert answer.code == "00"
        finally:
            client.close()
    with store.engine.begin() as conn:
        conn.execute(
            insert(journal_entries).values(
                tid=TID, entry_key="card:1", rail="card", kind="sale", state="unknown", batch="000001",
                stan=sale["11"], amount_minor=1250, card_masked="622202*********0123", receipt="none",
                note="line 1 timed out", created_at=T0, updated_at=T0, received_at=T0,
            )
        )  # fmt: skip
    assert card_balance(store, PAN) == 100_000 - 1250
    return str(answer.message["37"])


def test_the_scheduled_run_finds_and_reverses_it_and_the_night_runs_once(
    store: HostStore, clock: FakeClock, unseen_charge: str
) -> None:
    clock.advance(3600)  # 20:02: past the ageing window
    config = ReconScheduleConfig(enabled=True, nightly_at="02:30", today_every_s=3600)
    scheduler = ReconScheduler(store, clock, config, base_url="http://shop.example")
    # the first look of the day: yesterday (past 02:30) and today so far
    assert scheduler.due(clock.now()) == [datetime(2026, 12, 1).date(), datetime(2026, 12, 2).date()]

    report = scheduler.run_due()

    assert report.ran == ["2026-12-01", "2026-12-02"] and report.errors == []
    taken = {r.action: r for r in report.actions}
    assert taken[ActionKind.REVERSE].outcome is ActionOutcome.DONE
    # the key session (1 h) expired at 20:02, in business hours, with no new sign-in: an alert,
    # which cannot go out — the merchant has no notification address — and says so
    assert set(taken) == {ActionKind.REVERSE, ActionKind.ALERT}
    assert "no notification address" in taken[ActionKind.ALERT].detail_en
    assert card_balance(store, PAN) == 100_000
    with store.engine.connect() as conn:
        (exc,) = conn.execute(
            select(recon_exceptions).where(recon_exceptions.c["class"] == "charged_no_receipt")
        ).mappings()
    assert (exc["rrn"], exc["state"]) == (unseen_charge, "resolved")
    assert scheduler.due(clock.now()) == []  # today ran within the hour

    clock.advance(7 * 3600)  # 03:02 the next morning: past the nightly time
    assert scheduler.due(clock.now()) == [datetime(2026, 12, 2).date(), datetime(2026, 12, 3).date()]
    second = scheduler.run_due()
    assert second.ran == ["2026-12-02", "2026-12-03"] and second.actions == []  # resolved: not again
    assert scheduler.due(clock.now()) == []
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(recon_runs)).scalar_one() == 4


def test_inside_the_web_app_the_schedule_runs_by_itself(
    store: HostStore, clock: FakeClock, unseen_charge: str
) -> None:
    clock.advance(3600)
    config = WebConfig(recon=ReconScheduleConfig(enabled=True, today_every_s=3600, stop_timeout_s=10))
    app = create_app(config, store, clock=clock)
    with WebServer(app):
        scheduler = app.state.recon_scheduler
        (first, *_) = scheduler.wait_cycles(1, WAIT_S)
    assert first.ran == ["2026-12-01", "2026-12-02"]
    assert card_balance(store, PAN) == 100_000
    off = create_app(WebConfig(), store, clock=clock)
    with WebServer(off):
        assert not hasattr(off.state, "recon_scheduler")  # off unless asked


def test_schedule_settings_are_checked() -> None:
    with pytest.raises(ScheduleConfigError, match="HH:MM"):
        ReconScheduleConfig(nightly_at="2:30")
    with pytest.raises(ScheduleConfigError, match="today_every_s"):
        ReconScheduleConfig(today_every_s=5)
    assert ReconScheduleConfig(today_every_s=0).today_every_s == 0
    assert timedelta(seconds=ReconScheduleConfig().retry_every_s) == timedelta(hours=1)


def test_recon_run_takes_the_automatic_actions_and_act_works_the_queue(store: HostStore) -> None:
    """`tillroll recon run` runs now (the system clock): the charge is two hours old."""
    from typer.testing import CliRunner

    from tillroll.cli import app
    from tillroll.clock import SystemClock, merchant_zone, to_merchant_local

    at = SystemClock().now() - timedelta(hours=2)
    clock = FakeClock(at)
    with HostServer(store, clock=clock, key_lifetime_s=86_400) as host:
        client = WireClient(host.address)
        try:
            client.sign_in()
            sale = client.sale_message(990)
            assert client.send(sale).code == "00"
        finally:
            client.close()
    with store.engine.begin() as conn:
        conn.execute(
            insert(journal_entries).values(
                tid=TID, entry_key="card:1", rail="card", kind="sale", state="unknown", batch="000001",
                stan=sale["11"], amount_minor=990, card_masked="622202*********0123", receipt="none",
                created_at=at, updated_at=at, received_at=at,
            )
        )  # fmt: skip
    day = to_merchant_local(at, merchant_zone("Asia/Shanghai")).date().isoformat()
    runner = CliRunner()
    ran = runner.invoke(app, ["recon", "run", "--date", day, "--db", store.url])
    assert ran.exit_code == 0, ran.output
    assert "reverse: done — the host reversed the ¥9.90 sale" in ran.output
    assert card_balance(store, PAN) == 100_000
    listed = runner.invoke(app, ["recon", "exceptions", "--db", store.url])
    assert listed.exit_code == 0 and "charged_no_receipt resolved owner=-" in listed.output
    exc_id = listed.output.split()[0].lstrip("#")
    again = runner.invoke(
        app, ["recon", "act", exc_id, "--action", "reverse", "--actor", "wang", "--db", store.url]
    )
    assert again.exit_code == 1 and "already resolved" in again.output
    noted = runner.invoke(
        app,
        ["recon", "act", exc_id, "--action", "note", "--actor", "wang", "--note", "ok", "--db", store.url],
    )
    assert noted.exit_code == 0 and "note: done" in noted.output
    bad = runner.invoke(
        app, ["recon", "act", exc_id, "--action", "shrug", "--actor", "wang", "--db", store.url]
    )
    assert bad.exit_code == 2 and "not an action" in bad.output
