"""The console's read pages in a real browser, on a day made by real terminals against the real
host: the terminals' journals reach the console through their own upload, e-receipts through
their facts, settlement through the host. Each page is rendered with that data (and kept as a
screenshot); a cashier of one merchant never sees the other merchant's payments, not even by
typing their address."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pypdf
import pytest
from consolekit import (
    EXPIRY,
    MID_A,
    MID_B,
    PAN,
    PIN,
    TID_A1,
    TID_A2,
    TID_B1,
    WALLET_KEY,
    WALLET_MCH,
    add_console_user,
    console_login,
    screenshot,
)
from sqlalchemy import insert, select

from tillroll.console.users import Role
from tillroll.money import format_yuan
from tillroll.notify.outbox import Channel
from tillroll.notify.relay import Relay
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import audit_log, journal_entries, recon_exceptions, terminal_status
from tillroll.store.tables import outbox as outbox_tables
from tillroll.terminal import Outcome, Terminal

CUSTOMER = "li.lei@example.com"
SALES_A = (1250, 3_080, 99_900)  # fen, at TID_A1
SALE_B = 4_200  # at TID_B1 (the other merchant)
DECLINED = 2_000_000  # more than the card holds: declined (51)


@dataclass
class Day:
    rrns_a: list[str]
    rrn_b: str
    traces_a: list[str]


@pytest.fixture
def day(live_console: Any, make_terminal: Callable[..., Terminal]) -> Day:
    a1 = make_terminal(TID_A1, MID_A)
    assert a1.sign_in().outcome is Outcome.DONE
    results = [
        a1.sale(amount, PAN, EXPIRY, PIN, notify=CUSTOMER if i == 0 else None)
        for i, amount in enumerate(SALES_A)
    ]
    assert all(r.approved for r in results)
    assert not a1.sale(DECLINED, PAN, EXPIRY, PIN).approved
    a1.send_facts()  # the first sale's e-receipt, to the back office
    assert a1.settle().outcome is Outcome.SETTLED
    b1 = make_terminal(TID_B1, MID_B)
    assert b1.sign_in().outcome is Outcome.DONE
    sale_b = b1.sale(SALE_B, PAN, EXPIRY, PIN)
    assert sale_b.approved
    for term in (a1, b1):  # whatever the after-sale uploads left (they are bounded and may lag)
        assert term.upload_journal() is not None
    with live_console.store.engine.connect() as conn:
        uploaded = conn.execute(select(journal_entries.c.tid, journal_entries.c.rrn)).all()
        assert {r.tid for r in uploaded} == {TID_A1, TID_B1}
        assert conn.execute(select(terminal_status.c.tid)).scalars().all()
    return Day([r.rrn for r in results if r.rrn], str(sale_b.rrn), [f"{r.batch}.{r.trace}" for r in results])


def plant_exceptions(store: Any, day: Day) -> None:
    """Exceptions as the reconciliation run upserts them: ours open and resolved, the other's open."""
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        ("charged_no_receipt", f"card:rrn:{day.rrns_a[1]}", "open", MID_A, TID_A1),
        ("duplicate", f"card:rrn:{day.rrns_a[2]}", "resolved", MID_A, TID_A1),
        ("amount_mismatch", f"card:rrn:{day.rrn_b}", "open", MID_B, TID_B1),
    ]
    with store.engine.begin() as conn:
        conn.execute(
            insert(recon_exceptions),
            [
                {
                    "class": cls,
                    "key": key,
                    "business_date": now.date().isoformat(),
                    "state": state,
                    "mid": mid,
                    "tid": tid,
                    "rail": "card",
                    "evidence": "{}",
                    "created_at": now,
                    "updated_at": now,
                }
                for cls, key, state, mid, tid in rows
            ],
        )


