"""Log-in, log-out and the language switch."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tillroll.console import audit
from tillroll.console.auth import SESSION_COOKIE, ConsoleProblem, CsrfChecked
from tillroll.console.context import ConsoleContext, Ctx
from tillroll.console.i18n import LANG_COOKIE, LANGS
from tillroll.console.sessions import close_session, open_session
from tillroll.console.users import LoginResult, authenticate

router = APIRouter()
# Log-in CSRF (someone else's form logging you in as them): a double-submit token, a cookie that
# only this site's pages can read back into the form.
LOGIN_CSRF_COOKIE = "tr_login_csrf"


def safe_next(value: str | None) -> str:
    """Only a console path of this site (no //host, no scheme): an open redirect is not offered."""
    if value and value.startswith("/console/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console/today"


def _login_page(
    request: Request,
    ctx: ConsoleContext,
    *,
    status: int = 200,
    error: str | None = None,
    next_path: str = "/console/today",
    username: str = "",
) -> HTMLResponse:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = ctx.render(
        request,
        "login.html",
        status=status,
        error=error,
        next_path=next_path,
        login_csrf=token,
        username=username,
        expired=request.query_params.get("expired") == "1",
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/console/login",
        secure=ctx.console.secure_cookie,
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, ctx: Ctx) -> HTMLResponse:
    return _login_page(request, ctx, next_path=safe_next(request.query_params.get("next")))


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    ctx: Ctx,
    csrf_token: Annotated[str, Form(max_length=128)] = "",
    next_path: Annotated[str, Form(alias="next", max_length=512)] = "/console/today",
) -> Response:
    lang = request.cookies.get(LANG_COOKIE, "zh")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), csrf_token.encode()):
        raise ConsoleProblem(403, "problem.csrf")
    now = ctx.clock.now()
    cfg = ctx.console
    with ctx.store.engine.begin() as conn:
        result = authenticate(conn, username, password, now=now, config=cfg)
        token = None
        if result.result is LoginResult.OK:
            assert result.user is not None
            token, _ = open_session(conn, result.user, now=now, config=cfg)
            audit.record(
                conn,
                at=now,
                actor=result.user.username,
                action="user.login",
                target=f"user:{result.user.username}",
                mid=result.user.mid,
            )
    if token is None:
        from tillroll.console.i18n import tr

        if result.result is LoginResult.LOCKED:
            assert result.locked_until is not None
            minutes = max(1, int((result.locked_until - now).total_seconds() + 59) // 60)
            error = tr(
                lang,
                "login.locked",
                failures=cfg.lockout_failures,
                minutes=minutes,
                until=result.locked_until.strftime("%H:%M"),
            )
            status = 423
        elif result.result is LoginResult.INACTIVE:
            error, status = tr(lang, "login.inactive"), 403
        else:
            error = tr(lang, "login.wrong")
            if result.failures_left is not None and result.failures_left <= 2:
                error += " " + tr(lang, "login.left", left=result.failures_left, minutes=cfg.lockout_minutes)
            status = 401
        return _login_page(
            request, ctx, status=status, error=error, next_path=safe_next(next_path), username=username
        )
    response = RedirectResponse(safe_next(next_path), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/",
        secure=cfg.secure_cookie,
        max_age=cfg.absolute_hours * 3600,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console/login")
    return response


@router.post("/logout")
def logout(principal: CsrfChecked, ctx: Ctx) -> Response:
    now = ctx.clock.now()
    with ctx.store.engine.begin() as conn:
        close_session(conn, principal.session.token_hash)
        audit.record(
            conn,
            at=now,
            actor=principal.username,
            action="user.logout",
            target=f"user:{principal.username}",
            mid=principal.mid,
        )
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/lang/{lang}")
def switch_language(lang: str, request: Request, ctx: Ctx) -> Response:
    nxt = request.query_params.get("next")
    target = nxt if nxt and (nxt == "/console/login" or nxt.startswith("/console/login?")) else safe_next(nxt)
    response = RedirectResponse(target, status_code=303)
    if lang in LANGS:
        response.set_cookie(
            LANG_COOKIE,
            lang,
            samesite="strict",
            path="/",
            max_age=365 * 86400,
            secure=ctx.console.secure_cookie,
        )
    return response
