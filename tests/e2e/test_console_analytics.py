"""Analytics in the browser: failures by cause, terminal, rail and hour as SVG charts, and the
spike alert — a terminal that loses its line every evening at 19:00 is named, with the hour."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from consolekit import MID_A, TID_A1, TID_A2, TID_B1, add_console_user, console_login, screenshot
from sqlalchemy import insert

from tillroll.clock import Clock, FakeClock
from tillroll.console.users import Role
from tillroll.store.tables import journal_entries

# 2026-12-02 23:00 Beijing: the evening of the window's last day is over.
NOW = datetime(2026, 12, 2, 15, 0, 0)
EVENING_UTC_HOUR = 11  # 19:00 Beijing
SPIKE_DAYS = 5


@pytest.fixture
def console_clock() -> Clock:
    return FakeClock(NOW)


def entry(
    n: int, tid: str, at: datetime, *, state: str, code: str | None = None, rail: str = "card"
) -> dict[str, Any]:
    """A journal entry as a terminal's upload stores it."""
    return {
        "tid": tid,
        "entry_key": f"card:{n}",
        "rail": rail,
        "kind": "sale" if rail == "card" else "qr_pay",
        "state": state,
        "batch": "000001",
        "stan": f"{n % 999_999:06d}",
        "rrn": None,
        "order_no": None,
        "amount_minor": 1000 + n,
        "card_masked": "622202*********0123",
        "response_code": code,
        "receipt": "printed",
        "created_at": at,
        "updated_at": at,
        "received_at": at,
    }


def plant(store: Any, rows: list[dict[str, Any]]) -> None:
    with store.engine.begin() as conn:
        conn.execute(insert(journal_entries), rows)


def test_a_terminal_that_loses_its_line_every_evening_raises_a_spike_alert(
    live_console: Any, page: Any
) -> None:
    rows = []
    n = 0
    for day in range(14):
        base = NOW.replace(hour=0) - timedelta(days=day)
        for hour in (2, 5, 8, 13):  # a normal day at both terminals: approvals, one decline
            for tid in (TID_A1, TID_A2, TID_B1):
                n += 1
                rows.append(entry(n, tid, base + timedelta(hours=hour, minutes=7), state="approved"))
        n += 1
        rows.append(entry(n, TID_A1, base + timedelta(hours=3), state="declined", code="51"))
        if day < SPIKE_DAYS:  # the evening: A2's line times out four times
            for minute in (2, 9, 21, 40):
                n += 1
                rows.append(
                    entry(
                        n, TID_A2, base + timedelta(hours=EVENING_UTC_HOUR, minutes=minute), state="unknown"
                    )
                )
            for minute in (3, 5, 8, 13, 30, 44):  # the other merchant's terminal, worse: not ours to see
                n += 1
                rows.append(
                    entry(
                        n, TID_B1, base + timedelta(hours=6, minutes=minute), state="not_sent", rail="wallet"
                    )
                )
    plant(live_console.store, rows)
    password = add_console_user(live_console.store, "zhao.min", Role.MERCHANT_ADMIN, MID_A)
    console_login(page, live_console.url, "zhao.min", password)
    page.goto(f"{live_console.url}/console/analytics")
    (alert,) = page.locator("p.spike").all_inner_texts()
    assert (
        TID_A2 in alert
        and "19:00–20:00" in alert
        and f"{SPIKE_DAYS} 天" in alert
        and f"共 {4 * SPIKE_DAYS} 笔" in alert
    )
    assert page.inner_text("#window") == f"最近 14 天，共 {14 + 4 * SPIKE_DAYS} 笔失败"
    assert page.locator("#chart-hour rect.hour[data-hour='19']").get_attribute("fill") == "#b00020"
    assert page.locator("#chart-hour rect.hour[data-hour='11']").get_attribute("fill") == "#4a78b5"
    causes = page.inner_text("#chart-cause")
    assert "no answer (timeout)" in causes and "code 51" in causes
    terminals = page.locator("#chart-terminal rect.bar title").all_text_contents()
    assert sorted(terminals) == sorted([f"{TID_A1}: 14", f"{TID_A2}: {4 * SPIKE_DAYS}"])  # B1 is not ours
    screenshot(page, "analytics")
    page.click("#lang-switch")
    assert "Terminal 10000002 fails at 19:00–20:00" in page.inner_text("p.spike")


def test_failures_spread_evenly_raise_no_spike(live_console: Any, page: Any) -> None:
    rows = []
    for i in range(14 * 24):  # one timeout every hour of the window: a bad line, but no spike
        at = NOW - timedelta(hours=i, minutes=30)
        rows.append(entry(i, TID_A2, at, state="unknown"))
    plant(live_console.store, rows)
    password = add_console_user(live_console.store, "zhao.min", Role.MERCHANT_ADMIN, MID_A)
    console_login(page, live_console.url, "zhao.min", password)
    page.goto(f"{live_console.url}/console/analytics")
    assert page.locator("p.spike").count() == 0 and "没有突增" in page.inner_text("main")
    assert page.locator("#chart-hour rect.hour[fill='#b00020']").count() == 0