def test_today_payments_and_a_payments_story_with_its_evidence_bundle(
    live_console: Any, day: Day, page: Any
) -> None:
    plant_exceptions(live_console.store, day)
    password = add_console_user(live_console.store, "wang.fang", Role.CASHIER, MID_A)
    console_login(page, live_console.url, "wang.fang", password)
    # today: three approved of four at A1 (B1 is the other merchant's)
    assert page.inner_text("#count") == "4"
    assert page.inner_text("#volume") == f"¥{format_yuan(sum(SALES_A))}"
    assert page.inner_text("#approval") == "75.0%"
    attention = page.inner_text("#attention")
    assert TID_A2 in attention and "从未上报" in attention and TID_B1 not in attention
    # one open exception of ours (the resolved one and the other merchant's are not counted)
    assert page.inner_text("#open-exceptions") == "1"
    assert page.locator("#exceptions tr").all_inner_texts() == ["已扣款无凭证\t1"]
    screenshot(page, "today")

    page.goto(f"{live_console.url}/console/payments?last4=0123")
    rows = page.locator("#payments tr.payment")
    assert rows.count() == 4  # A1's four card sales; not B1's
    text = page.inner_text("#payments")
    assert day.rrn_b not in text and all(rrn in text for rrn in day.rrns_a)
    assert "622202*********0123" in text and PAN not in page.content()
    screenshot(page, "payments")
    page.goto(f"{live_console.url}/console/payments?amount=30.80")
    assert page.locator("#payments tr.payment").count() == 1
    page.goto(f"{live_console.url}/console/payments?trace={day.traces_a[2]}")
    assert page.locator("#payments tr.payment").count() == 1 and format_yuan(SALES_A[2]) in page.inner_text(
        "#payments"
    )
    page.goto(f"{live_console.url}/console/payments?amount=12.5x")
    assert "12.50" in page.inner_text("#search-error")  # says how to write it

    page.goto(f"{live_console.url}/console/payments?rrn={day.rrns_a[0]}")
    with page.expect_navigation():
        page.click("#payments tr.payment a")
    assert page.url.endswith(f"/console/payments/{TID_A1}/{day.rrns_a[0]}")
    timeline = page.inner_text("#timeline")
    assert "journal" in timeline and "host" in timeline
    assert page.inner_text("#diagnosis").strip()
    screenshot(page, "payment")

    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    base = f"{live_console.url}/console/payments/{TID_A1}/{day.rrns_a[0]}"
    bundle = httpx.get(f"{base}/evidence.json", cookies=cookies, timeout=10)
    assert bundle.status_code == 200
    document = json.loads(bundle.text)
    assert document["exported_by"] == "wang.fang"
    assert document["story"]["identity"]["rrn"] == day.rrns_a[0]
    assert PAN not in bundle.text
    pdf = httpx.get(f"{base}/evidence.pdf", cookies=cookies, timeout=10)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    pdf_text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
    assert day.rrns_a[0] in pdf_text and "Payment evidence bundle" in pdf_text and PAN not in pdf_text


def test_a_cashier_never_sees_the_other_merchants_payments(
    live_console: Any, day: Day, new_browser_context: Any
) -> None:
    cashier = new_browser_context().new_page()
    console_login(
        cashier,
        live_console.url,
        "wang.fang",
        add_console_user(live_console.store, "wang.fang", Role.CASHIER, MID_A),
    )
    cashier.goto(f"{live_console.url}/console/payments?rrn={day.rrn_b}")
    assert cashier.inner_text("#found") == "找到 0 笔"
    for path in (
        f"/console/payments/{TID_B1}/{day.rrn_b}",
        f"/console/payments/{TID_B1}/{day.rrn_b}/evidence.json",
        f"/console/payments/{TID_A1}/{day.rrn_b}",  # the other merchant's RRN under one's own terminal
        f"/console/settlements/z/{TID_B1}",
    ):
        answer = cashier.goto(live_console.url + path)
        assert answer is not None and answer.status == 404, path
    cashier.goto(f"{live_console.url}/console/terminals")
    assert TID_B1 not in cashier.inner_text("#terminals")
    screenshot(cashier, "role-separation-cashier")
    operator = new_browser_context().new_page()
    console_login(
        operator, live_console.url, "ops", add_console_user(live_console.store, "ops", Role.OPERATOR, None)
    )
    operator.goto(f"{live_console.url}/console/payments?last4=0123")
    assert operator.locator("#payments tr.payment").count() == 5
    answer = operator.goto(f"{live_console.url}/console/payments/{TID_B1}/{day.rrn_b}")
    assert answer is not None and answer.status == 200


def test_terminals_settlements_and_the_z_report(live_console: Any, day: Day, page: Any) -> None:
    password = add_console_user(live_console.store, "zhao.min", Role.MERCHANT_ADMIN, MID_A)
    console_login(page, live_console.url, "zhao.min", password)
    page.goto(f"{live_console.url}/console/terminals")
    a1 = page.inner_text(f"#t-{TID_A1}")
    assert "是" in a1 and "000002" in a1  # signed in; the batch after the settled one
    assert "从未" in page.inner_text(f"#t-{TID_A2}")
    screenshot(page, "terminals")
    page.goto(f"{live_console.url}/console/settlements")
    batch = page.inner_text("#batches")
    total = format_yuan(sum(SALES_A))
    assert TID_A1 in batch and "✔" in batch and batch.count(total) == 2  # the terminal's and the host's
    assert total in page.inner_text("#report") and TID_B1 not in page.inner_text("#report")
    screenshot(page, "settlements")
    with page.expect_navigation():
        page.click(f"a.zlink:text('{TID_A1}')")
    sales = page.locator("tr.zline[data-line='z.card_sales']")
    assert f"3 · ¥{total}" in sales.inner_text() and "✔" in sales.inner_text()
    screenshot(page, "zreport")


