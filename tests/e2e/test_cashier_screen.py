"""The cashier screen in headless Chromium against a live stack: the acquirer host (TCP), the
wallet provider (HTTP), an ESC/POS printer emulator and the terminal engine running inside the
console's web process.

- a card sale with an electronic signature drawn with the mouse on the pad: the merchant copy
  prints with the signature as a raster image (GS v 0), the PNG is stored with the transaction
  and its audit row, and the customer's e-receipt (HTML and PDF) carries it;
- a QR payment confirmed late by the customer shows **in doubt** (处理中) while the wallet is
  queried, then done;
- a refund above the merchant's limit is not sent for a cashier: it waits for a supervisor, a
  cashier's approval is refused (403), the supervisor's approval sends it through the engine.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pypdf
from cashier_kit import attached_terminal, csrf_of, draw_signature, png_size, raster_images
from consolekit import EXPIRY, MID_A, PAN, PIN, TID_A1, TMK, add_console_user, console_login, screenshot
from sqlalchemy import select

from tillroll.console.users import Role
from tillroll.crypto.backoffice import backoffice_key, day_number, make_token
from tillroll.sim.fault_proxy import Fault
from tillroll.store.tables import audit_log, e_receipts, refund_requests, signatures, transactions
from tillroll.wallet.admin import add_user, issue_code

WAIT_MS = 20_000
WAIT_S = 20.0


def wait_for_e_receipt(store: Any, tid: str, reference: str) -> datetime:
    """The e-receipt's approval instant once the engine's relay has delivered it (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with store.engine.connect() as conn:
            at = conn.execute(
                select(e_receipts.c.at_utc).where(
                    e_receipts.c.tid == tid, e_receipts.c.reference == reference
                )
            ).scalar()
        if at is not None:
            return at  # type: ignore[no-any-return]
        threading.Event().wait(0.05)
    raise AssertionError(f"no e-receipt {tid} {reference} within {WAIT_S} s")


def test_signed_sale_and_qr_payment(
    live_console: Any, live_host: Any, live_wallet: Any, tmp_path: Path, page: Any
) -> None:
    password = add_console_user(live_console.store, "cashier1", Role.CASHIER, MID_A)
    with attached_terminal(live_console, live_host, live_wallet, tmp_path) as term:
        console_login(page, live_console.url, "cashier1", password)
        page.goto(f"{live_console.url}/console/cashier")
        page.fill("#sale-amount", "88.00")
        page.fill("#sale-pan", PAN)
        page.fill("#sale-expiry", EXPIRY)
        page.fill("#sale-pin", PIN)
        assert page.is_checked("#sale-signature")
        page.click("#sale-go")
        page.wait_for_selector("#current .job[data-state=succeeded] canvas.sigpad", timeout=WAIT_MS)
        docs = term.printer.documents()
        assert len(docs) == 1 and "CARDHOLDER COPY" in docs[0]  # the merchant copy waits for the signature
        draw_signature(page, "#current canvas.sigpad")
        screenshot(page, "cashier-signature")
        page.click("#current button.sig-ok")
        page.wait_for_selector("#current .job-signed", timeout=WAIT_MS)
        docs = term.printer.documents()
        assert len(docs) == 2 and "MERCHANT COPY" in docs[1]
        images = raster_images(term.printer.received())
        assert len(images) == 1 and images[0][0] > 0 and images[0][1] > 0, images
        assert "merchant copy printed" in page.inner_text("#current")
        screenshot(page, "cashier-signed")

        with live_console.store.engine.connect() as conn:
            sig = conn.execute(select(signatures)).mappings().one()
            sale = conn.execute(select(transactions).where(transactions.c.kind == "sale")).mappings().one()
            audit = [r.action for r in conn.execute(select(audit_log.c.action))]
        assert sig["tid"] == TID_A1 and sig["reference"] == f"{sale['batch']}.{sale['stan']}"
        assert png_size(bytes(sig["png"])) == (480, 160) and "signature.stored" in audit

        # the signature is attached to the e-receipt the customer opens (HTML and PDF)
        reference = sig["reference"]
        at_utc = wait_for_e_receipt(live_console.store, TID_A1, reference)
        token = make_token(backoffice_key(TMK), TID_A1, reference, day_number(at_utc))
        html = httpx.get(f"{live_console.url}/r/{token}", timeout=5).text
        assert 'id="signature"' in html and f"/r/{token}/signature.png" in html
        image = httpx.get(f"{live_console.url}/r/{token}/signature.png", timeout=5)
        assert image.status_code == 200 and image.content == bytes(sig["png"])
        pdf = pypdf.PdfReader(io.BytesIO(httpx.get(f"{live_console.url}/r/{token}.pdf", timeout=5).content))
        assert len(pdf.pages[0].images) == 1

        add_user(live_wallet.engine, "alice", 100_00, behaviour="confirm:1.5")
        page.fill("#qr-amount", "12.50")
        page.fill("#qr-code", issue_code(live_wallet.engine, "alice"))
        page.click("#qr-go")
        page.wait_for_selector("#current .job[data-state=in_doubt]", timeout=WAIT_MS)
        assert "处理中" in page.inner_text("#current .job-state")
        screenshot(page, "cashier-in-doubt")
        page.wait_for_selector("#current .job[data-state=succeeded]", timeout=WAIT_MS)
        assert "QR PAY" in term.printer.documents()[-1]
        screenshot(page, "cashier-qr-done")

        # in English; a reprint of the signed sale carries the signature again; then its void
        with page.expect_navigation():
            page.click("#lang-switch")
        assert "Cashier screen" in page.inner_text("h1") and page.is_visible("text=Card sale")
        page.fill("#reprint-trace", sale["stan"])
        page.click("#reprint-go")
        page.wait_for_selector("#current .job[data-op=reprint][data-state=succeeded]", timeout=WAIT_MS)
        assert len(raster_images(term.printer.received())) == 2
        page.fill("#void-trace", sale["stan"])
        page.click("#void-go")
        page.wait_for_selector("#current .job[data-op=void][data-state=succeeded]", timeout=WAIT_MS)
        assert page.input_value("#void-trace") == ""  # the form is emptied once sent
        screenshot(page, "cashier-void-en")
        with live_console.store.engine.connect() as conn:
            status = conn.execute(
                select(transactions.c.status).where(transactions.c.id == sale["id"])
            ).scalar()
        assert status == "voided"


def test_refund_above_the_limit_waits_for_a_supervisor(
    live_console: Any,
    live_host: Any,
    live_wallet: Any,
    tmp_path: Path,
    new_browser_context: Callable[[], Any],
) -> None:
    cashier_pw = add_console_user(live_console.store, "cashier2", Role.CASHIER, MID_A)
    super_pw = add_console_user(live_console.store, "super1", Role.SUPERVISOR, MID_A)
    with attached_terminal(live_console, live_host, live_wallet, tmp_path, refund_limit_minor=100_00) as term:
        sale = term.engine.wait(
            term.engine.submit("sale", amount_minor=300_00, pan=PAN, expiry=EXPIRY, pin=PIN).id, 20.0
        )
        assert sale is not None and sale.state.value == "succeeded" and sale.trace

        cashier = new_browser_context().new_page()
        console_login(cashier, live_console.url, "cashier2", cashier_pw)
        cashier.goto(f"{live_console.url}/console/cashier")
        cashier.fill("#refund-amount", "12.345")  # not an amount: said on the screen, nothing sent
        cashier.fill("#refund-trace", sale.trace)
        cashier.click("#refund-go")
        cashier.wait_for_selector("#cash-note", timeout=WAIT_MS)
        assert "12.50" in cashier.inner_text("#cash-note")
        cashier.fill("#refund-amount", "250.00")
        cashier.fill("#refund-trace", sale.trace)
        cashier.click("#refund-go")
        cashier.wait_for_selector("#cash-note:has-text('250.00')", timeout=WAIT_MS)
        assert "supervisor" in cashier.inner_text("#cash-note") or "主管" in cashier.inner_text("#cash-note")
        with live_console.store.engine.connect() as conn:
            req = conn.execute(select(refund_requests)).mappings().one()
        assert req["state"] == "awaiting_approval" and req["amount_minor"] == 250_00
        assert req["original_ref"] == f"{sale.batch}.{sale.trace}"
        screenshot(cashier, "cashier-refund-waits")

        cashier.goto(f"{live_console.url}/console/refunds")
        assert cashier.locator(f"#approve-{req['id']}").count() == 0  # no button for a cashier
        answer = cashier.request.post(
            f"{live_console.url}/console/refunds/{req['id']}/approve", form={"csrf_token": csrf_of(cashier)}
        )
        assert answer.status == 403  # and not by hand either

        boss = new_browser_context().new_page()
        console_login(boss, live_console.url, "super1", super_pw)
        boss.goto(f"{live_console.url}/console/refunds")
        with boss.expect_navigation():
            boss.click(f"#approve-{req['id']}")
        assert boss.get_attribute(f"#ref-{req['id']}", "data-state") == "done"
        screenshot(boss, "refunds-approved")
        with live_console.store.engine.connect() as conn:
            req = conn.execute(select(refund_requests)).mappings().one()
            refund = (
                conn.execute(select(transactions).where(transactions.c.kind == "refund")).mappings().one()
            )
            actions = [r.action for r in conn.execute(select(audit_log.c.action))]
        assert (
            req["decided_by"] == "super1"
            and refund["amount_minor"] == 250_00
            and refund["status"] == "approved"
        )
        assert {"refund.requested", "refund.approved", "refund.done"} <= set(actions)

        # four eyes: the supervisor's own request above the limit waits for someone else
        boss.goto(f"{live_console.url}/console/refunds")
        other = term.engine.wait(
            term.engine.submit("sale", amount_minor=200_00, pan=PAN, expiry=EXPIRY, pin=PIN).id, 20.0
        )
        assert other is not None and other.state.value == "succeeded"
        boss.fill("#ref-original", f"{other.batch}.{other.trace}")
        boss.fill("#ref-amount", "150.00")
        boss.select_option("#ref-rail", "card")
        with boss.expect_navigation():
            boss.click("#ref-submit")
        with live_console.store.engine.connect() as conn:
            own = (
                conn.execute(select(refund_requests).where(refund_requests.c.requested_by == "super1"))
                .mappings()
                .one()
            )
        assert own["state"] == "awaiting_approval"
        with boss.expect_navigation():
            boss.click(f"#approve-{own['id']}")
        assert boss.get_attribute(f"#ref-{own['id']}", "data-state") == "awaiting_approval"
        assert "yourself" in boss.inner_text("#ref-note") or "自己" in boss.inner_text("#ref-note")
        too_much = boss.request.post(
            f"{live_console.url}/console/refunds",
            form={"csrf_token": csrf_of(boss), "tid": TID_A1, "rail": "card",
                  "original_ref": f"{sale.batch}.{sale.trace}", "amount": "60.00"},
        )  # fmt: skip
        assert too_much.status == 400 and "left to refund" in too_much.text()  # 300 sold, 250 refunded
        assert httpx.get(f"{live_console.url}/healthz", timeout=5).status_code == 200


def test_card_sale_in_doubt_until_its_reversal(
    live_console: Any, live_host: Any, live_wallet: Any, tmp_path: Path, page: Any
) -> None:
    password = add_console_user(live_console.store, "cashier3", Role.CASHIER, MID_A)
    with attached_terminal(live_console, live_host, live_wallet, tmp_path, faulty_line=True) as term:
        assert term.proxy is not None
        first = term.engine.wait(
            term.engine.submit("sale", amount_minor=10_00, pan=PAN, expiry=EXPIRY, pin=PIN).id, 20.0
        )
        assert first is not None and first.state.value == "succeeded"  # signed in, line fine
        term.proxy.inject(Fault.DROP_RESPONSE, count=1000)  # the sale's answer and its reversals lost
        console_login(page, live_console.url, "cashier3", password)
        page.goto(f"{live_console.url}/console/cashier")
        page.fill("#sale-amount", "66.00")
        page.fill("#sale-pan", PAN)
        page.fill("#sale-expiry", EXPIRY)
        page.fill("#sale-pin", PIN)
        page.uncheck("#sale-signature")
        page.click("#sale-go")
        page.wait_for_selector("#current .job[data-state=in_doubt]", timeout=WAIT_MS)
        # the engine gave up for now: a reversal is pending; the screen stays in doubt, no way out by hand
        page.wait_for_selector(
            "#current .job[data-state=in_doubt] .job-text:has-text('reversal')", timeout=WAIT_MS
        )
        assert page.get_attribute("#current .job", "data-state") == "in_doubt"
        assert page.locator("#current button").count() == 0
        screenshot(page, "cashier-card-in-doubt")
        term.proxy.clear()  # the line answers again: the engine's own reversal ends it
        page.wait_for_selector("#current .job[data-state=not_done]", timeout=WAIT_MS)
        assert "reversed" in page.inner_text("#current .job-text")
        screenshot(page, "cashier-card-reversed")
        with live_console.store.engine.connect() as conn:
            sales = sorted(
                (r.amount_minor, r.status)
                for r in conn.execute(select(transactions).where(transactions.c.kind == "sale"))
            )
        assert sales in ([(10_00, "approved"), (66_00, "reversed")], [(10_00, "approved")]), sales
