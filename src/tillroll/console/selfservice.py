"""Customer self-service (no log-in): /console/help, linked from SMS, e-mail and the slip's QR.

"I was charged but got no receipt" / "my refund has not arrived" → the customer gives the card's
last 4 digits or the order number, the amount and the day → the payment's true state and its
e-receipt, or a case opened for the merchant with a reference to keep
(:mod:`selfservice_lookup` does the finding). Answers name nothing the customer did not give.

Abuse bounds: look-ups are rate-limited per client address (``PER_CLIENT`` per ``WINDOW_S``)
and in all (``IN_ALL``), answered 429 past them; cases likewise (``CASES_PER_CLIENT``). The forms
carry a token signed with a key of this process (valid ``FORM_TTL_S``), so a form posted from
another site, or replayed much later, is refused — the public pages have no session to hang a
CSRF token on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from tillroll.console.context import ConsoleContext, Ctx
from tillroll.console.i18n import add
from tillroll.console.selfservice_lookup import (
    Claim,
    Finding,
    Lookup,
    Query,
    SelfServiceInputError,
    find_case,
    lookup,
    open_case,
    parse_query,
)

router = APIRouter()

WINDOW_S = 600.0
PER_CLIENT = 10
IN_ALL = 300
CASES_PER_CLIENT = 3
FORM_TTL_S = 3600
MAX_CLIENTS = 10_000

add(
    {
        "help.title": ("自助查询", "Self-service"),
        "help.intro": (
            "已扣款却没有凭证，或退款还没到账？填写以下信息查询这笔交易的真实状态。",
            "Charged but no receipt, or a refund that has not arrived? Look up what really happened.",
        ),
        "help.claim": ("您遇到的问题", "What happened"),
        "help_claim.no_receipt": ("已扣款但没有凭证", "I was charged but got no receipt"),
        "help_claim.refund_missing": ("退款未到账", "My refund has not arrived"),
        "help.last4": ("银行卡后四位", "Card's last 4 digits"),
        "help.or": ("或", "or"),
        "help.order": ("扫码支付订单号", "QR payment order number"),
        "help.amount": ("金额（元）", "Amount (yuan)"),
        "help.day": ("交易日期", "Date"),
        "help.contact": (
            "您的手机或邮箱（可选，便于商户联系）",
            "Your phone or e-mail (optional, for the merchant)",
        ),
        "help.submit": ("查询", "Look up"),
        "help.found": ("找到这笔交易", "Payment found"),
        "help.merchant": ("商户", "Merchant"),
        "help.when": ("时间", "Time"),
        "help.state": ("状态", "State"),
        "help.receipt": ("查看电子凭证", "Open the e-receipt"),
        "help.refunded": ("已退 ¥{amount}（{at}）", "¥{amount} refunded ({at})"),
        "help.refund_note": (
            "退款已由商户完成，银行入账通常需要1-7个工作日。",
            "The merchant's refund went through; banks usually take 1–7 working days to show it.",
        ),
        "truth.paid": ("支付成功", "Paid"),
        "truth.refunded": ("已全额退款", "Refunded in full"),
        "truth.partly_refunded": ("已部分退款", "Partly refunded"),
        "truth.refund_on_its_way": ("退款处理中", "Refund on its way"),
        "truth.not_charged": (
            "未扣款（已撤销或冲正），如有暂扣将退回",
            "Not charged (cancelled or reversed): any hold is released",
        ),
        "truth.not_final": ("终端尚未报告最终结果", "The terminal has not reported how it ended yet"),
        "help.not_found": (
            "没有找到与这些信息完全相符的一笔交易。请核对卡号后四位/订单号、金额和日期；"
            "如仍有问题，可提交给商户处理。",
            "We found no single payment matching all of these details. Check the digits, the amount "
            "and the date; if it still is not right, send it to the merchant.",
        ),
        "help.open_case": ("提交给商户", "Send to the merchant"),
        "help.case_opened": ("已提交给商户，您的查询编号：", "Sent to the merchant. Your reference:"),
        "help.case_keep": (
            "请保留此编号；商户会尽快处理，可凭编号查询进度。",
            "Keep this reference: the merchant will look into it, and you can check its progress with it.",
        ),
        "help.case_auto": (
            "这笔交易还有待商户处理的问题，我们已为您提交。",
            "This payment still needs the merchant's attention: we sent it to them for you.",
        ),
        "help.track": ("查询处理进度", "Check a reference"),
        "help.reference": ("查询编号", "Reference"),
        "help.case_state": ("处理状态：{state}", "Progress: {state}"),
        "help.no_case": ("没有这个查询编号。", "There is no such reference."),
        "help.slow": (
            "查询过于频繁，请 {minutes} 分钟后再试。",
            "Too many look-ups: please try again in {minutes} minutes.",
        ),
        "help.stale": ("表单已过期，请重新填写。", "This form has expired: please fill it in again."),
    }
)


class RateLimiter:
    """Sliding-window counts per key and in all, over the last ``window_s`` seconds (bounded
    memory: the least recently seen keys are forgotten past ``max_keys``)."""

    def __init__(self, per_key: int, in_all: int, window_s: float, max_keys: int = MAX_CLIENTS) -> None:
        self.per_key, self.in_all, self.window_s, self.max_keys = per_key, in_all, window_s, max_keys
        self._keys: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        edge = now - self.window_s
        with self._lock:
            while self._all and self._all[0] <= edge:
                self._all.popleft()
            seen = self._keys.pop(key, deque())
            while seen and seen[0] <= edge:
                seen.popleft()
            self._keys[key] = seen
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            if len(seen) >= self.per_key or len(self._all) >= self.in_all:
                return False
            seen.append(now)
            self._all.append(now)
            return True


_FORM_KEY = secrets.token_bytes(32)


def form_token(now: float | None = None) -> str:
    issued = str(int(time.time() if now is None else now))
    mac = hmac.new(_FORM_KEY, issued.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{issued}.{mac}"


def form_token_ok(token: str, now: float | None = None) -> bool:
    issued, _, mac = token.partition(".")
    if not issued.isdigit():
        return False
    want = hmac.new(_FORM_KEY, issued.encode(), hashlib.sha256).hexdigest()[:32]
    age = (time.time() if now is None else now) - int(issued)
    return hmac.compare_digest(mac, want) and 0 <= age <= FORM_TTL_S


def _limiters(ctx: ConsoleContext) -> tuple[RateLimiter, RateLimiter]:
    found = ctx.extras.get("selfservice_limits")
    if not isinstance(found, tuple):
        found = (RateLimiter(PER_CLIENT, IN_ALL, WINDOW_S), RateLimiter(CASES_PER_CLIENT, IN_ALL, WINDOW_S))
        ctx.extras["selfservice_limits"] = found
    return found


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "?"


def _form(
    request: Request,
    ctx: ConsoleContext,
    *,
    status: int = 200,
    problem: str | None = None,
    values: dict[str, str] | None = None,
    track: dict[str, str] | None = None,
) -> HTMLResponse:
    return ctx.render(
        request,
        "help.html",
        status=status,
        token=form_token(),
        problem=problem,
        v=values or {},
        claims=list(Claim),
        track=track,
    )


def _values(claim: str, amount: str, day: str, last4: str, order_no: str, contact: str) -> dict[str, str]:
    """The form's fields as given (shown again in the form when it is refused)."""
    return {
        "claim": claim,
        "amount": amount,
        "day": day,
        "last4": last4,
        "order_no": order_no,
        "contact": contact,
    }


