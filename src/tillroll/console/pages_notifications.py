"""Notifications: every message and webhook the back office's outbox holds, with its delivery
attempts; a supervisor or admin can send one again by hand (audited). The relay
(``tillroll notify run``) delivers it on its next round."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import ColumnElement, Connection, func, select, update
from sqlalchemy.dialects.postgresql import JSONB

from tillroll.console import audit
from tillroll.console.auth import ConsoleProblem, CsrfChecked, CurrentUser, Principal, require_role
from tillroll.console.context import Ctx
from tillroll.console.i18n import add
from tillroll.console.queries import zone_name
from tillroll.console.users import Role
from tillroll.notify.outbox import MessageState
from tillroll.store.tables import outbox

router = APIRouter()
Resender = Annotated[Principal, Depends(require_role(Role.SUPERVISOR, Role.MERCHANT_ADMIN, Role.OPERATOR))]

add(
    {
        "note.title": ("通知", "Notifications"),
        "note.kind": ("类型", "Kind"),
        "note.channel": ("渠道", "Channel"),
        "note.recipient": ("接收方", "Recipient"),
        "note.state": ("状态", "State"),
        "note.attempts": ("投递尝试", "Attempts"),
        "note.resend": ("重新发送", "Send again"),
        "note.resent": (
            "已重新排队，转发程序下一轮发送。",
            "Queued again; the relay sends it on its next round.",
        ),
        "note.filter": ("筛选", "Filter"),
        "note.last_error": ("最后错误", "Last error"),
    }
)


def mid_of_payload(conn: Connection) -> ColumnElement[Any]:
    """The merchant of a message, from its JSON payload (the same expression on both databases)."""
    m = outbox.messages
    expr: ColumnElement[Any]
    if conn.dialect.name == "postgresql":
        expr = m.c.payload.cast(JSONB)["mid"].astext
    else:
        expr = func.json_extract(m.c.payload, "$.mid")
    return expr


def _payload_mid(payload: str) -> str | None:
    try:
        mid = json.loads(payload).get("mid")
    except (ValueError, AttributeError):
        return None
    return str(mid) if mid else None


def _visible(conn: Connection, principal: Principal) -> ColumnElement[bool]:
    return principal.scope(mid_of_payload(conn))


@router.get("/notifications", response_class=HTMLResponse)
def notifications(request: Request, principal: CurrentUser, ctx: Ctx) -> HTMLResponse:
    m, a = outbox.messages, outbox.attempts
    state = request.query_params.get("state") or None
    kind = request.query_params.get("kind") or None
    with ctx.store.engine.connect() as conn:
        where = [_visible(conn, principal)]
        if state:
            where.append(m.c.state == state)
        if kind:
            where.append(m.c.kind == kind)
        rows = conn.execute(
            select(m).where(*where).order_by(m.c.id.desc()).limit(ctx.console.page_rows)
        ).all()
        attempts: dict[int, list[Any]] = {}
        if rows:
            for r in conn.execute(
                select(a)
                .where(a.c.message_pk.in_([r.id for r in rows]))
                .order_by(a.c.message_pk, a.c.attempt)
            ):
                attempts.setdefault(r.message_pk, []).append(r)
        tz = zone_name(conn, principal)
    can_resend = principal.role is not Role.CASHIER
    resent = request.query_params.get("resent")
    return ctx.render(
        request,
        "notifications.html",
        rows=rows,
        attempts=attempts,
        tz=tz,
        can_resend=can_resend,
        resent=resent,
        state=state or "",
        kind=kind or "",
        states=[s.value for s in MessageState],
    )


@router.post("/notifications/{message_pk}/resend")
def resend(message_pk: int, principal: Resender, _: CsrfChecked, ctx: Ctx) -> RedirectResponse:
    m = outbox.messages
    now = ctx.clock.now()
    with ctx.store.engine.begin() as conn:
        row = conn.execute(select(m).where(m.c.id == message_pk, _visible(conn, principal))).first()
        if row is None:
            raise ConsoleProblem(404, "problem.not_found")
        conn.execute(
            update(m)
            .where(m.c.id == message_pk)
            .values(state=MessageState.PENDING.value, attempts=0, next_attempt_at=now, lease_until=None)
        )
        audit.record(
            conn,
            at=now,
            actor=principal.username,
            action="notification.resend",
            target=f"message:{row.message_id}",
            mid=_payload_mid(row.payload),
            before={"state": row.state, "attempts": row.attempts, "delivered_at": row.delivered_at},
            after={"state": MessageState.PENDING.value, "attempts": 0},
        )
    return RedirectResponse(f"/console/notifications?resent={message_pk}", status_code=303)
