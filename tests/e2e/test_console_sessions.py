"""Sessions end when idle too long and in any case after their absolute lifetime (the console's
clock is a FakeClock here, so time moves only when the test says)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from consolekit import MID_A, add_console_user
from sqlalchemy import func, select

from tillroll.clock import Clock, FakeClock
from tillroll.console.config import ConsoleConfig
from tillroll.console.users import Role
from tillroll.store.tables import console_sessions
from tillroll.web import WebConfig


@pytest.fixture
def console_clock() -> Clock:
    return FakeClock()


@pytest.fixture
def console_config() -> WebConfig:
    return WebConfig(port=0, console=ConsoleConfig(idle_minutes=30, absolute_hours=2))


def log_in(live: Any, client: httpx.Client, name: str, password: str) -> None:
    form = client.get(f"{live.url}/console/login")
    token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    answer = client.post(
        f"{live.url}/console/login", data={"username": name, "password": password, "csrf_token": token}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/today"


def test_an_idle_session_ends_and_a_used_one_ends_at_its_absolute_lifetime(live_console: Any) -> None:
    clock = live_console.clock
    password = add_console_user(live_console.store, "wang.fang", Role.CASHIER, MID_A)
    with httpx.Client(timeout=5) as client:
        log_in(live_console, client, "wang.fang", password)
        assert client.get(f"{live_console.url}/console/today").status_code == 200
        clock.advance(29 * 60)
        assert client.get(f"{live_console.url}/console/today").status_code == 200  # used: idle clock restarts
        clock.advance(29 * 60)
        assert client.get(f"{live_console.url}/console/today").status_code == 200
        clock.advance(31 * 60)  # idle past 30 minutes
        answer = client.get(f"{live_console.url}/console/today")
        assert answer.status_code == 303 and answer.headers["location"].endswith("&expired=1")
        with live_console.store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(console_sessions)).scalar() == 0
        page = client.get(f"{live_console.url}{answer.headers['location']}")
        assert "会话已结束" in page.text

        log_in(live_console, client, "wang.fang", password)
        for _ in range(5):  # busy all along: 5 × 25 min > 2 h
            clock.advance(25 * 60)
            last = client.get(f"{live_console.url}/console/today")
        assert last.status_code == 303  # the absolute lifetime ended it
        # An htmx request is told where to go instead of getting a redirect to follow silently.
        htmx = client.get(f"{live_console.url}/console/today", headers={"HX-Request": "true"})
        assert htmx.status_code == 401 and htmx.headers["HX-Redirect"].startswith("/console/login")


def test_the_log_in_form_refuses_a_post_from_elsewhere_and_next_never_leaves_the_site(
    live_console: Any,
) -> None:
    password = add_console_user(live_console.store, "wang.fang", Role.CASHIER, MID_A)
    with httpx.Client(timeout=5) as client:
        # No log-in CSRF cookie/token pair: a form on another site cannot log you in as someone.
        answer = client.post(
            f"{live_console.url}/console/login", data={"username": "wang.fang", "password": password}
        )
        assert answer.status_code == 403
        form = client.get(f"{live_console.url}/console/login?next=//evil.example/x")
        token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        answer = client.post(
            f"{live_console.url}/console/login",
            data={
                "username": "wang.fang",
                "password": password,
                "csrf_token": token,
                "next": "https://evil.example/",
            },
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/console/today"
