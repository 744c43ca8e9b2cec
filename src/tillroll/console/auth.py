"""The console's request dependencies: who is asking, may they, and did the form come from us.

For every console route (other parts' pages too):

- ``principal: CurrentUser`` (``Annotated[Principal, Depends(current_user)]``) — the logged-in
  user (a request without a live session is sent to the log-in page; htmx gets ``HX-Redirect``);
- ``principal: Annotated[Principal, Depends(require_role(Role.SUPERVISOR, ...))]`` — only those
  roles (a 403 page else; check the CSRF token too on a POST: add ``_: CsrfChecked``);
- ``principal: CsrfChecked`` (``Depends(csrf_protected)``) on every POST — the session's CSRF
  token in the form field ``csrf_token`` or the ``X-CSRF-Token`` header (htmx sends it from the
  layout's ``hx-headers``);
- queries filter with ``principal.scope(table.c.mid)`` or ``principal.scope_tid(table.c.tid)``:
  a merchant's staff see only their merchant's rows, operators all — in the SQL, not the menu.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import ColumnElement, select, true

from tillroll.console.context import Ctx
from tillroll.console.i18n import lang_of
from tillroll.console.sessions import Session, find_session
from tillroll.console.users import Role
from tillroll.store.tables import terminals

SESSION_COOKIE = "tr_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class LoginRequired(Exception):
    """No live session: answered with the log-in page (the console's exception handler)."""

    def __init__(self, next_path: str, expired: bool) -> None:
        self.next_path = next_path
        self.expired = expired


class ConsoleProblem(Exception):
    """A bilingual problem page: `key` names the catalogue's title (and `key.text` its text)."""

    def __init__(self, status: int, key: str, detail: str | None = None) -> None:
        self.status = status
        self.key = key
        self.detail = detail


@dataclass(frozen=True)
class Principal:
    session: Session
    lang: str

    @property
    def username(self) -> str:
        return self.session.user.username

    @property
    def role(self) -> Role:
        return self.session.user.role

    @property
    def mid(self) -> str | None:
        return self.session.user.mid

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR

    def sees(self, mid: str | None) -> bool:
        return self.is_operator or (mid is not None and mid == self.mid)

    def scope(self, mid_column: Any) -> ColumnElement[bool]:
        """WHERE clause: rows of this user's merchant (all rows for an operator)."""
        if self.is_operator:
            return true()
        result: ColumnElement[bool] = mid_column == self.mid
        return result

    def scope_tid(self, tid_column: Any) -> ColumnElement[bool]:
        """WHERE clause for tables keyed by terminal only: the terminals of this user's merchant."""
        if self.is_operator:
            return true()
        result: ColumnElement[bool] = tid_column.in_(
            select(terminals.c.tid).where(terminals.c.mid == self.mid)
        )
        return result


def current_user(request: Request, ctx: Ctx) -> Principal:
    token = request.cookies.get(SESSION_COOKIE)
    with ctx.store.engine.begin() as conn:
        session = find_session(conn, token, now=ctx.clock.now(), config=ctx.console)
    if session is None:
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query
        raise LoginRequired(path if request.method == "GET" else "/console/today", expired=token is not None)
    principal = Principal(session, lang_of(request))
    request.state.principal = principal  # the layout shows who is logged in
    return principal


# A route's parameter ``principal: CurrentUser`` is the logged-in user.
CurrentUser = Annotated[Principal, Depends(current_user)]


def require_role(*roles: Role) -> Callable[..., Principal]:
    """A dependency: the logged-in user, if their role is one of `roles` (else a 403 page)."""
    allowed = frozenset(roles)

    def dependency(principal: CurrentUser) -> Principal:
        if principal.role not in allowed:
            raise ConsoleProblem(403, "problem.forbidden")
        return principal

    return dependency


async def csrf_protected(request: Request, principal: CurrentUser) -> Principal:
    """A dependency for POST routes: the session's CSRF token must come with the request."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()  # cached by Starlette: the route's Form(...) reads it again
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if sent is None or not hmac.compare_digest(sent.encode(), principal.csrf_token.encode()):
        raise ConsoleProblem(403, "problem.csrf")
    return principal


# A POST route's parameter ``principal: CsrfChecked`` is the logged-in user whose form carried the
# session's CSRF token.
CsrfChecked = Annotated[Principal, Depends(csrf_protected)]
