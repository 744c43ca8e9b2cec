"""The console's log-in in a real browser against the real web app: sessions, lock-out, CSRF,
the language switch, log-out — and the audit rows they leave."""

from __future__ import annotations

from typing import Any

import httpx
from consolekit import MID_A, add_console_user, console_login, screenshot
from sqlalchemy import func, select

from tillroll.console.users import Role
from tillroll.store.tables import audit_log, console_sessions


def audit_actions(live: Any) -> list[tuple[str, str]]:
    with live.store.engine.connect() as conn:
        return [(r.actor, r.action) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))]


def test_log_in_switch_language_and_log_out(live_console: Any, page: Any) -> None:
    password = add_console_user(live_console.store, "wang.fang", Role.CASHIER, MID_A)
    page.goto(f"{live_console.url}/console/today")
    assert page.url.startswith(f"{live_console.url}/console/login?next=/console/today")
    screenshot(page, "login")
    console_login(page, live_console.url, "wang.fang", password)
    assert page.url == f"{live_console.url}/console/today"
    assert "今日概况" in page.inner_text("h1")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["tr_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    with live_console.store.engine.connect() as conn:  # only the token's SHA-256 is kept
        stored = conn.execute(select(console_sessions.c.token_hash)).scalars().all()
    assert len(stored) == 1 and session["value"] not in stored[0]
    page.click("#lang-switch")
    assert page.inner_text("h1").startswith("Today") and page.url.endswith("/console/today")
    page.click("#lang-switch")
    assert "今日概况" in page.inner_text("h1")
    with page.expect_navigation():
        page.click("#logout")
    assert page.url.endswith("/console/login")
    page.goto(f"{live_console.url}/console/today")  # the old session is gone from the store
    assert "/console/login" in page.url
    with live_console.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(console_sessions)).scalar() == 0
    assert [a for _, a in audit_actions(live_console)] == ["user.add", "user.login", "user.logout"]


def test_five_failures_in_a_row_lock_the_account_even_for_the_right_password(
    live_console: Any, page: Any
) -> None:
    password = add_console_user(live_console.store, "li.lei", Role.SUPERVISOR, MID_A)
    for attempt in range(1, 6):
        page.goto(f"{live_console.url}/console/login")
        page.fill("#username", "li.lei")
        page.fill("#password", f"wrong-{attempt}")
        with page.expect_navigation():
            page.click("#login-submit")
        error = page.inner_text("#login-error")
        if attempt < 5:
            assert "用户名或密码不正确" in error
        else:
            assert "账户已锁定" in error and "15 分钟" in error
    screenshot(page, "login-locked")
    console_login(page, live_console.url, "li.lei", password)  # right password, still locked
    assert "/console/login" in page.url and "账户已锁定" in page.inner_text("#login-error")
    page.click("#lang-switch")  # in English, said as plainly
    console_login(page, live_console.url, "li.lei", password)
    assert "locked after 5 failed log-ins in a row" in page.inner_text("#login-error")
    assert ("li.lei", "user.lockout") in audit_actions(live_console)


def test_a_post_without_the_sessions_csrf_token_is_refused(live_console: Any, page: Any) -> None:
    password = add_console_user(live_console.store, "zhao.min", Role.MERCHANT_ADMIN, MID_A)
    console_login(page, live_console.url, "zhao.min", password)
    # A form posted from the page with its token removed (what a forged cross-site form looks like
    # to the server: the session cookie, no token) is refused and the session stays.
    page.evaluate("document.querySelector('header form input[name=csrf_token]').value = 'forged'")
    page.click("#logout")
    page.wait_for_selector("#problem")
    assert "请求已失效" in page.inner_text("#problem")
    screenshot(page, "csrf-refused")
    page.goto(f"{live_console.url}/console/today")
    assert page.url.endswith("/console/today")  # still logged in: the forged log-out did nothing
    # And without a browser: the cookie alone, no token, no header.
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}["tr_session"]
    answer = httpx.post(f"{live_console.url}/console/logout", cookies={"tr_session": cookie}, timeout=5)
    assert answer.status_code == 403
    answer = httpx.post(
        f"{live_console.url}/console/logout",
        cookies={"tr_session": cookie},
        headers={"X-CSRF-Token": "x" * 43},
        timeout=5,
    )
    assert answer.status_code == 403
    assert "user.logout" not in [a for _, a in audit_actions(live_console)]


def test_console_pages_carry_a_csp_that_allows_only_static_scripts(live_console: Any) -> None:
    page = httpx.get(f"{live_console.url}/console/login", timeout=5)
    csp = page.headers["content-security-policy"]
    assert (
        f"script-src {live_console.url}/static/;" in csp
        and "'unsafe-inline'" not in csp.split("style-src")[0]
    )
    receipt = httpx.get(f"{live_console.url}/r/nothing", timeout=5)  # the e-receipt pages keep theirs
    assert "script-src" not in receipt.headers["content-security-policy"]
    assert "default-src 'none'" in receipt.headers["content-security-policy"]
    js = httpx.get(f"{live_console.url}/static/htmx.min.js", timeout=5)
    assert js.status_code == 200 and "htmx" in js.text[:2000]