def test_notifications_with_their_attempts_and_a_resend_by_hand(
    live_console: Any, day: Day, page: Any
) -> None:
    m = outbox_tables.messages
    with SmtpSink() as sink:
        sender = SmtpSender(SmtpConfig("127.0.0.1", sink.port, timeout_s=5.0))
        relay = Relay(
            live_console.store.engine, outbox_tables, {Channel.EMAIL: sender}, clock=live_console.clock
        )
        try:
            assert relay.run_once().delivered == 1  # the e-receipt to the customer
            password = add_console_user(live_console.store, "li.lei", Role.SUPERVISOR, MID_A)
            console_login(page, live_console.url, "li.lei", password)
            page.goto(f"{live_console.url}/console/notifications")
            row = page.locator("tr.message").first
            assert CUSTOMER in row.inner_text() and "delivered" in row.inner_text()
            assert "1." in row.locator(".attempt").first.inner_text()
            screenshot(page, "notifications")
            assert page.evaluate("typeof htmx") == "object"  # served from /static, allowed by the CSP
            # htmx posts it with the session's token in X-CSRF-Token (the layout's hx-headers)
            row.locator("button.resend").click()
            page.wait_for_selector("#resent")
            assert "pending" in page.locator("tr.message").first.inner_text()
            assert relay.run_once().delivered == 1
        finally:
            sender.close()
        assert [msg.rcpt_tos for msg in sink.messages] == [(CUSTOMER,), (CUSTOMER,)]
    page.reload()
    assert page.locator("tr.message").first.locator(".attempt").count() == 2
    with live_console.store.engine.connect() as conn:
        (resend,) = conn.execute(select(audit_log).where(audit_log.c.action == "notification.resend")).all()
        message_id = conn.execute(select(m.c.message_id)).scalar()
    assert (resend.actor, resend.mid, resend.target) == ("li.lei", MID_A, f"message:{message_id}")
    assert json.loads(resend.before)["state"] == "delivered"


def test_a_cashier_cannot_resend_and_another_merchants_staff_do_not_see_the_message(
    live_console: Any, day: Day, page: Any
) -> None:
    cashier = add_console_user(live_console.store, "wang.fang", Role.CASHIER, MID_A)
    console_login(page, live_console.url, "wang.fang", cashier)
    page.goto(f"{live_console.url}/console/notifications")
    assert page.locator("tr.message").count() == 1 and page.locator("button.resend").count() == 0
    csrf = page.locator("header form input[name=csrf_token]").get_attribute("value")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with live_console.store.engine.connect() as conn:
        pk = conn.execute(select(outbox_tables.messages.c.id)).scalar()
    answer = httpx.post(
        f"{live_console.url}/console/notifications/{pk}/resend",
        data={"csrf_token": csrf},
        cookies=cookies,
        timeout=5,
    )
    assert answer.status_code == 403
    other = add_console_user(live_console.store, "baker", Role.MERCHANT_ADMIN, MID_B)
    page.context.clear_cookies()
    console_login(page, live_console.url, "baker", other)
    page.goto(f"{live_console.url}/console/notifications")
    assert page.locator("tr.message").count() == 0


def test_a_wallet_payment_found_by_its_order_and_the_z_report_against_the_statement(
    live_console: Any,
    live_wallet: Any,
    wallet_settings: Any,
    make_terminal: Callable[..., Terminal],
    page: Any,
) -> None:
    from tillroll.recon.statement import fetch_statement, import_statement
    from tillroll.wallet.admin import add_user as add_wallet_user
    from tillroll.wallet.admin import issue_code

    add_wallet_user(live_wallet.engine, "alice", 100_00)
    term = make_terminal(TID_A2, MID_A, wallet=wallet_settings)
    paid = term.qr(1_999, issue_code(live_wallet.engine, "alice"))
    assert paid.approved and paid.order_no
    assert term.upload_journal() is not None
    password = add_console_user(live_console.store, "wang.fang", Role.CASHIER, MID_A)
    console_login(page, live_console.url, "wang.fang", password)
    page.goto(f"{live_console.url}/console/payments?order={paid.order_no}")
    (row,) = page.locator("#payments tr.payment").all()
    assert "扫码" in row.inner_text() and "19.99" in row.inner_text() and "success" in row.inner_text()
    with page.expect_navigation():
        row.locator("a").click()
    assert page.url.endswith(f"/console/payments/{TID_A2}/{paid.order_no}")
    assert paid.order_no in page.inner_text("#identity")
    # Before the statement is imported the Z report shows the wallet line not agreeing; after, it does.
    page.goto(f"{live_console.url}/console/settlements/z/{TID_A2}")
    line = page.locator("tr.zline[data-line='z.wallet_paid']")
    assert "1 · ¥19.99" in line.inner_text() and "✘" in line.inner_text()
    bill_date = page.inner_text("h1").rsplit("·", 1)[1].strip().replace("-", "")
    text = fetch_statement(live_wallet.base_url, mch_id=WALLET_MCH, key=WALLET_KEY, bill_date=bill_date)
    import_statement(
        live_console.store.engine, text, mch_id=WALLET_MCH, bill_date=bill_date, now=live_console.clock.now()
    )
    page.reload()
    line = page.locator("tr.zline[data-line='z.wallet_paid']")
    assert line.inner_text().count("1 · ¥19.99") == 2 and "✔" in line.inner_text()
