"""Customer self-service in headless Chromium, no log-in: a real card sale made by a real
terminal through the live host, its e-receipt delivered to the live back office; the customer
finds it by the card's last 4 digits, amount and day, sees it paid and opens the e-receipt;
details that match nothing reveal nothing and open a case for the merchant with a reference the
customer can look up; forms from elsewhere and floods are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consolekit import EXPIRY, PAN, PIN, screenshot
from sqlalchemy import select

from tillroll.clock import SystemClock, merchant_zone, to_merchant_local
from tillroll.console.selfservice import RateLimiter
from tillroll.store.tables import recon_exceptions


def test_customer_finds_the_payment_and_opens_a_case(
    live_console: Any, make_terminal: Callable[..., Any], page: Any
) -> None:
    term = make_terminal()
    sale = term.sale(23_45, PAN, EXPIRY, PIN)
    assert sale.approved
    delivered = term.send_facts(budget_s=5.0)
    assert delivered is not None
    today = to_merchant_local(SystemClock().now(), merchant_zone("Asia/Shanghai")).date().isoformat()

    page.goto(f"{live_console.url}/console/help")
    page.check("#claim-no_receipt")
    page.fill("#help-last4", PAN[-4:])
    page.fill("#help-amount", "23.45")
    page.fill("#help-day", today)
    screenshot(page, "selfservice-form")
    with page.expect_navigation():
        page.click("#help-submit")
    assert page.get_attribute("#help-truth", "data-truth") == "paid"
    assert PAN[:6] not in page.content()  # nothing the customer did not give
    screenshot(page, "selfservice-found")
    with page.expect_navigation():
        page.click("#help-receipt")
    assert "23.45" in page.inner_text("body") and "/r/" in page.url
    assert page.locator('a[href="/console/help"]').count() == 1  # the way back from any e-receipt

    # details that match nothing: the same answer for any wrong detail, then a case
    page.goto(f"{live_console.url}/console/help")
    page.fill("#help-last4", PAN[-4:])
    page.fill("#help-amount", "23.46")
    page.fill("#help-day", today)
    page.fill("#help-contact", "13800138000")
    with page.expect_navigation():
        page.click("#help-submit")
    assert page.locator("#help-not-found").count() == 1 and page.locator("#help-payment").count() == 0
    with page.expect_navigation():
        page.click("#case-submit")
    reference = page.inner_text("#help-reference").strip()
    assert reference.startswith("SS-") and len(reference) == 12
    screenshot(page, "selfservice-case")
    with live_console.store.engine.connect() as conn:
        case = (
            conn.execute(select(recon_exceptions).where(recon_exceptions.c.key == f"customer:{reference}"))
            .mappings()
            .one()
        )
    assert case["state"] == "open" and case["amount_minor"] == 23_46
    page.goto(f"{live_console.url}/console/help?ref={reference.lower()}")
    assert page.locator("#track-result").count() == 1 and (
        "待处理" in page.inner_text("#track-result") or "open" in page.inner_text("#track-result")
    )

    # a form not from our page is refused; a flood is slowed down
    forged = page.request.post(
        f"{live_console.url}/console/help",
        form={"token": "1.abc", "claim": "no_receipt", "amount": "23.45", "day": today, "last4": PAN[-4:]},
    )
    assert forged.status == 400
    live_console.ctx.extras["selfservice_limits"] = (RateLimiter(2, 100, 600.0), RateLimiter(1, 100, 600.0))
    statuses = []
    for _ in range(3):
        page.goto(f"{live_console.url}/console/help")
        token = page.get_attribute("input[name=token]", "value")
        answer = page.request.post(
            f"{live_console.url}/console/help",
            form={"token": token, "claim": "no_receipt", "amount": "23.45", "day": today, "last4": PAN[-4:]},
        )
        statuses.append(answer.status)
    assert statuses == [200, 200, 429]


def test_rate_limiter_window() -> None:
    limiter = RateLimiter(per_key=2, in_all=3, window_s=10.0, max_keys=2)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 1.0) and not limiter.allow("a", 2.0)
    assert limiter.allow("b", 2.0) and not limiter.allow("c", 3.0)  # three in all within the window
    assert limiter.allow("a", 10.5)  # the first one left the window
