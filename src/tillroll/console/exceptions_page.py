"""The exception queue: filter, look, act — one at a time or in bulk — through the exception
service (:mod:`tillroll.recon.actions`), the same one the CLI and the automatic run use.

Every user sees only their merchant's exceptions (operators all), in the SQL. Cashiers may look;
acting takes a supervisor, a merchant admin or an operator. A bulk action acts on each checked
exception by itself (``act_many``): each one's outcome is shown with it, one failure does not stop
the others. An id the user may not see is answered "not found", as if it did not exist.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection, select

from tillroll.console.auth import ConsoleProblem, CsrfChecked, CurrentUser, Principal, require_role
from tillroll.console.context import ConsoleContext, Ctx
from tillroll.console.i18n import add
from tillroll.console.users import Role
from tillroll.recon.actions import ActionContext, ActionResult, act_many
from tillroll.recon.model import ActionKind, ActionOutcome, ExceptionClass, ExceptionState
from tillroll.store.tables import recon_actions, recon_exceptions

router = APIRouter()

# The actions a person takes from the queue (the automatic ones are the run's).
QUEUE_ACTIONS = (
    ActionKind.REPRINT,
    ActionKind.SEND_E_RECEIPT,
    ActionKind.REVERSE,
    ActionKind.RETRY_REFUND,
    ActionKind.CONTACT_CUSTOMER,
    ActionKind.ASSIGN,
    ActionKind.RESOLVE,
    ActionKind.WRITE_OFF,
    ActionKind.NOTE,
)
ACTORS = (Role.SUPERVISOR, Role.MERCHANT_ADMIN, Role.OPERATOR)
BULK_MAX = 200

add(
    {
        "nav.exceptions": ("异常处理", "Exceptions"),
        "exc.title": ("异常队列", "Exception queue"),
        "exc.filter": ("筛选", "Filter"),
        "exc.class": ("类别", "Class"),
        "exc.state": ("状态", "State"),
        "exc.date": ("营业日", "Business day"),
        "exc.tid": ("终端", "Terminal"),
        "exc.any": ("全部", "Any"),
        "exc.amount": ("金额", "Amount"),
        "exc.ref": ("参考", "Reference"),
        "exc.owner": ("负责人", "Owner"),
        "exc.deadline": ("期限", "Deadline"),
        "exc.diagnosis": ("诊断", "Diagnosis"),
        "exc.evidence": ("证据", "Evidence"),
        "exc.actions": ("已执行的操作", "Actions taken"),
        "exc.act": ("执行", "Apply"),
        "exc.action": ("操作", "Action"),
        "exc.note": ("备注", "Note"),
        "exc.selected": ("对所选异常执行", "Apply to the checked exceptions"),
        "exc.none": ("没有符合条件的异常。", "No exception matches."),
        "exc.results": ("执行结果", "Outcomes"),
        "exc.none_checked": ("请先勾选要处理的异常。", "Check the exceptions to act on first."),
        "exc.too_many": ("一次最多处理 {n} 条。", "At most {n} at a time."),
        "exc.not_found": ("无此异常（或您无权查看）", "no such exception (or not yours to see)"),
        "exc.read_only": (
            "收银员只能查看异常；处理需主管或商户管理员。",
            "Cashiers can look at exceptions; acting on them takes a supervisor or merchant admin.",
        ),
        "exc.check_all": ("全选", "All"),
        "exc.open_n": ("共 {n} 条", "{n} in all"),
        **{
            f"action.{a.value}": pair
            for a, pair in {
                ActionKind.REVERSE: ("冲正（退回扣款）", "Reverse (give the money back)"),
                ActionKind.REPRINT: ("重打印凭条", "Reprint the slip"),
                ActionKind.SEND_E_RECEIPT: ("发送电子凭证", "Send the e-receipt"),
                ActionKind.RETRY_REFUND: ("重试退款", "Retry the refund"),
                ActionKind.ESCALATE: ("升级", "Escalate"),
                ActionKind.CONTACT_CUSTOMER: ("联系顾客", "Contact the customer"),
                ActionKind.SEND_NOTICE: ("发送通知", "Send the notice"),
                ActionKind.ALERT: ("告警", "Alert"),
                ActionKind.ASSIGN: ("认领", "Take it"),
                ActionKind.RESOLVE: ("标记已解决", "Resolve"),
                ActionKind.WRITE_OFF: ("核销", "Write off"),
                ActionKind.NOTE: ("添加备注", "Add a note"),
            }.items()
        },
        **{
            f"outcome.{o.value}": pair
            for o, pair in {
                ActionOutcome.DONE: ("完成", "done"),
                ActionOutcome.FAILED: ("失败", "failed"),
                ActionOutcome.SKIPPED: ("无需处理", "skipped"),
                ActionOutcome.QUEUED: ("已交付，待结果", "queued"),
            }.items()
        },
        **{
            f"xstate.{s.value}": pair
            for s, pair in {
                ExceptionState.OPEN: ("待处理", "open"),
                ExceptionState.IN_PROGRESS: ("处理中", "in progress"),
                ExceptionState.RESOLVED: ("已解决", "resolved"),
                ExceptionState.WRITTEN_OFF: ("已核销", "written off"),
            }.items()
        },
        **{
            f"xclass.{c.value}": pair
            for c, pair in {
                ExceptionClass.CHARGED_NO_RECEIPT: ("已扣款无凭证", "charged, no receipt"),
                ExceptionClass.RECEIPT_NO_PAYMENT: ("有凭证无入账", "receipt, no payment"),
                ExceptionClass.REFUND_STUCK: ("退款未完成", "refund stuck"),
                ExceptionClass.NOTIFIED_NOT_FINAL: ("已通知但未成功", "told paid, not final"),
                ExceptionClass.SIGNIN_FAILURES: ("签到失败", "sign-in failures"),
                ExceptionClass.AMOUNT_MISMATCH: ("金额不符", "amount mismatch"),
                ExceptionClass.MISSING_ON_ONE_SIDE: ("单边缺失", "missing on one side"),
                ExceptionClass.DUPLICATE: ("重复", "duplicate"),
            }.items()
        },
    }
)


def action_context(ctx: ConsoleContext) -> ActionContext:
    """The exception service's context for the console (what ``tillroll web`` attached, or the
    console's own store, clock and address)."""
    attached = ctx.extras.get("action_context")
    if isinstance(attached, ActionContext):
        return attached
    return ActionContext(store=ctx.store, clock=ctx.clock, base_url=ctx.base_url)


