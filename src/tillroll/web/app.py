"""The back office's web app (FastAPI): the intake of terminals' facts and the e-receipt pages.

:func:`create_app` takes its typed settings and its store (the host's database and key store) and
returns the app; ``tillroll web`` serves it with uvicorn. Pages are server-rendered from the
package's Jinja2 templates with autoescaping, load nothing from anywhere (a Content-Security-Policy
forbids scripts and remote content), and an error is a bilingual page (or, under ``/api/``, a JSON
body) — never a traceback.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tillroll.clock import Clock, SystemClock
from tillroll.console.app import console_csp, is_console_path, mount_console
from tillroll.console.cashier_signature import load_signature
from tillroll.crypto.backoffice import SIGNATURE_HEADER
from tillroll.crypto.keystore import KeyStore
from tillroll.host.store import HostStore
from tillroll.notify.routing import fan_out as notify_fan_out
from tillroll.recon.scheduler import recon_lifespan
from tillroll.terminal.ereceipt import render_e_receipt
from tillroll.web.config import WebConfig
from tillroll.web.intake import Answer, FanOut, accept
from tillroll.web.journal_intake import accept_journal
from tillroll.web.receipts import Found, Missing, find, receipt_pdf

log = logging.getLogger("tillroll.web")


class Delivery(Protocol):
    """What checks and stores one signed delivery of a terminal (its facts, its journal)."""

    def __call__(
        self,
        engine: Engine,
        keystore: KeyStore,
        *,
        tid: str,
        body: bytes,
        signature: str | None,
        now: datetime,
    ) -> Answer: ...


CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a receipt's address is its key: never pass it on
    "Cache-Control": "no-store",
}

_PROBLEMS: dict[str, tuple[str, str, str, str]] = {
    "invalid": (
        "链接无效",
        "此电子凭证链接无效或已被改动。请核对链接，或向商户索取凭证。",
        "Link not valid",
        "This e-receipt link is not valid or was altered. Check the link, or ask the merchant.",
    ),
    "expired": (
        "链接已过期",
        "此电子凭证链接已过有效期。请向商户索取凭证。",
        "Link expired",
        "This e-receipt link has expired. Ask the merchant for a copy of the receipt.",
    ),
    "not_yet": (
        "凭证尚未送达",
        "此凭证尚未从收银终端送达，请几分钟后再试。",
        "Receipt not here yet",
        "The terminal has not delivered this receipt yet. Please try again in a few minutes.",
    ),
    "not_found": ("页面不存在", "没有这个页面。", "Page not found", "There is no page at this address."),
    "error": (
        "服务暂时不可用",
        "出了点问题，请稍后再试。",
        "Something went wrong",
        "The service could not answer. Please try again later.",
    ),
}


def create_app(
    config: WebConfig, store: HostStore, *, clock: Clock | None = None, fan_out: FanOut | None = None
) -> FastAPI:
    clock = clock or SystemClock()
    fan = fan_out or notify_fan_out
    templates = Environment(
        loader=PackageLoader("tillroll.web", "templates"), autoescape=select_autoescape(default=True)
    )
    app = FastAPI(
        title="tillroll back office",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=recon_lifespan(store, clock, config.recon, base_url=config.base_url),
    )

    def problem(name: str, status: int) -> HTMLResponse:
        zh, text_zh, en, text_en = _PROBLEMS[name]
        page = templates.get_template("problem.html").render(
            title_zh=zh, text_zh=text_zh, title_en=en, text_en=text_en
        )
        return HTMLResponse(page, status_code=status)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        try:
            response: Response = await call_next(request)
        except Exception:  # a bug: logged with its trace, answered with a page that has none
            log.exception("%s %s failed", request.method, request.url.path)
            response = (
                JSONResponse({"error": "internal", "detail": "the back office failed; try again"}, 500)
                if request.url.path.startswith("/api/")
                else problem("error", 500)
            )
        response.headers.update(SECURITY_HEADERS)
        if is_console_path(request.url.path):  # the console runs htmx from /static; receipts stay strict
            response.headers["Content-Security-Policy"] = console_csp(request)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "http", "detail": str(exc.detail)}, exc.status_code)
        return problem("not_found" if exc.status_code == 404 else "error", exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        return JSONResponse({"error": "bad_request", "detail": "the request does not parse"}, 422)

    mount_console(app, store, clock, base_url=config.base_url, config=config.console)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(templates.get_template("index.html").render())

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    async def read_body(request: Request) -> bytes | None:
        """The body, or None when it is larger than ``body_max_bytes`` (refused unread)."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.body_max_bytes):
            return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.body_max_bytes:
                return None
        return bytes(body)

    too_large = {"error": "too_large", "detail": "the body is too large"}

    async def delivery(tid: str, request: Request, check: Delivery) -> JSONResponse:
        """A terminal's signed delivery: the body read within its bound, then checked and stored
        by `check` in a worker thread (it blocks on the database)."""
        body = await read_body(request)
        if body is None:
            return JSONResponse(too_large, 413)
        answer = await run_in_threadpool(
            check,
            store.engine,
            store.keystore,
            tid=tid,
            body=body,
            signature=request.headers.get(SIGNATURE_HEADER),
            now=clock.now(),
        )
        return JSONResponse(answer.body, answer.status)

    @app.post("/api/v1/terminals/{tid}/journal")
    async def journal_intake(tid: str, request: Request) -> JSONResponse:
        return await delivery(tid, request, accept_journal)

    @app.post("/api/v1/terminals/{tid}/facts")
    async def intake(tid: str, request: Request) -> JSONResponse:
        facts = partial(accept, fan_out=fan, base_url=config.base_url, ttl_days=config.receipt_ttl_days)
        return await delivery(tid, request, facts)

    @app.get("/r/{token}")
    def receipt(token: str, format: str = "html") -> Response:
        want_pdf = format == "pdf"
        if token.endswith(".pdf"):
            token, want_pdf = token[: -len(".pdf")], True
        found = find(store.engine, store.keystore, clock, token, config.receipt_ttl_days)
        if isinstance(found, Missing):
            return problem(found.value, found.status)
        assert isinstance(found, Found)
        signature = load_signature(store.engine, found.claims.tid, found.claims.reference)
        if want_pdf:
            name = f"receipt-{found.slip.tid}-{found.slip.batch}-{found.slip.trace}.pdf"
            return Response(
                receipt_pdf(found.slip, signature),
                media_type="application/pdf",
                headers={"Content-Disposition": f'inline; filename="{name}"'},
            )
        sig_url = f"/r/{token}/signature.png" if signature is not None else None
        return HTMLResponse(render_e_receipt(found.slip, pdf_url=f"/r/{token}.pdf", signature_url=sig_url))

    @app.get("/r/{token}/signature.png")
    def receipt_signature(token: str) -> Response:
        """The cardholder's electronic signature of that receipt (cashier screen), if any."""
        found = find(store.engine, store.keystore, clock, token, config.receipt_ttl_days)
        if isinstance(found, Missing):
            return problem(found.value, found.status)
        assert isinstance(found, Found)
        signature = load_signature(store.engine, found.claims.tid, found.claims.reference)
        if signature is None:
            return problem("not_found", 404)
        return Response(signature, media_type="image/png")

    return app
