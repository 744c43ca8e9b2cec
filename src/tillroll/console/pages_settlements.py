"""Settlements: every closed batch (the terminal's figures against the host's), the day's
settlement report (the host's own report, tillroll.host.report) and the Z report per terminal."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from tillroll.clock import merchant_zone, to_merchant_local
from tillroll.console.auth import ConsoleProblem, CurrentUser
from tillroll.console.context import Ctx
from tillroll.console.i18n import add
from tillroll.console.payments import terminal_visible
from tillroll.console.queries import day_bounds, terminal_ids, zone_name
from tillroll.console.zreport import z_report
from tillroll.host.report import settlement_report
from tillroll.store.tables import settlements

router = APIRouter()

add(
    {
        "set.title": ("结算", "Settlements"),
        "set.report": ("结算报表", "Settlement report"),
        "set.batches": ("批次", "Batches"),
        "set.terminal_side": ("终端", "Terminal"),
        "set.host_side": ("主机", "Host"),
        "set.debits": ("借记", "Debits"),
        "set.credits": ("贷记", "Credits"),
        "set.fee": ("手续费", "Fee"),
        "set.balanced": ("平账", "Balanced"),
        "set.closed_by": ("结批方", "Closed by"),
        "set.gross": ("交易额", "Gross"),
        "set.refunds": ("退款", "Refunds"),
        "set.auto_refunds": ("自动退款", "Auto refunds"),
        "set.net": ("应付商户", "Net to merchant"),
        "set.zreport": ("日结（Z）报表", "End-of-day (Z) report"),
        "set.show": ("查看", "Show"),
        "z.line": ("项目", "Line"),
        "z.journal": ("终端流水", "Terminal journal"),
        "z.other": ("主机 / 对账单", "Host / statement"),
        "z.agrees": ("一致", "Agrees"),
        "z.card_sales": ("银行卡消费", "Card sales"),
        "z.card_voided": ("银行卡撤销", "Card sales voided"),
        "z.card_refunds": ("银行卡退货", "Card refunds"),
        "z.wallet_paid": ("扫码收款", "Wallet payments"),
        "z.wallet_refunds": ("扫码退款", "Wallet refunds"),
        "z.host": ("主机", "host"),
        "z.statement": ("对账单", "statement"),
    }
)


def _day(ctx: Ctx, text: str | None, tz: str) -> date:
    if text:
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ConsoleProblem(400, "problem.bad_input", f"date {text!r}: write it as YYYY-MM-DD") from None
    return to_merchant_local(ctx.clock.now(), merchant_zone(tz)).date()


@router.get("/settlements", response_class=HTMLResponse)
def settlements_page(request: Request, principal: CurrentUser, ctx: Ctx) -> HTMLResponse:
    with ctx.store.engine.connect() as conn:
        tz = zone_name(conn, principal)
        day = _day(ctx, request.query_params.get("date"), tz)
        start, end, _ = day_bounds(conn, principal, day)
        batches = conn.execute(
            select(settlements)
            .where(
                principal.scope(settlements.c.mid),
                settlements.c.settled_at >= start,
                settlements.c.settled_at < end,
            )
            .order_by(settlements.c.settled_at.desc())
            .limit(ctx.console.page_rows)
        ).all()
        # An operator's report covers every merchant; a merchant's staff's reads their own rows
        # only (and keeps only those, should a user ever have no merchant).
        mid = None if principal.is_operator else principal.mid
        rows = settlement_report(conn, day, merchant_zone(tz), mid=mid)
        report = [r for r in rows if principal.sees(r.mid)]
        tids = terminal_ids(conn, principal)
    return ctx.render(request, "settlements.html", day=day, tz=tz, batches=batches, report=report, tids=tids)


@router.get("/settlements/z/{tid}", response_class=HTMLResponse)
def z_report_page(tid: str, request: Request, principal: CurrentUser, ctx: Ctx) -> HTMLResponse:
    with ctx.store.engine.connect() as conn:
        if not terminal_visible(conn, principal, tid):
            raise ConsoleProblem(404, "problem.not_found")
        tz = zone_name(conn, principal)
        day = _day(ctx, request.query_params.get("date"), tz)
        lines = z_report(conn, principal, tid, day)
    return ctx.render(request, "zreport.html", tid=tid, day=day, tz=tz, lines=lines)
