"""Refunds asked for in the console, with a supervisor's approval above the merchant's limit.

A request (``refund_requests``) names the terminal, the rail, the original payment (card:
``batch.trace``, a trace of the terminal's open batch, or the RRN — resolved against the host's
``transactions``; wallet: the order number) and the amount. At or below the merchant's limit
(:class:`OpsConfig`, per merchant or the default) it is approved at once; above it, it **waits**
(``awaiting_approval``) for a supervisor, a merchant admin or an operator — never a cashier, and
never the person who asked (four eyes). An approved refund goes to the terminal engine attached to
this web process (the terminal's own refund code: 0220 on the card rail, the wallet's refund
with its out_refund_no), and its request ends ``done`` or ``failed`` from the engine's outcome; a
refund whose outcome is not known yet stays ``approved`` (in doubt) and is looked at again when the
page is shown. Every change of a request writes an audit row in its transaction.

States (:data:`REQUEST_TRANSITIONS`)::

    awaiting_approval ──> approved ──> done | failed
            └───────────> rejected
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection, func, insert, select, update

from tillroll.console.audit import record
from tillroll.console.auth import ConsoleProblem, CsrfChecked, CurrentUser, Principal, require_role
from tillroll.console.context import ConsoleContext, Ctx
from tillroll.console.i18n import add
from tillroll.console.users import Role
from tillroll.money import AmountError, format_yuan, parse_yuan
from tillroll.store.tables import refund_requests, terminals, transactions

router = APIRouter()
APPROVERS = (Role.SUPERVISOR, Role.MERCHANT_ADMIN, Role.OPERATOR)
EXECUTE_WAIT_S = 25.0  # the approving request waits this long for the engine's answer

REQUEST_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "awaiting_approval": frozenset({"approved", "rejected"}),
    "approved": frozenset({"done", "failed"}),
    "rejected": frozenset(),
    "done": frozenset(),
    "failed": frozenset(),
}


@dataclass(frozen=True)
class OpsConfig:
    """The pages that act: the refund limit above which a supervisor must approve (fen)."""

    refund_limit_minor: int = 500_00
    refund_limits: Mapping[str, int] = field(default_factory=dict)  # per merchant id

    def __post_init__(self) -> None:
        for value in (self.refund_limit_minor, *self.refund_limits.values()):
            if not 0 <= value <= 10**12:
                raise ValueError("a refund limit is a number of fen within 0..10^12")


add(
    {
        "nav.refunds": ("退款审批", "Refunds"),
        "ref.title": ("退款", "Refunds"),
        "ref.new": ("申请退款", "Ask for a refund"),
        "ref.limit": (
            "超过 ¥{limit} 的退款需主管审批。",
            "Refunds above ¥{limit} need a supervisor's approval.",
        ),
        "ref.tid": ("终端", "Terminal"),
        "ref.rail": ("渠道", "Rail"),
        "ref.original": (
            "原交易（批次.凭证号、凭证号、参考号或订单号）",
            "Original (batch.trace, trace, RRN or order no.)",
        ),
        "ref.amount": ("金额（元）", "Amount (yuan)"),
        "ref.submit": ("提交", "Submit"),
        "ref.state": ("状态", "State"),
        "ref.by": ("申请人", "Asked by"),
        "ref.decided": ("审批人", "Decided by"),
        "ref.outcome": ("结果", "Outcome"),
        "ref.approve": ("批准", "Approve"),
        "ref.reject": ("拒绝", "Reject"),
        "ref.none": ("没有退款申请。", "No refund requests."),
        "ref.created": ("退款申请 {id}：{state}", "Refund request {id}: {state}"),
        "rstate.awaiting_approval": ("待审批", "awaiting approval"),
        "rstate.approved": ("已批准，处理中", "approved, in progress"),
        "rstate.rejected": ("已拒绝", "rejected"),
        "rstate.done": ("已退款", "refunded"),
        "rstate.failed": ("未成功", "failed"),
        "ref.own": ("不能审批自己提交的退款。", "You cannot approve a refund you asked for yourself."),
        "ref.not_waiting": ("此申请不在待审批状态。", "This request is not waiting for approval."),
        "ref.no_engine": (
            "该终端未连接到此后台：请在终端上执行退款。",
            "That terminal is not attached to this console: run the refund on the terminal.",
        ),
    }
)


class RefundRefused(ValueError):
    """Why a refund request is not taken, in 中文 and English."""


@dataclass(frozen=True)
class RefundAsk:
    mid: str
    tid: str
    rail: str  # card | wallet
    original_ref: str
    amount_minor: int


def ops_config(ctx: ConsoleContext) -> OpsConfig:
    cfg = ctx.extras.get("ops")
    return cfg if isinstance(cfg, OpsConfig) else OpsConfig()


def refund_limit_minor(ctx: ConsoleContext, mid: str) -> int:
    cfg = ops_config(ctx)
    return cfg.refund_limits.get(mid, cfg.refund_limit_minor)


def _resolve_card(conn: Connection, tid: str, ref: str) -> tuple[str, int]:
    """(batch.trace, what is left to refund) of an approved sale of the terminal."""
    t = transactions
    q = select(t).where(t.c.tid == tid, t.c.kind == "sale", t.c.status == "approved")
    ref = ref.strip()
    if "." in ref:
        batch, _, stan = ref.partition(".")
        q = q.where(t.c.batch == batch, t.c.stan == stan)
    elif len(ref) == 12:
        q = q.where(t.c.rrn == ref)
    elif ref.isdigit() and len(ref) <= 6:
        q = q.where(t.c.stan == ref.zfill(6))
    else:
        raise RefundRefused("原交易号格式不对 / name the sale by batch.trace, trace or its 12-character RRN")
    sale = conn.execute(q.order_by(t.c.id.desc()).limit(1)).mappings().first()
    if sale is None:
        raise RefundRefused(f"原交易不存在 / no approved sale {ref} on terminal {tid}")
    refunded = conn.execute(
        select(func.coalesce(func.sum(t.c.amount_minor), 0)).where(
            t.c.original_id == sale["id"], t.c.kind.in_(("refund", "auto_refund")), t.c.status == "approved"
        )
    ).scalar_one()
    return f"{sale['batch']}.{sale['stan']}", int(sale["amount_minor"]) - int(refunded)


def request_refund(ctx: ConsoleContext, principal: Principal, ask: RefundAsk, *, execute: bool = True) -> int:
    """Take a request (approved at once at or below the limit); returns its id."""
    if ask.amount_minor <= 0:
        raise RefundRefused("退款金额必须大于零 / the amount must be more than zero")
    now = ctx.clock.now()
    with ctx.store.engine.begin() as conn:
        mid = conn.execute(select(terminals.c.mid).where(terminals.c.tid == ask.tid)).scalar()
        if mid is None or not principal.sees(mid):
            raise RefundRefused(f"终端不存在 / no terminal {ask.tid} of yours")
        original = ask.original_ref.strip()
        if ask.rail == "card":
            original, left = _resolve_card(conn, ask.tid, original)
            if ask.amount_minor > left:
                raise RefundRefused(
                    f"退款金额超过可退金额 ¥{format_yuan(left)} / "
                    f"more than the ¥{format_yuan(left)} left to refund"
                )
        elif ask.rail != "wallet" or not original:
            raise RefundRefused("请填写订单号 / give the wallet order number")
        waits = ask.amount_minor > refund_limit_minor(ctx, mid)
        state = "awaiting_approval" if waits else "approved"
        rid = conn.execute(
            insert(refund_requests)
            .values(
                mid=mid,
                tid=ask.tid,
                rail=ask.rail,
                original_ref=original,
                amount_minor=ask.amount_minor,
                state=state,
                requested_by=principal.username,
                decided_by=None if waits else "limit",
                created_at=now,
                updated_at=now,
            )
            .returning(refund_requests.c.id)
        ).scalar_one()
        record(
            conn,
            at=now,
            actor=principal.username,
            action="refund.requested",
            target=f"refund_request:{rid}",
            mid=mid,
            after={"state": state, "amount_minor": ask.amount_minor, "rail": ask.rail, "original": original},
        )
    if not waits and execute:
        execute_refund(ctx, int(rid), actor=principal.username)
    return int(rid)


def _move(conn: Connection, row: Any, new: str, *, actor: str, now: Any, **values: Any) -> None:
    if new not in REQUEST_TRANSITIONS[row["state"]]:
        raise RefundRefused(f"{row['state']} -> {new}")
    conn.execute(
        update(refund_requests)
        .where(refund_requests.c.id == row["id"], refund_requests.c.state == row["state"])
        .values(state=new, updated_at=now, **values)
    )
    record(
        conn,
        at=now,
        actor=actor,
        action=f"refund.{new}",
        target=f"refund_request:{row['id']}",
        mid=row["mid"],
        before={"state": row["state"]},
        after={"state": new, **{k: v for k, v in values.items() if k != "updated_at"}},
    )


def execute_refund(ctx: ConsoleContext, request_id: int, *, actor: str) -> None:
    """Send an approved request to the attached terminal engine and record how it ended."""
    from tillroll.console.cashier_engine import CashierEngine, Operation, ScreenState

    engine = ctx.extras.get("cashier")
    with ctx.store.engine.connect() as conn:
        row = conn.execute(select(refund_requests).where(refund_requests.c.id == request_id)).mappings().one()
    if row["state"] != "approved":
        return
    if not isinstance(engine, CashierEngine) or engine.tid != row["tid"]:
        _set_outcome(ctx, row, {"waiting": "terminal not attached"})
        return
    if row["rail"] == "wallet":
        job = engine.submit(
            Operation.QR_REFUND, amount_minor=row["amount_minor"], order_no=row["original_ref"]
        )
    else:
        batch, _, trace = row["original_ref"].partition(".")
        job = engine.submit(Operation.REFUND, amount_minor=row["amount_minor"], trace=trace, batch=batch)
    _set_outcome(ctx, row, {"job": job.id})
    ended = engine.wait(job.id, EXECUTE_WAIT_S)
    if ended is not None and ended.state is not ScreenState.IN_DOUBT:
        _finish(ctx, request_id, ended.state is ScreenState.SUCCEEDED, ended.text, actor=actor)


def _set_outcome(ctx: ConsoleContext, row: Any, outcome: Mapping[str, Any]) -> None:
    with ctx.store.engine.begin() as conn:
        conn.execute(
            update(refund_requests)
            .where(refund_requests.c.id == row["id"])
            .values(outcome=json.dumps(outcome, ensure_ascii=False), updated_at=ctx.clock.now())
        )


def _finish(ctx: ConsoleContext, request_id: int, ok: bool, text: str, *, actor: str) -> None:
    now = ctx.clock.now()
    with ctx.store.engine.begin() as conn:
        row = conn.execute(select(refund_requests).where(refund_requests.c.id == request_id)).mappings().one()
        if row["state"] != "approved":
            return
        previous = json.loads(row["outcome"]) if row["outcome"] else {}
        _move(
            conn,
            row,
            "done" if ok else "failed",
            actor=actor,
            now=now,
            outcome=json.dumps({**previous, "text": text}, ensure_ascii=False),
        )


def _refresh(ctx: ConsoleContext, rows: list[dict[str, Any]]) -> None:
    """Approved requests whose engine job has ended since: record how."""
    from tillroll.console.cashier_engine import CashierEngine, ScreenState

    engine = ctx.extras.get("cashier")
    if not isinstance(engine, CashierEngine):
        return
    for r in rows:
        if r["state"] != "approved" or not r["outcome"]:
            continue
        job_id = json.loads(r["outcome"]).get("job")
        job = engine.job(job_id) if job_id else None
        if job is not None and job.state is not ScreenState.IN_DOUBT:
            _finish(ctx, r["id"], job.state is ScreenState.SUCCEEDED, job.text, actor="auto")


def _rows(ctx: ConsoleContext, principal: Principal) -> list[dict[str, Any]]:
    with ctx.store.engine.connect() as conn:
        rows = (
            conn.execute(
                select(refund_requests)
                .where(principal.scope(refund_requests.c.mid))
                .order_by(refund_requests.c.id.desc())
                .limit(ctx.console.page_rows)
            )
            .mappings()
            .all()
        )
    out = []
    for r in rows:
        v = dict(r)
        try:
            v["outcome_obj"] = json.loads(r["outcome"]) if r["outcome"] else {}
        except ValueError:
            v["outcome_obj"] = {"text": r["outcome"]}
        out.append(v)
    return out


def _page(
    request: Request,
    ctx: ConsoleContext,
    principal: Principal,
    *,
    note: str | None = None,
    bad: bool = False,
    status: int = 200,
) -> HTMLResponse:
    rows = _rows(ctx, principal)
    _refresh(ctx, rows)
    rows = _rows(ctx, principal)
    with ctx.store.engine.connect() as conn:
        tids = (
            conn.execute(
                select(terminals.c.tid).where(principal.scope(terminals.c.mid)).order_by(terminals.c.tid)
            )
            .scalars()
            .all()
        )
    limit = refund_limit_minor(ctx, principal.mid) if principal.mid else ops_config(ctx).refund_limit_minor
    return ctx.render(
        request,
        "refunds.html",
        status=status,
        rows=rows,
        tids=tids,
        limit=format_yuan(limit),
        can_approve=principal.role in APPROVERS,
        note=note,
        bad=bad,
    )


@router.get("/refunds", response_class=HTMLResponse)
def refunds(request: Request, principal: CurrentUser, ctx: Ctx) -> HTMLResponse:
    return _page(request, ctx, principal)


@router.post("/refunds", response_class=HTMLResponse)
def ask_refund(
    request: Request,
    principal: CsrfChecked,
    ctx: Ctx,
    tid: Annotated[str, Form()],
    rail: Annotated[str, Form()],
    original_ref: Annotated[str, Form()],
    amount: Annotated[str, Form()],
) -> HTMLResponse:
    try:
        amount_minor = parse_yuan(amount)
        rid = request_refund(ctx, principal, RefundAsk("", tid.strip(), rail, original_ref, amount_minor))
    except AmountError as exc:
        return _page(request, ctx, principal, note=str(exc), bad=True, status=400)
    except RefundRefused as exc:
        return _page(request, ctx, principal, note=str(exc), bad=True, status=400)
    return _page(request, ctx, principal, note=f"#{rid}")


def _decide(ctx: ConsoleContext, principal: Principal, request_id: int, new: str) -> None:
    now = ctx.clock.now()
    with ctx.store.engine.begin() as conn:
        row = (
            conn.execute(
                select(refund_requests).where(
                    refund_requests.c.id == request_id, principal.scope(refund_requests.c.mid)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise ConsoleProblem(404, "problem.not_found")
        if row["state"] != "awaiting_approval":
            raise RefundRefused("ref.not_waiting")
        if row["requested_by"] == principal.username:
            raise RefundRefused("ref.own")
        _move(conn, row, new, actor=principal.username, now=now, decided_by=principal.username)


@router.post("/refunds/{request_id}/approve", response_class=HTMLResponse)
def approve(
    request: Request,
    principal: CsrfChecked,
    _: Annotated[Principal, Depends(require_role(*APPROVERS))],
    ctx: Ctx,
    request_id: int,
) -> HTMLResponse:
    try:
        _decide(ctx, principal, request_id, "approved")
    except RefundRefused as exc:
        return _page(request, ctx, principal, note=str(exc), bad=True, status=409)
    execute_refund(ctx, request_id, actor=principal.username)
    return _page(request, ctx, principal, note=f"#{request_id}")


@router.post("/refunds/{request_id}/reject", response_class=HTMLResponse)
def reject(
    request: Request,
    principal: CsrfChecked,
    _: Annotated[Principal, Depends(require_role(*APPROVERS))],
    ctx: Ctx,
    request_id: int,
) -> HTMLResponse:
    try:
        _decide(ctx, principal, request_id, "rejected")
    except RefundRefused as exc:
        return _page(request, ctx, principal, note=str(exc), bad=True, status=409)
    return _page(request, ctx, principal, note=f"#{request_id}")