def _filters(cls: str, state: str, date: str, tid: str) -> dict[str, str]:
    out = {}
    if cls in {c.value for c in ExceptionClass}:
        out["cls"] = cls
    if state in {s.value for s in ExceptionState} | {"active"}:
        out["state"] = state
    if len(date) == 10 and date[4] == "-" and date[7] == "-":
        out["date"] = date
    if tid.isdigit() and len(tid) == 8:
        out["tid"] = tid
    return out


def queue_rows(conn: Connection, principal: Principal, f: dict[str, str], limit: int) -> list[dict[str, Any]]:
    t = recon_exceptions
    q = select(t).where(principal.scope(t.c.mid))
    if "cls" in f:
        q = q.where(t.c["class"] == f["cls"])
    state = f.get("state", "active")
    if state == "active":
        q = q.where(t.c.state.in_((ExceptionState.OPEN.value, ExceptionState.IN_PROGRESS.value)))
    else:
        q = q.where(t.c.state == state)
    if "date" in f:
        q = q.where(t.c.business_date == f["date"])
    if "tid" in f:
        q = q.where(t.c.tid == f["tid"])
    rows = conn.execute(q.order_by(t.c.id.desc()).limit(limit)).mappings().all()
    return [_view(r) for r in rows]


def _view(r: Any) -> dict[str, Any]:
    v = dict(r)
    v["cls"] = r["class"]
    v["ref"] = r["order_no"] or r["rrn"] or (f"{r['batch']}.{r['stan']}" if r["stan"] else "") or r["key"]
    try:
        diagnosis = json.loads(r["diagnosis"]) if r["diagnosis"] else None
    except ValueError:
        diagnosis = {"zh": r["diagnosis"], "en": r["diagnosis"]}
    v["diagnosis_obj"] = diagnosis if isinstance(diagnosis, dict) else None
    return v


