"""Self-service look-up against real data: card sales made by a real terminal through the real
host (their e-receipts delivered to the real back office), wallet orders as the journal upload
stores them; cases opened for the merchant with an audit row; nothing found from partial details.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from cashier_stack import EXPIRY, MID, PAN, PIN, TID, cashier_stack
from sqlalchemy import insert, select

from tillroll.clock import SystemClock, merchant_zone, to_merchant_local
from tillroll.console.selfservice_lookup import (
    Claim,
    Finding,
    Lookup,
    Query,
    SelfServiceInputError,
    Truth,
    find_case,
    lookup,
    open_case,
    parse_query,
)
from tillroll.store.tables import audit_log, journal_entries, recon_exceptions
from tillroll.terminal import Terminal


def today() -> date:
    return to_merchant_local(SystemClock().now(), merchant_zone("Asia/Shanghai")).date()


def test_card_payment_found_with_its_state_and_receipt(db_url: str, tmp_path: Path) -> None:
    with cashier_stack(db_url, tmp_path, web=True) as stack:
        assert stack.web_url is not None
        with Terminal.open(stack.data_dir) as term:
            paid = term.sale(66_60, PAN, EXPIRY, PIN)
            twin_a = term.sale(12_00, PAN, EXPIRY, PIN)
            twin_b = term.sale(12_00, PAN, EXPIRY, PIN)
            refunded = term.sale(50_00, PAN, EXPIRY, PIN)
            assert all(r.approved for r in (paid, twin_a, twin_b, refunded))
            entry = term.journal.find_sale_by_rrn(refunded.rrn or "")
            assert entry is not None and entry.host_date
            assert term.refund(20_00, refunded.rrn or "", entry.host_date).approved
            voided = term.sale(7_00, PAN, EXPIRY, PIN)
            assert term.void(voided.trace or "").approved
            round_ = term.send_facts(budget_s=5.0)
            assert round_ is not None
        keystore, engine = stack.store.keystore, stack.store.engine
        day = today()

        def ask(amount: int, last4: str = PAN[-4:], when: date = day) -> Lookup:
            with engine.connect() as conn:
                return lookup(
                    conn,
                    keystore,
                    Query(Claim.NO_RECEIPT, amount, when, last4=last4),
                    base_url=stack.web_url or "",
                )

        found = ask(66_60)
        assert found.finding is Finding.FOUND and found.payment is not None
        p = found.payment
        assert p.truth is Truth.PAID and p.tid == TID and p.mid == MID and p.rrn == paid.rrn
        assert p.receipt_url is not None and not found.needs_case
        page = httpx.get(p.receipt_url, timeout=5.0)
        assert page.status_code == 200 and "66.60" in page.text

        assert ask(66_61).finding is Finding.NOT_FOUND
        assert ask(66_60, last4="9999").finding is Finding.NOT_FOUND
        assert ask(66_60, when=day - timedelta(days=1)).finding is Finding.NOT_FOUND
        twins = ask(12_00)
        assert twins.finding is Finding.AMBIGUOUS and twins.payment is None
        part = ask(50_00)
        assert part.payment.truth is Truth.PARTLY_REFUNDED and part.payment.refunded_minor == 20_00
        assert ask(7_00).payment.truth is Truth.NOT_CHARGED

        q = Query(Claim.NO_RECEIPT, 12_00, day, last4=PAN[-4:], contact="13800138000")
        with engine.begin() as conn:
            reference, exc_id = open_case(conn, q, twins, now=SystemClock().now())
        with engine.connect() as conn:
            row = (
                conn.execute(select(recon_exceptions).where(recon_exceptions.c.id == exc_id)).mappings().one()
            )
            audit = conn.execute(select(audit_log.c.action, audit_log.c.target)).all()
            case = find_case(conn, reference.lower())
        assert row["class"] == "charged_no_receipt" and row["state"] == "open" and row["mid"] is None
        evidence = json.loads(row["evidence"])
        assert evidence["given"]["contact"] == "13800138000" and evidence["finding"] == "ambiguous"
        assert ("selfservice.case_opened", f"exception:{exc_id}") in [tuple(a) for a in audit]
        assert case is not None and case["state"] == "open"


def test_wallet_order_found_from_the_uploaded_journal(db_url: str, tmp_path: Path) -> None:
    with cashier_stack(db_url, tmp_path) as stack:
        now = SystemClock().now()
        order_no = f"{TID}20261202101010000042"
        base = {
            "tid": TID, "rail": "wallet", "batch": "000001", "currency": "156",
            "card_masked": "134567******1234",
            "receipt": "printed", "prints": 1, "created_at": now, "updated_at": now, "received_at": now,
        }  # fmt: skip
        with stack.store.engine.begin() as conn:
            conn.execute(insert(journal_entries).values(
                entry_key="wallet:1", kind="qr_pay", state="success", stan="000042", order_no=order_no,
                amount_minor=30_00, approved_at=now, **base))  # fmt: skip
            conn.execute(insert(journal_entries).values(
                entry_key="wallet_refund:1", kind="qr_refund", state="unknown", stan="000043",
                order_no=order_no + "R1", original_key="wallet:1", amount_minor=30_00, **base))  # fmt: skip
        q = Query(Claim.REFUND_MISSING, 30_00, today(), order_no=order_no)
        with stack.store.engine.connect() as conn:
            found = lookup(conn, stack.store.keystore, q, base_url="http://x")
            wrong = lookup(
                conn,
                stack.store.keystore,
                Query(Claim.REFUND_MISSING, 30_01, today(), order_no=order_no),
                base_url="",
            )
        assert found.finding is Finding.FOUND and found.payment is not None
        assert found.payment.truth is Truth.REFUND_ON_ITS_WAY and found.needs_case
        assert found.payment.mid == MID
        assert wrong.finding is Finding.NOT_FOUND
        with stack.store.engine.begin() as conn:
            _, exc_id = open_case(conn, q, found, now=now)
            klass = conn.execute(
                select(recon_exceptions.c["class"]).where(recon_exceptions.c.id == exc_id)
            ).scalar()
        assert klass == "refund_stuck"


def test_the_form_is_checked() -> None:
    ok = parse_query(claim="no_receipt", amount="12.5", day="2026-12-02", last4="0123")
    assert ok.amount_minor == 12_50 and ok.last4 == "0123" and ok.order_no is None
    for bad, why in [
        ({"claim": "x"}, "choose"),
        ({"amount": "12.345"}, "12.50"),
        ({"amount": "0"}, "more than zero"),
        ({"day": "02/12/2026"}, "2026-12-02"),
        ({"last4": ""}, "either"),
        ({"order_no": "ABC123"}, "either"),
        ({"last4": "12a4"}, "4 digits"),
    ]:
        args = {"claim": "no_receipt", "amount": "12.50", "day": "2026-12-02", "last4": "0123", **bad}
        with pytest.raises(SelfServiceInputError, match=why):
            parse_query(**args)
