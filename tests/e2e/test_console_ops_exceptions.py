"""Working the exception queue in headless Chromium, through the exception service:

- a charged_no_receipt for a real card sale the terminal "never saw" (an approval made by a real
  terminal against the live host, the exception as the reconciliation run records it) is
  reversed from its page: the host reverses the sale, the exception is resolved, the action and
  the audit row are written;
- two exceptions checked and written off in one bulk action, each with its outcome;
- another merchant's exception is not in the queue, and acting on its id by hand answers
  "not found" and changes nothing; a cashier sees the queue without any action.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cashier_kit import csrf_of
from consolekit import (
    EXPIRY,
    MID_A,
    MID_B,
    PAN,
    PIN,
    TID_A1,
    TID_B1,
    add_console_user,
    console_login,
    screenshot,
)
from sqlalchemy import insert, select

from tillroll.clock import SystemClock
from tillroll.console.users import Role
from tillroll.store.tables import audit_log, recon_actions, recon_exceptions, transactions


def _exception(store: Any, **values: Any) -> int:
    now = SystemClock().now()
    row = {
        "business_date": now.date().isoformat(),
        "state": "open",
        "evidence": json.dumps({"planned": []}),
        "created_at": now,
        "updated_at": now,
        "deadline": now + timedelta(days=1),
        **values,
    }
    with store.engine.begin() as conn:
        return int(
            conn.execute(insert(recon_exceptions).values(**row).returning(recon_exceptions.c.id)).scalar_one()
        )


def test_work_the_queue(
    live_console: Any, make_terminal: Callable[..., Any], new_browser_context: Callable[[], Any]
) -> None:
    store = live_console.store
    sale = make_terminal().sale(45_00, PAN, EXPIRY, PIN)
    assert sale.approved
    charged = _exception(
        store,
        **{"class": "charged_no_receipt"},
        key=f"card:rrn:{sale.rrn}",
        mid=MID_A,
        tid=TID_A1,
        rail="card",
        rrn=sale.rrn,
        batch=sale.batch,
        stan=sale.trace,
        amount_minor=45_00,
        evidence=json.dumps({"terminal_saw_approval": False, "planned": ["reverse"]}),
        diagnosis=json.dumps({"zh": "终端未收到批准", "en": "the terminal never saw the approval"}),
    )
    odd = [
        _exception(
            store,
            **{"class": "amount_mismatch"},
            key=f"card:rrn:00000000000{i}",
            mid=MID_A,
            tid=TID_A1,
            rail="card",
            amount_minor=1_00 * i,
        )
        for i in (1, 2)
    ]
    theirs = _exception(
        store, **{"class": "duplicate"}, key="card:rrn:999999999999", mid=MID_B, tid=TID_B1, rail="card"
    )

    pw = add_console_user(store, "super-a", Role.SUPERVISOR, MID_A)
    page = new_browser_context().new_page()
    console_login(page, live_console.url, "super-a", pw)
    page.goto(f"{live_console.url}/console/exceptions")
    for i in (charged, *odd):
        assert page.locator(f"#x-{i}").count() == 1
    assert page.locator(f"#x-{theirs}").count() == 0  # another merchant's: not in the queue
    screenshot(page, "exceptions-queue")

    # bulk: the two mismatches written off, each with its outcome
    for i in odd:
        page.check(f"#pick-{i}")
    page.select_option("#bulk-action", "write_off")
    page.fill("#bulk-note", "checked with the bank statement")
    with page.expect_navigation():
        page.click("#bulk-submit")
    outcomes = {
        r.get_attribute("data-id"): r.get_attribute("data-outcome")
        for r in page.locator("#exc-results tr[data-id]").all()
    }
    assert outcomes == {str(i): "done" for i in odd}, outcomes
    for i in odd:
        assert page.locator(f"#x-{i}").count() == 0  # no longer active
    screenshot(page, "exceptions-bulk-done")

    # one by one: the charge the terminal never saw is reversed from its page
    page.goto(f"{live_console.url}/console/exceptions/{charged}")
    assert "never saw" in page.inner_text("body") or "终端未收到批准" in page.inner_text("body")
    with page.expect_navigation():
        page.click("#act-reverse")
    assert page.get_attribute("#exc-results tr", "data-outcome") == "done", page.inner_text("#exc-results")
    assert page.get_attribute("#exc-state", "data-state") == "resolved"
    assert page.locator("#exc-history tr[data-action=reverse][data-outcome=done]").count() == 1
    screenshot(page, "exception-reversed")

    # another merchant's id, posted by hand: not found, nothing changes
    answer = page.request.post(
        f"{live_console.url}/console/exceptions/act",
        form={"csrf_token": csrf_of(page), "action": "resolve", "ids": str(theirs)},
    )
    assert answer.status == 200 and ("not yours" in answer.text() or "无权查看" in answer.text())

    with store.engine.connect() as conn:
        states = dict(conn.execute(select(recon_exceptions.c.id, recon_exceptions.c.state)).all())
        reversed_sale = conn.execute(
            select(transactions.c.status).where(transactions.c.rrn == sale.rrn)
        ).scalar()
        acted = conn.execute(
            select(recon_actions.c.exception_id, recon_actions.c.action, recon_actions.c.actor)
        ).all()
        audited = [r.target for r in conn.execute(select(audit_log.c.target))]
    assert states == {charged: "resolved", odd[0]: "written_off", odd[1]: "written_off", theirs: "open"}
    assert reversed_sale == "reversed"
    assert {
        (charged, "reverse", "super-a"),
        (odd[0], "write_off", "super-a"),
        (odd[1], "write_off", "super-a"),
    } <= set(tuple(a) for a in acted)
    assert theirs not in {a[0] for a in acted}
    assert any(str(charged) in t for t in audited)

    # a cashier may look, not act
    cpw = add_console_user(store, "cashier-a", Role.CASHIER, MID_A)
    cashier = new_browser_context().new_page()
    console_login(cashier, live_console.url, "cashier-a", cpw)
    cashier.goto(f"{live_console.url}/console/exceptions?state=resolved")
    assert cashier.locator(f"#x-{charged}").count() == 1 and cashier.locator("input.pick").count() == 0
    assert cashier.locator("#exc-read-only").count() == 1
    denied = cashier.request.post(
        f"{live_console.url}/console/exceptions/act",
        form={"csrf_token": csrf_of(cashier), "action": "resolve", "ids": str(charged)},
    )
    assert denied.status == 403