def _query(
    request: Request, ctx: ConsoleContext, token: str, limiter: RateLimiter, values: dict[str, str]
) -> Query | HTMLResponse:
    """The customer's query, or the form again saying why not: a stale or foreign form, too many
    tries from this client (`limiter`), or details that do not parse."""
    if not form_token_ok(token):
        return _form(request, ctx, status=400, problem="help.stale", values=values)
    if not limiter.allow(_client(request)):
        return _form(request, ctx, status=429, problem="help.slow", values=values)
    try:
        return parse_query(**values)
    except SelfServiceInputError as exc:
        return _form(request, ctx, status=400, problem=str(exc), values=values)


@router.get("/help", response_class=HTMLResponse)
def help_form(request: Request, ctx: Ctx, ref: str = "") -> HTMLResponse:
    track = None
    if ref.strip():
        with ctx.store.engine.connect() as conn:
            case = find_case(conn, ref)
        track = {"ref": ref.strip().upper(), "state": case["state"] if case else ""}
    return _form(request, ctx, track=track)


@router.post("/help", response_class=HTMLResponse)
async def help_lookup(
    request: Request,
    ctx: Ctx,
    token: Annotated[str, Form()],
    claim: Annotated[str, Form()],
    amount: Annotated[str, Form()],
    day: Annotated[str, Form()],
    last4: Annotated[str, Form()] = "",
    order_no: Annotated[str, Form()] = "",
    contact: Annotated[str, Form()] = "",
) -> HTMLResponse:
    values = _values(claim, amount, day, last4, order_no, contact)
    lookups, cases = _limiters(ctx)
    q = _query(request, ctx, token, lookups, values)
    if isinstance(q, HTMLResponse):
        return q

    def work() -> tuple[Lookup, str | None]:
        with ctx.store.engine.begin() as conn:
            # the link on this page stays on this origin (the address the customer came to)
            found = lookup(conn, ctx.store.keystore, q, base_url="")
            reference = None
            if found.needs_case and cases.allow(_client(request)):
                reference, _ = open_case(conn, q, found, now=ctx.clock.now())
        return found, reference

    found, reference = await run_in_threadpool(work)
    return ctx.render(
        request,
        "help_result.html",
        found=found,
        F=Finding,
        reference=reference,
        token=form_token(),
        v=values,
        auto=reference is not None,
    )


@router.post("/help/case", response_class=HTMLResponse)
async def help_case(
    request: Request,
    ctx: Ctx,
    token: Annotated[str, Form()],
    claim: Annotated[str, Form()],
    amount: Annotated[str, Form()],
    day: Annotated[str, Form()],
    last4: Annotated[str, Form()] = "",
    order_no: Annotated[str, Form()] = "",
    contact: Annotated[str, Form()] = "",
) -> HTMLResponse:
    values = _values(claim, amount, day, last4, order_no, contact)
    _, cases = _limiters(ctx)
    q = _query(request, ctx, token, cases, values)
    if isinstance(q, HTMLResponse):
        return q

    def work() -> str:
        with ctx.store.engine.begin() as conn:
            found = lookup(conn, ctx.store.keystore, q, base_url=ctx.base_url)  # evidence: the full link
            reference, _ = open_case(conn, q, found, now=ctx.clock.now())
        return reference

    reference = await run_in_threadpool(work)
    return ctx.render(
        request, "help_result.html", found=None, F=Finding, reference=reference, token="", v={}, auto=False
    )
