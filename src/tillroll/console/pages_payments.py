"""Payments: search, a payment's whole story (part C's payment_story), its evidence bundle."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from tillroll.console.auth import ConsoleProblem, CurrentUser, Principal
from tillroll.console.context import Ctx
from tillroll.console.evidence import bundle_json, bundle_pdf
from tillroll.console.i18n import add
from tillroll.console.payments import Search, SearchError, search, terminal_visible
from tillroll.console.queries import zone_name
from tillroll.recon.story import Story, payment_story
from tillroll.store.tables import merchants

router = APIRouter()

add(
    {
        "pay.title": ("交易查询", "Payments"),
        "pay.date": ("日期", "Date"),
        "pay.amount": ("金额（元）", "Amount (yuan)"),
        "pay.last4": ("卡号后四位", "Last 4"),
        "pay.rrn": ("参考号 RRN", "RRN"),
        "pay.trace": ("凭证号", "Trace"),
        "pay.order": ("订单号", "Order number"),
        "pay.found": ("找到 {n} 笔", "{n} found"),
        "pay.nothing": ("没有符合条件的交易。", "No payment matches."),
        "pay.time": ("时间", "Time"),
        "pay.terminal": ("终端", "Terminal"),
        "pay.rail": ("渠道", "Rail"),
        "pay.kind": ("类型", "Kind"),
        "pay.card": ("卡号 / 付款码", "Card / code"),
        "pay.terminal_state": ("终端状态", "Terminal says"),
        "pay.host_state": ("主机状态", "Host says"),
        "pay.story": ("交易详情", "Payment"),
        "pay.identity": ("交易要素", "Identity"),
        "pay.diagnosis": ("诊断", "Diagnosis"),
        "pay.timeline": ("经过", "Timeline"),
        "pay.notifications": ("通知与投递", "Notifications and deliveries"),
        "pay.exceptions": ("对账异常", "Reconciliation exceptions"),
        "pay.evidence": ("证据包", "Evidence bundle"),
        "pay.source": ("来源", "Source"),
        "pay.what": ("内容", "What"),
        "pay.details": ("明细", "Details"),
        "pay.attempts": ("投递尝试", "Attempts"),
        "pay.actions": ("处理", "Actions"),
    }
)


@router.get("/payments", response_class=HTMLResponse)
def payments(request: Request, principal: CurrentUser, ctx: Ctx) -> HTMLResponse:
    params = {k: v for k, v in request.query_params.items()}
    error = None
    rows = None
    try:
        query = Search.parse(params)
    except SearchError as exc:
        query, error = Search(), str(exc)
    with ctx.store.engine.connect() as conn:
        tz = zone_name(conn, principal)
        if error is None:
            rows = search(conn, principal, query, limit=ctx.console.page_rows)
    return ctx.render(
        request, "payments.html", status=400 if error else 200, params=params, error=error, rows=rows, tz=tz
    )


def _story(ctx: Ctx, principal: Principal, tid: str, reference: str) -> tuple[Story, str, str]:
    """The story of `reference` at terminal `tid`, if the user's merchant owns both (else 404)."""
    with ctx.store.engine.connect() as conn:
        if not terminal_visible(conn, principal, tid):
            raise ConsoleProblem(404, "problem.not_found")
        story = payment_story(conn, reference)
        mid = story.identity.get("mid")
        story_tid = story.identity.get("tid")
        if (
            not story.found
            or (story_tid is not None and story_tid != tid)
            or not principal.sees(str(mid) if mid is not None else None)
        ):
            raise ConsoleProblem(404, "problem.not_found")
        row = conn.execute(select(merchants.c.name, merchants.c.tz).where(merchants.c.mid == mid)).first()
    name, tz = (row.name, row.tz) if row is not None else ("", "Asia/Shanghai")
    return story, name, tz


@router.get("/payments/{tid}/{reference}", response_class=HTMLResponse)
def payment_page(
    tid: str, reference: str, request: Request, principal: CurrentUser, ctx: Ctx
) -> HTMLResponse:
    story, merchant, tz = _story(ctx, principal, tid, reference)
    return ctx.render(request, "payment.html", story=story, tid=tid, merchant=merchant, tz=tz)


@router.get("/payments/{tid}/{reference}/evidence.json")
def evidence_json(tid: str, reference: str, principal: CurrentUser, ctx: Ctx) -> Response:
    story, _, _ = _story(ctx, principal, tid, reference)
    body = bundle_json(story, exported_by=principal.username, exported_at=ctx.clock.now())
    name = f"evidence-{tid}-{reference}.json"
    return Response(
        body.encode(),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/payments/{tid}/{reference}/evidence.pdf")
def evidence_pdf(tid: str, reference: str, principal: CurrentUser, ctx: Ctx) -> Response:
    story, merchant, _ = _story(ctx, principal, tid, reference)
    pdf = bundle_pdf(story, exported_by=principal.username, exported_at=ctx.clock.now(), merchant=merchant)
    name = f"evidence-{tid}-{reference}.pdf"
    return Response(
        pdf, media_type="application/pdf", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
