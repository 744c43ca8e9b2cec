"""The cashier screen's engine: a real terminal run in the web process's worker thread, against a
real host (TCP, through a fault proxy), a real wallet provider (HTTP) and a printer emulator (TCP).

Covers: a signed sale whose merchant copy waits for the signature and then prints it as a raster
image (and again on a reprint); a card sale whose answer is lost stays **in doubt** until the
engine's own reversal ends it; a QR payment confirmed late is in doubt, then paid; one never
confirmed ends cancelled; void, refund and reprint; the checks a signature PNG must pass.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from cashier_stack import (
    EXPIRY,
    MID,
    PAN,
    PIN,
    TID,
    WAIT_S,
    cashier_stack,
    raster_images,
    signature_png,
)
from PIL import Image
from sqlalchemy import func, select

from tillroll.clock import SystemClock
from tillroll.console.cashier_engine import (
    SCREEN_TRANSITIONS,
    CashierBusy,
    Operation,
    ScreenState,
    screen_state,
)
from tillroll.console.cashier_signature import SignatureRefused, check_png, store_signature
from tillroll.sim.fault_proxy import Fault
from tillroll.store.tables import audit_log, signatures
from tillroll.terminal import Outcome
from tillroll.terminal.printer import dots_per_line
from tillroll.terminal.signature_print import signature_raster


def test_signed_sale_prints_the_merchant_copy_with_the_signature(db_url: str, tmp_path: Path) -> None:
    with cashier_stack(db_url, tmp_path) as stack:
        engine = stack.engine()
        job = engine.submit(
            Operation.SALE, amount_minor=88_00, pan=PAN, expiry=EXPIRY, pin=PIN, signature=True
        )
        assert job.state is ScreenState.IN_DOUBT  # from the moment it is queued
        done = engine.wait(job.id, WAIT_S)
        assert done is not None and done.state is ScreenState.SUCCEEDED, done
        assert done.needs_signature and done.reference is not None
        docs = stack.printer.documents()
        assert len(docs) == 1 and "CARDHOLDER COPY" in docs[0]  # the merchant copy waits
        assert raster_images(stack.printer.received()) == []

        now = SystemClock().now()
        store_signature(
            stack.store.engine, tid=TID, reference=done.reference, png=signature_png(),
            at=now, actor="cashier1", mid=MID,
        )  # fmt: skip
        released = engine.signed(job.id)
        assert released is not None and released.printed, released
        docs = stack.printer.documents()
        assert len(docs) == 2 and "MERCHANT COPY" in docs[1]
        images = raster_images(stack.printer.received())
        assert len(images) == 1
        width_bytes, height = images[0]
        assert 0 < width_bytes * 8 <= dots_per_line(32) and 0 < height <= 160

        again = engine.submit(Operation.REPRINT, trace=done.trace)
        reprinted = engine.wait(again.id, WAIT_S)
        assert reprinted is not None and reprinted.state is ScreenState.SUCCEEDED, reprinted
        assert len(raster_images(stack.printer.received())) == 2  # the reprint carries it too
        assert "REPRINT" in stack.printer.documents()[-2]

        with stack.store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(signatures)).scalar_one() == 1
            actions = conn.execute(select(audit_log.c.action, audit_log.c.target)).all()
        assert ("signature.stored", f"{TID}:{done.reference}") in [tuple(a) for a in actions]
        with pytest.raises(SignatureRefused, match="already signed"):
            store_signature(
                stack.store.engine, tid=TID, reference=done.reference, png=signature_png(),
                at=now, actor="cashier1", mid=MID,
            )  # fmt: skip


def test_lost_answer_is_in_doubt_until_the_reversal_ends_it(db_url: str, tmp_path: Path) -> None:
    with cashier_stack(db_url, tmp_path) as stack:
        engine = stack.engine(resolve_interval_s=0.2)
        first = engine.wait(
            engine.submit(Operation.SALE, amount_minor=10_00, pan=PAN, expiry=EXPIRY, pin=PIN).id, WAIT_S
        )
        assert first is not None and first.state is ScreenState.SUCCEEDED
        stack.proxy.inject(Fault.DROP_RESPONSE, count=1000)  # the sale's answer and its reversals' lost
        job = engine.submit(Operation.SALE, amount_minor=20_00, pan=PAN, expiry=EXPIRY, pin=PIN)
        # the engine gave up for now (REVERSAL_PENDING): the screen still says in doubt
        assert engine.wait(job.id, 8.0) is not None
        seen = engine.job(job.id)
        assert seen is not None and seen.outcome is Outcome.REVERSAL_PENDING, seen
        assert seen.state is ScreenState.IN_DOUBT
        stack.proxy.clear()  # the line answers again: the worker's reverse_step ends it
        ended = engine.wait(job.id, WAIT_S)
        assert ended is not None and ended.state is ScreenState.NOT_DONE, ended
        assert "reversed" in ended.text


def test_qr_payment_confirmed_late_is_in_doubt_then_paid(db_url: str, tmp_path: Path) -> None:
    with cashier_stack(db_url, tmp_path) as stack:
        engine = stack.engine()
        code = stack.user("alice", behaviour="confirm:0.6")
        job = engine.submit(Operation.QR, amount_minor=12_50, code=code)
        ended = engine.wait(job.id, WAIT_S)
        assert ended is not None and ended.state is ScreenState.SUCCEEDED, ended
        assert ended.order_no and ended.order_no.startswith(TID)
        assert any("QR PAY" in d for d in stack.printer.documents())

        refund = engine.wait(
            engine.submit(Operation.QR_REFUND, amount_minor=2_50, order_no=ended.order_no).id, WAIT_S
        )
        assert refund is not None and refund.state is ScreenState.SUCCEEDED, refund


def test_qr_payment_never_confirmed_ends_cancelled(db_url: str, tmp_path: Path) -> None:
    with cashier_stack(db_url, tmp_path) as stack:
        engine = stack.engine()
        code = stack.user("bob", behaviour="never")
        ended = engine.wait(engine.submit(Operation.QR, amount_minor=9_00, code=code).id, WAIT_S)
        assert ended is not None and ended.state is ScreenState.NOT_DONE, ended
        assert ended.outcome is Outcome.WALLET_CANCELLED


def test_void_refund_and_bad_input(db_url: str, tmp_path: Path) -> None:
    with cashier_stack(db_url, tmp_path) as stack:
        engine = stack.engine()
        sale = engine.wait(
            engine.submit(Operation.SALE, amount_minor=30_00, pan=PAN, expiry=EXPIRY, pin=PIN).id, WAIT_S
        )
        other = engine.wait(
            engine.submit(Operation.SALE, amount_minor=40_00, pan=PAN, expiry=EXPIRY, pin=PIN).id, WAIT_S
        )
        assert sale is not None and other is not None and sale.trace and other.trace
        void = engine.wait(engine.submit(Operation.VOID, trace=sale.trace).id, WAIT_S)
        assert void is not None and void.state is ScreenState.SUCCEEDED, void
        refund = engine.wait(
            engine.submit(Operation.REFUND, amount_minor=15_00, trace=other.trace).id, WAIT_S
        )
        assert refund is not None and refund.state is ScreenState.SUCCEEDED, refund
        too_much = engine.wait(
            engine.submit(Operation.REFUND, amount_minor=90_00, trace=other.trace).id, WAIT_S
        )
        assert too_much is not None and too_much.state is ScreenState.NOT_DONE, too_much
        bad = engine.wait(
            engine.submit(Operation.SALE, amount_minor=0, pan=PAN, expiry=EXPIRY, pin=PIN).id, WAIT_S
        )
        assert bad is not None and bad.state is ScreenState.REFUSED, bad
        missing = engine.wait(engine.submit(Operation.REFUND, amount_minor=100, trace="999999").id, WAIT_S)
        assert missing is not None and missing.state is ScreenState.REFUSED and "999999" in missing.text


def test_screen_states() -> None:
    assert screen_state(Outcome.APPROVED) is ScreenState.SUCCEEDED
    for unresolved in (Outcome.REVERSAL_PENDING, Outcome.WALLET_PENDING, Outcome.REFUND_UNKNOWN):
        assert screen_state(unresolved) is ScreenState.IN_DOUBT
    for final in (Outcome.DECLINED, Outcome.REVERSED, Outcome.WALLET_CANCELLED, Outcome.HOST_UNREACHABLE):
        assert screen_state(final) is ScreenState.NOT_DONE
    assert all(not SCREEN_TRANSITIONS[s] for s in ScreenState if s is not ScreenState.IN_DOUBT)
    assert CashierBusy.__doc__


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_signature_checks() -> None:
    good = signature_png()
    assert check_png(good) == good
    with pytest.raises(SignatureRefused, match="not a PNG"):
        check_png(b"GIF89a" + good[6:])
    with pytest.raises(SignatureRefused, match="empty"):
        check_png(_png(Image.new("RGBA", (400, 150), (0, 0, 0, 0))))
    with pytest.raises(SignatureRefused, match="cannot be read"):
        check_png(good[: len(good) // 2])
    with pytest.raises(SignatureRefused, match="px"):
        check_png(_png(Image.new("RGBA", (10, 10), (0, 0, 0, 255))))
    with pytest.raises(SignatureRefused, match="too large"):
        check_png(good + b"\0" * 300_000)
    raster = signature_raster(good, width_dots=384)
    assert raster.mode == "1" and raster.width <= 384 and raster.height <= 160
    assert raster.getbbox() is not None


def test_signature_prints_only_on_the_merchant_copy() -> None:
    from datetime import datetime

    from tillroll.sim.printer_emulator import decode_documents
    from tillroll.terminal.printer import job_bytes
    from tillroll.terminal.receipt import Copy, Slip, TransType

    slip = Slip(
        merchant_name="一号便利店", mid=MID, tid=TID, operator="01", pan_masked="622202*********0123",
        entry_mode="M", issuer="", acquirer="", expiry_yymm="3012", trans_type=TransType.SALE,
        batch="000001", trace="000007", auth_code="123456", rrn="000000000007",
        when=datetime(2026, 12, 2, 10, 0, 0), amount_minor=88_00,
    )  # fmt: skip
    png = signature_png()
    both = job_bytes([(slip, Copy.MERCHANT), (slip, Copy.CARDHOLDER)], signatures=[png, png])
    assert len(raster_images(both)) == 1  # the cardholder copy never carries it
    merchant, cardholder = decode_documents(both)
    assert "MERCHANT COPY" in merchant and "CARDHOLDER SIGNATURE" in merchant
    assert "CARDHOLDER COPY" in cardholder
    plain = job_bytes([(slip, Copy.MERCHANT)])
    assert raster_images(plain) == []
    assert "_" * 32 in decode_documents(plain)[0]  # no signature: the line to sign on paper
