"""Terminals: sign-in state and key age (the host's sessions), batch, last seen, pending
reversals, printer (the terminal's last status upload), and their journal-loss, cut-over and other
alerts (the facts they and the host announced)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection, func, select

from tillroll.console.auth import CurrentUser, Principal
from tillroll.console.context import Ctx
from tillroll.console.i18n import add
from tillroll.console.queries import zone_name
from tillroll.store.tables import backoffice_facts, sessions, settlements, terminal_status, terminals

router = APIRouter()
ALERTS_SHOWN = 8  # newest alerts per terminal

add(
    {
        "term.title": ("终端", "Terminals"),
        "term.signed_in": ("签到", "Signed in"),
        "term.key_age": ("密钥时长", "Key age"),
        "term.key_expires": ("密钥到期", "Key expires"),
        "term.batch": ("批次", "Batch"),
        "term.last_seen": ("最后上报", "Last seen"),
        "term.reversals": ("待冲正", "Pending reversals"),
        "term.printer": ("打印机", "Printer"),
        "term.events": ("事件", "Events"),
        "term.host_closed": ("主机结批", "Closed by the host"),
        "term.yes": ("是", "yes"),
        "term.no": ("否", "no"),
        "term.never": ("从未", "never"),
        "term.receipts_owed": ("待补打小票", "Receipts owed"),
        "term.open_refunds": ("未完成退款", "Refunds not final"),
        "term.open_wallet_orders": ("未完成扫码单", "Wallet orders not final"),
    }
)


@dataclass
class TerminalRow:
    tid: str
    mid: str
    status: str
    session_state: str | None = None
    signed_in_at: datetime | None = None
    key_expires_at: datetime | None = None
    key_age: str | None = None
    batch: str | None = None
    device_signed_in: bool | None = None
    pending_reversals: int | None = None
    printer: str | None = None
    last_seen: datetime | None = None
    device_status: dict[str, Any] = field(default_factory=dict)
    alerts: list[tuple[datetime, str, str]] = field(default_factory=list)  # at, alert, detail
    host_closed: list[tuple[str, datetime]] = field(default_factory=list)  # batch, settled_at


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def terminal_rows(conn: Connection, principal: Principal, *, now: datetime) -> list[TerminalRow]:
    newest = (
        select(sessions.c.tid, func.max(sessions.c.id).label("id"))
        .group_by(sessions.c.tid)
        .subquery("newest")
    )
    ts = terminal_status
    q = (
        select(
            terminals.c.tid,
            terminals.c.mid,
            terminals.c.status,
            sessions.c.state.label("session_state"),
            sessions.c.signed_in_at,
            sessions.c.expires_at,
            ts.c.batch,
            ts.c.signed_in,
            ts.c.pending_reversals,
            ts.c.printer,
            ts.c.status.label("device_status"),
            ts.c.received_at,
        )
        .select_from(
            terminals.outerjoin(newest, newest.c.tid == terminals.c.tid)
            .outerjoin(sessions, sessions.c.id == newest.c.id)
            .outerjoin(ts, ts.c.tid == terminals.c.tid)
        )
        .where(principal.scope(terminals.c.mid))
        .order_by(terminals.c.tid)
    )
    rows: dict[str, TerminalRow] = {}
    for r in conn.execute(q):
        row = TerminalRow(r.tid, r.mid, r.status, r.session_state, r.signed_in_at, r.expires_at)
        if r.signed_in_at is not None:
            row.key_age = _age(now - r.signed_in_at)
        if r.received_at is not None:
            row.batch, row.device_signed_in = r.batch, bool(r.signed_in)
            row.pending_reversals, row.printer, row.last_seen = r.pending_reversals, r.printer, r.received_at
            try:
                row.device_status = json.loads(r.device_status)
            except ValueError:
                row.device_status = {"unreadable": r.device_status[:80]}
        rows[r.tid] = row
    if not rows:
        return []
    f = backoffice_facts
    alerts = conn.execute(
        select(f.c.tid, f.c.payload, f.c.received_at)
        .where(f.c.kind == "merchant_alert", f.c.tid.in_(list(rows)))
        .order_by(f.c.received_at.desc())
        .limit(ALERTS_SHOWN * len(rows))
    )
    for a in alerts:
        row = rows[a.tid]
        if len(row.alerts) >= ALERTS_SHOWN:
            continue
        try:
            payload = json.loads(a.payload)
        except ValueError:
            payload = {}
        detail = ", ".join(f"{k}={payload[k]}" for k in ("batch", "count", "amount_minor") if k in payload)
        row.alerts.append((a.received_at, str(payload.get("alert", "?")), detail))
    closed = conn.execute(
        select(settlements.c.tid, settlements.c.batch, settlements.c.settled_at)
        .where(settlements.c.closed_by == "host", settlements.c.tid.in_(list(rows)))
        .order_by(settlements.c.settled_at.desc())
        .limit(ALERTS_SHOWN * len(rows))
    )
    for c in closed:
        rows[c.tid].host_closed.append((c.batch, c.settled_at))
    return list(rows.values())


@router.get("/terminals", response_class=HTMLResponse)
def terminals_page(request: Request, principal: CurrentUser, ctx: Ctx) -> HTMLResponse:
    now = ctx.clock.now()
    with ctx.store.engine.connect() as conn:
        rows = terminal_rows(conn, principal, now=now)
        tz = zone_name(conn, principal)
    return ctx.render(request, "terminals.html", rows=rows, tz=tz, now=now)
