"""Mounting the console into the back office's web app (``tillroll.web.create_app`` calls
:func:`mount_console`): its routes under ``/console``, htmx and other scripts under ``/static``
(from the package: nothing is fetched from the internet), its templates and exception handlers.

Another part's pages are an ``APIRouter`` named ``router`` in its module, listed in
:data:`ROUTER_MODULES`; they use :mod:`tillroll.console.auth` for who may do what, the context's
``render`` for pages in the layout, and :mod:`tillroll.console.i18n` for their texts.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from tillroll.clock import Clock, merchant_zone, to_merchant_local
from tillroll.console.auth import ConsoleProblem, LoginRequired
from tillroll.console.config import ConsoleConfig
from tillroll.console.context import ConsoleContext
from tillroll.host.store import HostStore
from tillroll.money import format_yuan

PREFIX = "/console"
STATIC = "/static"
# The console's pages, one module each with a `router` (the ops pages add theirs here).
ROUTER_MODULES = (
    "tillroll.console.login",
    "tillroll.console.pages_today",
    "tillroll.console.pages_payments",
    "tillroll.console.pages_terminals",
    "tillroll.console.pages_settlements",
    "tillroll.console.pages_notifications",
    "tillroll.console.pages_analytics",
)


def console_csp(request: Request) -> str:
    """Scripts only from this origin's /static/ (htmx); forms and htmx calls to this origin."""
    origin = f"{request.url.scheme}://{request.url.netloc}"
    return (
        f"default-src 'none'; script-src {origin}{STATIC}/; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/") or path.startswith(STATIC + "/")


def _yuan(amount_minor: int | None) -> str:
    return "" if amount_minor is None else format_yuan(int(amount_minor))


def _local(instant: datetime | str | None, tz: str = "Asia/Shanghai") -> str:
    """A naive-UTC instant (or its ISO text, as stories and status documents carry it) in the
    merchant's local time."""
    if instant is None or instant == "":
        return ""
    when = instant
    if isinstance(instant, str):
        try:
            when = datetime.fromisoformat(instant.removesuffix("Z"))
        except ValueError:
            return instant
    assert isinstance(when, datetime)
    return to_merchant_local(when, merchant_zone(tz)).strftime("%Y-%m-%d %H:%M:%S")


def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("tillroll.console", "templates"), autoescape=select_autoescape(default=True)
    )
    env.filters["yuan"] = _yuan
    env.filters["local"] = _local
    return env


def mount_console(
    app: FastAPI, store: HostStore, clock: Clock, *, base_url: str, config: ConsoleConfig | None = None
) -> ConsoleContext:
    ctx = ConsoleContext(
        store=store, clock=clock, console=config or ConsoleConfig(), base_url=base_url, templates=templates()
    )
    app.state.console = ctx
    app.mount(STATIC, StaticFiles(packages=[("tillroll.console", "static")]), name="static")

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        from urllib.parse import quote

        where = f"{PREFIX}/login?next={quote(exc.next_path, safe='/')}" + (
            "&expired=1" if exc.expired else ""
        )
        if request.headers.get("HX-Request"):
            return Response(status_code=401, headers={"HX-Redirect": where})
        return RedirectResponse(where, status_code=303)

    @app.exception_handler(ConsoleProblem)
    async def console_problem(request: Request, exc: ConsoleProblem) -> Response:
        return ctx.render(request, "problem.html", status=exc.status, key=exc.key, detail=exc.detail)

    @app.get(PREFIX)
    def console_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/today", status_code=303)

    for name in ROUTER_MODULES:
        module: Any = importlib.import_module(name)
        app.include_router(module.router, prefix=PREFIX)
    return ctx
