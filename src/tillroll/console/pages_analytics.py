"""Analytics: the window's failures as SVG charts, and the spike alerts."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tillroll.console import charts
from tillroll.console.analytics import failures
from tillroll.console.auth import CurrentUser
from tillroll.console.context import Ctx
from tillroll.console.i18n import add, lang_of, tr
from tillroll.console.queries import zone_name

router = APIRouter()

add(
    {
        "ana.title": ("失败分析", "Failure analytics"),
        "ana.window": ("最近 {days} 天，共 {n} 笔失败", "Last {days} days: {n} failed payments"),
        "ana.by_cause": ("按原因", "By cause"),
        "ana.by_terminal": ("按终端", "By terminal"),
        "ana.by_rail": ("按渠道", "By rail"),
        "ana.by_hour": ("按时段（本地时间）", "By hour (local time)"),
        "ana.spikes": ("突增告警", "Spike alerts"),
        "ana.no_spikes": ("没有突增。", "No spike."),
        "ana.spike": (
            "终端 {tid} 在 {hour:02d}:00–{next:02d}:00 失败突增：{ndays} 天（{days}）共 {n} 笔，"
            "平时每小时 {base} 笔。",
            "Terminal {tid} fails at {hour:02d}:00–{next:02d}:00: {n} failures on {ndays} days ({days}); "
            "its usual rate is {base} an hour.",
        ),
    }
)


@router.get("/analytics", response_class=HTMLResponse)
def analytics(request: Request, principal: CurrentUser, ctx: Ctx) -> HTMLResponse:
    lang = lang_of(request)
    with ctx.store.engine.connect() as conn:
        tz = zone_name(conn, principal)
        f = failures(conn, principal, now=ctx.clock.now(), tz=tz, config=ctx.console)
    flagged = frozenset(s.local_hour for s in f.spikes)
    svgs = {
        "cause": charts.bars(f.by_cause, title=tr(lang, "ana.by_cause")),
        "terminal": charts.bars(f.by_terminal, title=tr(lang, "ana.by_terminal"), color="#4a78b5"),
        "rail": charts.bars(
            [(tr(lang, f"rail.{r}"), n) for r, n in f.by_rail], title=tr(lang, "ana.by_rail"), color="#7a5cb5"
        ),
        "hour": charts.hours(f.by_hour, title=tr(lang, "ana.by_hour"), flagged=flagged),
    }
    alerts = [
        tr(
            lang,
            "ana.spike",
            tid=s.tid,
            hour=s.local_hour,
            next=(s.local_hour + 1) % 24,
            n=s.failures,
            ndays=len(s.days),
            days=", ".join(s.days[-5:]),
            base=s.baseline_text,
        )
        for s in f.spikes
    ]
    return ctx.render(
        request, "analytics.html", f=f, svgs=svgs, alerts=alerts, days=ctx.console.analytics_days
    )
