"""The cashier screen: sale, QR payment, void, refund and reprint on the terminal engine attached
to this web process (:mod:`tillroll.console.cashier_engine`; ``tillroll web --terminal DIR``).

An operation is queued and answered at once with its job; the job's panel polls (htmx, every
``POLL_MS``) while it is **in doubt** (处理中) and stops when the journal says how it ended — there
is no button that ends it otherwise. A signed card sale's panel shows the signature pad (a canvas
driven by /static/ops.js, no inline script): the PNG is posted, checked and stored
(:mod:`cashier_signature`), and the waiting merchant copy prints with it.

Refunds from this screen follow the refund rule (:mod:`refunds_page`): above the merchant's limit
a cashier's refund is not sent; it becomes a request waiting for a supervisor.

Only the staff of the terminal's merchant (and operators) may use it; the card number and PIN
typed here go straight to the engine, which keeps the card number only sealed and the PIN not
at all; nothing of either is logged or shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from tillroll.console.auth import ConsoleProblem, CsrfChecked, CurrentUser, Principal
from tillroll.console.cashier_engine import CashierBusy, CashierEngine, Job, Operation, ScreenState
from tillroll.console.cashier_signature import SignatureRefused, load_signature, store_signature
from tillroll.console.context import ConsoleContext, Ctx
from tillroll.console.i18n import add
from tillroll.console.refunds_page import (
    OpsConfig,
    RefundAsk,
    RefundRefused,
    refund_limit_minor,
    request_refund,
)
from tillroll.console.users import Role
from tillroll.money import AmountError, format_yuan, parse_yuan

router = APIRouter()
POLL_MS = 500
SIGNATURE_MAX_BYTES = 256 * 1024

add(
    {
        "nav.cashier": ("收银台", "Cashier"),
        "cash.title": ("收银台 · 终端 {tid}", "Cashier screen · terminal {tid}"),
        "cash.none": (
            "此后台没有连接终端。请用 tillroll web --terminal 终端目录 启动。",
            "No terminal is attached to this console: start it with tillroll web --terminal DATA_DIR.",
        ),
        "cash.sale": ("刷卡消费", "Card sale"),
        "cash.qr": ("扫码支付", "QR payment"),
        "cash.void": ("消费撤销", "Void"),
        "cash.refund": ("退货", "Refund"),
        "cash.reprint": ("重打印", "Reprint"),
        "cash.amount": ("金额（元）", "Amount (yuan)"),
        "cash.card": ("卡号", "Card number"),
        "cash.expiry": ("有效期 YYMM", "Expiry YYMM"),
        "cash.pin": ("密码", "PIN"),
        "cash.contact": ("顾客手机/邮箱（电子凭证）", "Customer's phone / e-mail (e-receipt)"),
        "cash.signature": ("电子签名", "Electronic signature"),
        "cash.code": ("付款码", "Payment code"),
        "cash.trace": ("凭证号", "Voucher (trace) no."),
        "cash.order": ("订单号（扫码退款）", "Order no. (QR refund)"),
        "cash.go": ("确定", "Go"),
        "cash.recent": ("最近的操作", "Recent operations"),
        "cash.in_doubt": ("处理中", "in doubt"),
        "cash.in_doubt.text": (
            "结果确认中，请勿交付商品，也不要重复收款。",
            "The outcome is being resolved: do not hand over goods and do not charge again.",
        ),
        "cash.succeeded": ("成功", "done"),
        "cash.not_done": ("未成功", "not done"),
        "cash.refused": ("未受理", "not accepted"),
        "cash.sign_here": ("请顾客在下方签名", "Ask the customer to sign below"),
        "cash.sign_clear": ("清除", "Clear"),
        "cash.sign_ok": ("确认签名", "Confirm signature"),
        "cash.sign_skip": ("纸质签名", "Sign on paper"),
        "cash.signed": ("已签名", "signed"),
        "cash.busy": ("终端忙，请稍后再试。", "The terminal is busy: try again in a moment."),
        "cash.not_yours": (
            "此终端不属于您的商户。",
            "This terminal does not belong to your merchant.",
        ),
        "cash.refund_waits": (
            "退款金额 ¥{amount} 超过限额 ¥{limit}，已提交主管审批（申请号 {id}）。",
            "The refund of ¥{amount} is above the limit of ¥{limit}: it waits for a supervisor's "
            "approval (request {id}).",
        ),
        "cash.bad_amount": ("金额格式不对，例如 12.50", "Write the amount like 12.50"),
    }
)


def attach_ops(
    app: Any, *, terminal_dir: str | Path | None = None, refund_limit_minor: int | None = None
) -> CashierEngine | None:
    """Give the console the ops pages' settings and, for ``tillroll web --terminal DIR``, the
    terminal engine of that data dir (started here; the caller stops it)."""
    ctx: ConsoleContext = app.state.console
    if refund_limit_minor is not None:
        ctx.extras["ops"] = OpsConfig(refund_limit_minor=refund_limit_minor)
    if terminal_dir is None:
        return None
    engine = CashierEngine(
        Path(terminal_dir),
        signature_lookup=lambda tid, ref: load_signature(ctx.store.engine, tid, ref),
        clock=ctx.clock,
    ).start()
    ctx.extras["cashier"] = engine
    return engine


def attached(ctx: ConsoleContext) -> CashierEngine | None:
    engine = ctx.extras.get("cashier")
    return engine if isinstance(engine, CashierEngine) else None


def _engine_for(ctx: ConsoleContext, principal: Principal) -> CashierEngine:
    engine = attached(ctx)
    if engine is None:
        raise ConsoleProblem(404, "problem.not_found", detail="no terminal attached")
    if not principal.sees(engine.mid):
        raise ConsoleProblem(403, "problem.forbidden")
    return engine


@router.get("/cashier", response_class=HTMLResponse)
def screen(request: Request, principal: CurrentUser, ctx: Ctx) -> HTMLResponse:
    engine = attached(ctx)
    if engine is not None and not principal.sees(engine.mid):
        raise ConsoleProblem(403, "problem.forbidden")
    jobs = engine.jobs()[:20] if engine is not None else []
    return ctx.render(request, "cashier.html", engine=engine, jobs=jobs, poll_ms=POLL_MS)


def _job_panel(request: Request, ctx: ConsoleContext, job: Job, **extra: Any) -> HTMLResponse:
    return ctx.render(request, "cashier_job.html", job=job, poll_ms=POLL_MS, S=ScreenState, **extra)


def _amount(text: str) -> int | None:
    """Fen, or None when it is not a positive yuan amount (the screen says how to write it)."""
    try:
        amount = parse_yuan(text)
    except AmountError:
        return None
    return amount if amount > 0 else None


# Notes answer an htmx call with 200: htmx swaps no 4xx/5xx answer, and the cashier must read it.
def _note(request: Request, ctx: ConsoleContext, **values: Any) -> HTMLResponse:
    return ctx.render(request, "cashier_note.html", bad=True, **values)


def _submit(
    request: Request, ctx: ConsoleContext, engine: CashierEngine, op: Operation, **params: Any
) -> HTMLResponse:
    try:
        job = engine.submit(op, **params)
    except CashierBusy:
        return _note(request, ctx, key="cash.busy")
    return _job_panel(request, ctx, job)


def _pay(
    request: Request, ctx: ConsoleContext, principal: Principal, op: Operation, amount: str, **params: Any
) -> HTMLResponse:
    """A payment of `amount` as typed on the screen; one that is not an amount is not submitted."""
    engine = _engine_for(ctx, principal)
    amount_minor = _amount(amount)
    if amount_minor is None:
        return _note(request, ctx, key="cash.bad_amount")
    return _submit(request, ctx, engine, op, amount_minor=amount_minor, **params)


@router.post("/cashier/sale", response_class=HTMLResponse)
def sale(
    request: Request,
    principal: CsrfChecked,
    ctx: Ctx,
    amount: Annotated[str, Form()],
    pan: Annotated[str, Form()],
    expiry: Annotated[str, Form()],
    pin: Annotated[str, Form()] = "",
    contact: Annotated[str, Form()] = "",
    signature: Annotated[str, Form()] = "",
) -> HTMLResponse:
    return _pay(
        request,
        ctx,
        principal,
        Operation.SALE,
        amount,
        pan=pan.replace(" ", ""),
        expiry=expiry.strip(),
        pin=pin or None,
        contact=contact.strip() or None,
        signature=bool(signature),
    )


@router.post("/cashier/qr", response_class=HTMLResponse)
def qr(
    request: Request,
    principal: CsrfChecked,
    ctx: Ctx,
    amount: Annotated[str, Form()],
    code: Annotated[str, Form()],
    contact: Annotated[str, Form()] = "",
) -> HTMLResponse:
    return _pay(
        request, ctx, principal, Operation.QR, amount, code=code.strip(), contact=contact.strip() or None
    )


@router.post("/cashier/void", response_class=HTMLResponse)
def void(request: Request, principal: CsrfChecked, ctx: Ctx, trace: Annotated[str, Form()]) -> HTMLResponse:
    engine = _engine_for(ctx, principal)
    return _submit(request, ctx, engine, Operation.VOID, trace=trace.strip())


@router.post("/cashier/reprint", response_class=HTMLResponse)
def reprint(
    request: Request, principal: CsrfChecked, ctx: Ctx, trace: Annotated[str, Form()] = ""
) -> HTMLResponse:
    engine = _engine_for(ctx, principal)
    return _submit(request, ctx, engine, Operation.REPRINT, trace=trace.strip() or None)


@router.post("/cashier/refund", response_class=HTMLResponse)
def refund(
    request: Request,
    principal: CsrfChecked,
    ctx: Ctx,
    amount: Annotated[str, Form()],
    trace: Annotated[str, Form()] = "",
    order_no: Annotated[str, Form()] = "",
) -> HTMLResponse:
    engine = _engine_for(ctx, principal)
    amount_minor = _amount(amount)
    if amount_minor is None:
        return _note(request, ctx, key="cash.bad_amount")
    limit = refund_limit_minor(ctx, engine.mid)
    if amount_minor > limit and principal.role is Role.CASHIER:
        ask = RefundAsk(
            mid=engine.mid,
            tid=engine.tid,
            rail="wallet" if order_no.strip() else "card",
            original_ref=order_no.strip() or trace.strip(),
            amount_minor=amount_minor,
        )
        try:
            request_id = request_refund(ctx, principal, ask, execute=False)
        except RefundRefused as exc:
            return _note(request, ctx, text=str(exc))
        return ctx.render(
            request,
            "cashier_note.html",
            key="cash.refund_waits",
            bad=True,
            status=202,
            values={"amount": format_yuan(amount_minor), "limit": format_yuan(limit), "id": request_id},
        )
    if order_no.strip():
        return _submit(
            request, ctx, engine, Operation.QR_REFUND, amount_minor=amount_minor, order_no=order_no.strip()
        )
    return _submit(request, ctx, engine, Operation.REFUND, amount_minor=amount_minor, trace=trace.strip())


@router.get("/cashier/jobs/{job_id}", response_class=HTMLResponse)
def job_panel(request: Request, principal: CurrentUser, ctx: Ctx, job_id: str) -> HTMLResponse:
    engine = _engine_for(ctx, principal)
    job = engine.job(job_id)
    if job is None:
        raise ConsoleProblem(404, "problem.not_found")
    return _job_panel(request, ctx, job)


@router.post("/cashier/jobs/{job_id}/signature", response_class=HTMLResponse)
async def signature(request: Request, principal: CsrfChecked, ctx: Ctx, job_id: str) -> HTMLResponse:
    engine = _engine_for(ctx, principal)
    job = engine.job(job_id)
    if job is None or job.reference is None or not job.needs_signature:
        raise ConsoleProblem(404, "problem.not_found")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > SIGNATURE_MAX_BYTES:
            break
    from starlette.concurrency import run_in_threadpool

    try:
        await run_in_threadpool(
            store_signature,
            ctx.store.engine,
            tid=engine.tid,
            reference=job.reference,
            png=bytes(body),
            at=ctx.clock.now(),
            actor=principal.username,
            mid=engine.mid,
        )
    except SignatureRefused as exc:
        return _job_panel(request, ctx, job, signature_problem=str(exc))
    await run_in_threadpool(engine.signed, job_id)
    done = engine.job(job_id)
    assert done is not None
    return _job_panel(request, ctx, done)


@router.post("/cashier/jobs/{job_id}/no-signature", response_class=HTMLResponse)
def no_signature(request: Request, principal: CsrfChecked, ctx: Ctx, job_id: str) -> HTMLResponse:
    engine = _engine_for(ctx, principal)
    job = engine.job(job_id)
    if job is None:
        raise ConsoleProblem(404, "problem.not_found")
    engine.skip_signature(job_id)
    done = engine.job(job_id)
    assert done is not None
    return _job_panel(request, ctx, done)