def _visible_ids(conn: Connection, principal: Principal, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    t = recon_exceptions
    rows = conn.execute(select(t.c.id).where(t.c.id.in_(ids), principal.scope(t.c.mid))).scalars()
    return {int(i) for i in rows}


@router.get("/exceptions", response_class=HTMLResponse)
def queue(
    request: Request,
    principal: CurrentUser,
    ctx: Ctx,
    cls: str = "",
    state: str = "active",
    date: str = "",
    tid: str = "",
) -> HTMLResponse:
    f = _filters(cls, state, date, tid)
    f.setdefault("state", "active")
    with ctx.store.engine.connect() as conn:
        rows = queue_rows(conn, principal, f, ctx.console.page_rows)
    return _page(request, ctx, principal, rows, f, results=None, problem=None)


def _page(
    request: Request,
    ctx: ConsoleContext,
    principal: Principal,
    rows: list[dict[str, Any]],
    f: dict[str, str],
    *,
    results: list[dict[str, Any]] | None,
    problem: str | None,
    status: int = 200,
) -> HTMLResponse:
    return ctx.render(
        request,
        "exceptions.html",
        status=status,
        rows=rows,
        f=f,
        classes=list(ExceptionClass),
        states=list(ExceptionState),
        actions=QUEUE_ACTIONS,
        can_act=principal.role in ACTORS,
        results=results,
        problem=problem,
        bulk_max=BULK_MAX,
    )


def _result_view(r: ActionResult, lang: str) -> dict[str, Any]:
    return {
        "id": r.exception_id,
        "action": r.action.value,
        "outcome": r.outcome.value,
        "ok": r.ok,
        "detail": r.detail(lang),
        "state": r.state.value if r.state is not None else None,
    }


@router.post("/exceptions/act", response_class=HTMLResponse)
def act_on(
    request: Request,
    principal: CsrfChecked,
    _: Annotated[Principal, Depends(require_role(*ACTORS))],
    ctx: Ctx,
    action: Annotated[str, Form()],
    ids: Annotated[list[int] | None, Form()] = None,
    note: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "",
) -> HTMLResponse:
    lang = principal.lang
    try:
        kind = ActionKind(action)
    except ValueError:
        raise ConsoleProblem(400, "problem.bad_input", detail=f"action {action!r}") from None
    if kind not in QUEUE_ACTIONS:
        raise ConsoleProblem(400, "problem.bad_input", detail=f"action {action!r}")
    wanted = list(dict.fromkeys(ids or []))
    f = {"state": "active"}
    problem: str | None = None
    results: list[dict[str, Any]] = []
    if not wanted:
        problem = "exc.none_checked"
    elif len(wanted) > BULK_MAX:
        problem = "exc.too_many"
    else:
        with ctx.store.engine.connect() as conn:
            visible = _visible_ids(conn, principal, wanted)
        allowed = [i for i in wanted if i in visible]
        done = act_many(
            action_context(ctx), allowed, kind, actor=principal.username, note=note.strip() or None
        )
        by_id = {r.exception_id: r for r in done}
        for i in wanted:
            if i in by_id:
                results.append(_result_view(by_id[i], lang))
            else:
                results.append({"id": i, "action": kind.value, "outcome": "failed", "ok": False,
                                "detail": None, "state": None, "missing": True})  # fmt: skip
    if back.startswith("/console/exceptions/") and back[len("/console/exceptions/") :].isdigit():
        return exception_page(request, principal, ctx, int(back.rsplit("/", 1)[1]), results=results)
    with ctx.store.engine.connect() as conn:
        rows = queue_rows(conn, principal, f, ctx.console.page_rows)
    return _page(request, ctx, principal, rows, f, results=results, problem=problem)


@router.get("/exceptions/{exception_id}", response_class=HTMLResponse)
def exception_detail(request: Request, principal: CurrentUser, ctx: Ctx, exception_id: int) -> HTMLResponse:
    return exception_page(request, principal, ctx, exception_id, results=None)


def exception_page(
    request: Request,
    principal: Principal,
    ctx: ConsoleContext,
    exception_id: int,
    *,
    results: list[dict[str, Any]] | None,
) -> HTMLResponse:
    t = recon_exceptions
    with ctx.store.engine.connect() as conn:
        row = (
            conn.execute(select(t).where(t.c.id == exception_id, principal.scope(t.c.mid))).mappings().first()
        )
        if row is None:
            raise ConsoleProblem(404, "problem.not_found")
        taken = (
            conn.execute(
                select(recon_actions)
                .where(recon_actions.c.exception_id == exception_id)
                .order_by(recon_actions.c.id)
            )
            .mappings()
            .all()
        )
    try:
        evidence = json.dumps(json.loads(row["evidence"]), ensure_ascii=False, indent=2, sort_keys=True)
    except ValueError:
        evidence = row["evidence"]
    history = []
    for a in taken:
        detail = a["detail"] or ""
        try:
            parsed = json.loads(detail) if detail else {}
            text = (
                parsed.get(principal.lang) or parsed.get("en") or detail
                if isinstance(parsed, dict)
                else detail
            )
        except ValueError:
            text = detail
        history.append({**dict(a), "text": text})
    return ctx.render(
        request,
        "exception.html",
        x=_view(row),
        evidence=evidence,
        history=history,
        actions=QUEUE_ACTIONS,
        can_act=principal.role in ACTORS,
        results=results,
        final=row["state"] in (ExceptionState.RESOLVED.value, ExceptionState.WRITTEN_OFF.value),
    )
