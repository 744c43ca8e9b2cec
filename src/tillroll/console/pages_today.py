"""Today: the day's volume and approval rate, open exceptions, terminals needing attention."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tillroll.console import queries
from tillroll.console.auth import CurrentUser
from tillroll.console.context import Ctx
from tillroll.console.i18n import add

router = APIRouter()

# The exception classes' names, the same pairs as the exception queue's (part E) under the same
# keys: whichever registers first, the catalogue holds one text per class.
add(
    {
        "xclass.charged_no_receipt": ("已扣款无凭证", "charged, no receipt"),
        "xclass.receipt_no_payment": ("有凭证无入账", "receipt, no payment"),
        "xclass.refund_stuck": ("退款未完成", "refund stuck"),
        "xclass.notified_not_final": ("已通知但未成功", "told paid, not final"),
        "xclass.signin_failures": ("签到失败", "sign-in failures"),
        "xclass.amount_mismatch": ("金额不符", "amount mismatch"),
        "xclass.missing_on_one_side": ("单边缺失", "missing on one side"),
        "xclass.duplicate": ("重复", "duplicate"),
    }
)

add(
    {
        "today.title": ("今日概况", "Today"),
        "today.volume": ("成交金额", "Volume"),
        "today.count": ("笔数", "Payments"),
        "today.approval": ("批准率", "Approval rate"),
        "today.exceptions": ("待处理异常", "Open exceptions"),
        "today.attention": ("需关注的终端", "Terminals needing attention"),
        "today.none_attention": ("所有终端正常。", "Every terminal is fine."),
        "today.by_rail": ("按渠道", "By rail"),
    }
)


@router.get("/today", response_class=HTMLResponse)
def today(
    request: Request,
    principal: CurrentUser,
    ctx: Ctx,
) -> HTMLResponse:
    with ctx.store.engine.connect() as conn:
        summary = queries.today(conn, principal, now=ctx.clock.now())
    return ctx.render(request, "today.html", s=summary)
