"""The exception service: the one way anything acts on a reconciliation exception.

The CLI, the automatic actions of a reconciliation run (:func:`apply_automatic`) and the console
(:func:`act`, :func:`act_many`) all come here. One action is:

1. read the exception; a call to the wallet provider (reverse, refund again) is made now, with
   no database transaction open across the network;
2. in **one transaction**, with the exception's row locked: the action's effect on the store
   (a host-side card reversal, a terminal command, the messages in the notify outbox, the
   exception's state and owner), its ``recon_actions`` row with the outcome, and its audit row.
   A failed action writes its row too and leaves the exception's state where it was.

Effects (``action_effects``): ``reverse`` undoes a charge the terminal never saw — on the card rail
through the host's own reversal handler (so a later 0400 from the terminal finds it reversed
and changes nothing), on the wallet rail with the provider's reverse call; ``reprint`` and the
card rail's ``retry_refund`` are terminal commands (delivered with the terminal's next journal
upload); the wallet rail's ``retry_refund`` asks the provider for the same refund again (same
out_refund_no: idempotent) and past ``retry_limit`` tries becomes ``escalate``; messages go
through the notify outbox (``tillroll.notify.fan_out``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, exists, func, insert, or_, select, update

from tillroll.clock import Clock, SystemClock
from tillroll.console import audit
from tillroll.host.config import HostConfig
from tillroll.host.store import HostStore
from tillroll.notify.facts import AlertKind
from tillroll.notify.outbox import MessageKind
from tillroll.recon import action_effects as fx
from tillroll.recon import action_messages as msg
from tillroll.recon import action_wallet as wallet
from tillroll.recon.model import (
    AUTOMATIC_ACTIONS,
    EXCEPTION_FINAL,
    ActionKind,
    ActionOutcome,
    ExceptionClass,
    ExceptionState,
    check_transition,
)
from tillroll.store import inserted_id
from tillroll.store.tables import recon_actions, recon_exceptions
from tillroll.terminal.wallet_config import WalletSettings

AUTO = "auto"
RETRY_LIMIT_DEFAULT = 3
# The actions whose effect is a call to the wallet provider, made before the transaction.
_REMOTE = frozenset({ActionKind.REVERSE, ActionKind.RETRY_REFUND})
# The state an exception moves to when an action succeeds (None: it stays where it is).
_STATE_AFTER: Mapping[ActionKind, ExceptionState | None] = {
    ActionKind.REVERSE: ExceptionState.RESOLVED,  # the charge is undone: nothing is left to do
    ActionKind.REPRINT: ExceptionState.IN_PROGRESS,  # until the terminal reports it printed
    ActionKind.SEND_E_RECEIPT: ExceptionState.IN_PROGRESS,
    ActionKind.RETRY_REFUND: ExceptionState.IN_PROGRESS,
    ActionKind.ESCALATE: ExceptionState.OPEN,  # back in the queue, for a person
    ActionKind.CONTACT_CUSTOMER: ExceptionState.IN_PROGRESS,
    ActionKind.SEND_NOTICE: ExceptionState.IN_PROGRESS,
    ActionKind.ALERT: ExceptionState.IN_PROGRESS,
    ActionKind.ASSIGN: ExceptionState.IN_PROGRESS,
    ActionKind.RESOLVE: ExceptionState.RESOLVED,
    ActionKind.WRITE_OFF: ExceptionState.WRITTEN_OFF,
    ActionKind.NOTE: None,
}


class ActionError(ValueError):
    """The service was asked something it cannot take (an unknown action name)."""


@dataclass(frozen=True)
class ActionContext:
    """What the service needs, injected: the store (engine and key store), the clock, the
    address customers open (e-receipt links), the wallets by merchant id (``"*"``: any merchant)
    and the host's settings (its reversal answers as the host would)."""

    store: HostStore
    clock: Clock = field(default_factory=SystemClock)
    base_url: str = "http://127.0.0.1:8080"
    wallets: Mapping[str, WalletSettings] = field(default_factory=dict)
    host_config: HostConfig = field(default_factory=HostConfig)
    retry_limit: int = RETRY_LIMIT_DEFAULT

    def __post_init__(self) -> None:
        if not 1 <= self.retry_limit <= 20:
            raise ActionError("retry_limit must be within 1..20")


@dataclass(frozen=True)
class ActionResult:
    exception_id: int
    action: ActionKind  # what was done (retry_refund past the limit is recorded as escalate)
    outcome: ActionOutcome
    detail_zh: str
    detail_en: str
    state: ExceptionState | None  # the exception's state after it; None: no such exception
    action_id: int | None = None  # the recon_actions row

    @property
    def ok(self) -> bool:
        return self.outcome in (ActionOutcome.DONE, ActionOutcome.QUEUED, ActionOutcome.SKIPPED)

    def detail(self, lang: str = "zh") -> str:
        return self.detail_en if lang == "en" else self.detail_zh


def _load(conn: Connection, exception_id: int, *, lock: bool) -> fx.Exc | None:
    query = select(recon_exceptions).where(recon_exceptions.c.id == exception_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return None if row is None else fx.Exc.from_row(row)


def _tries(conn: Connection, exception_id: int, action: ActionKind) -> int:
    return int(
        conn.execute(
            select(func.count()).where(
                recon_actions.c.exception_id == exception_id,
                recon_actions.c.action == action.value,
                recon_actions.c.outcome != ActionOutcome.SKIPPED.value,
            )
        ).scalar_one()
    )


def _kind(action: ActionKind | str) -> ActionKind:
    try:
        return ActionKind(action)
    except ValueError:
        names = ", ".join(a.value for a in ActionKind)
        raise ActionError(f"{action!r} is not an action; the actions are: {names}") from None


def act(
    ctx: ActionContext,
    exception_id: int,
    action: ActionKind | str,
    *,
    actor: str,
    note: str | None = None,
) -> ActionResult:
    """Take ``action`` on exception ``exception_id`` for ``actor`` (a console user, or "auto").
    ``note``: the text of a note, the owner of an assign (default: the actor), or a remark kept
    with any other action. Never raises for an action that cannot be done: its outcome says so."""
    kind = _kind(action)
    ask: wallet.RefundAsk | None = None
    with ctx.store.engine.connect() as conn:
        exc = _load(conn, exception_id, lock=False)
        if exc is not None and kind is ActionKind.RETRY_REFUND:
            if _tries(conn, exception_id, kind) >= ctx.retry_limit:
                kind = ActionKind.ESCALATE
            elif exc.rail == "wallet":
                ask = wallet.refund_ask(conn, exc)
    if exc is None:
        return ActionResult(
            exception_id,
            kind,
            ActionOutcome.FAILED,
            f"没有编号为{exception_id}的异常记录。",
            f"there is no exception {exception_id}",
            None,
        )
    remote: fx.Effect | None = None
    if kind in _REMOTE and exc.rail == "wallet" and exc.state not in EXCEPTION_FINAL:
        remote = wallet.wallet_call(ctx.wallets, exc, kind, ask)  # the network, with no transaction open
    with ctx.store.engine.begin() as conn:
        locked = _load(conn, exception_id, lock=True)
        assert locked is not None  # exceptions are never deleted
        return _apply(ctx, conn, locked, kind, actor, note, remote)


def _apply(
    ctx: ActionContext,
    conn: Connection,
    exc: fx.Exc,
    kind: ActionKind,
    actor: str,
    note: str | None,
    remote: fx.Effect | None,
) -> ActionResult:
    now = ctx.clock.now()
    if exc.state in EXCEPTION_FINAL and kind is not ActionKind.NOTE:
        effect = fx.Effect.failed(
            f"该异常已{fx.STATE_ZH[exc.state]}，不再处理；如需补充请添加备注。",
            f"the exception is already {exc.state.replace('_', ' ')}; only a note can be added",
        )
    elif remote is not None:
        effect = remote
    else:
        env = fx.Env(
            conn=conn,
            now=now,
            keystore=ctx.store.keystore,
            base_url=ctx.base_url,
            host_config=ctx.host_config,
            actor=actor,
        )
        effect = _local_effect(env, exc, kind, note)
    before = {"state": exc.state.value, "owner": exc.owner}
    state, owner = exc.state, exc.owner
    if effect.outcome is not ActionOutcome.FAILED:
        target = effect.state if effect.state is not None else _STATE_AFTER[kind]
        if target is not None and target is not state:
            check_transition(exc.id, state, target)
            state = target
        if kind is ActionKind.ASSIGN:
            owner = (note or actor).strip()[:64] or actor
        elif owner is None and state is ExceptionState.IN_PROGRESS:
            owner = actor
        elif kind is ActionKind.ESCALATE:
            owner = None  # nobody has it any more: a person must take it
    detail: dict[str, Any] = {"zh": effect.zh, "en": effect.en, **effect.data}
    if note and kind is not ActionKind.ASSIGN:
        detail["note"] = note[:2000]
    action_id = inserted_id(
        conn.execute(
            insert(recon_actions).values(
                exception_id=exc.id,
                action=kind.value,
                actor=actor,
                outcome=effect.outcome.value,
                detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
                at=now,
            )
        )
    )
    if (state, owner) != (exc.state, exc.owner):
        conn.execute(
            update(recon_exceptions)
            .where(recon_exceptions.c.id == exc.id)
            .values(state=state.value, owner=owner, updated_at=now)
        )
    audit.record(
        conn,
        at=now,
        actor=actor,
        action=f"recon.{kind.value}",
        target=f"recon_exception:{exc.id}",
        mid=exc.mid,
        before=before,
        after={"state": state.value, "owner": owner, "outcome": effect.outcome.value, "detail": effect.en},
    )
    return ActionResult(exc.id, kind, effect.outcome, effect.zh, effect.en, state, action_id)


def _local_effect(env: fx.Env, exc: fx.Exc, kind: ActionKind, note: str | None) -> fx.Effect:
    if kind is ActionKind.REVERSE:
        if exc.rail == "card":
            return fx.reverse_card(env, exc)
        return fx.Effect.failed(
            "这笔交易不是银行卡或钱包交易，无法冲正。",
            f"a {exc.rail or 'terminal'} exception has no charge to reverse",
        )
    if kind is ActionKind.REPRINT:
        return fx.terminal_command(env, exc, "reprint")
    if kind is ActionKind.RETRY_REFUND:
        if exc.rail == "card":
            return fx.terminal_command(env, exc, "retry_refunds")
        return fx.Effect.failed("这笔退款不属于银行卡或钱包。", "this exception has no refund to retry")
    if kind is ActionKind.SEND_E_RECEIPT:
        return msg.send_e_receipt(env, exc)
    if kind is ActionKind.CONTACT_CUSTOMER:
        return msg.tell_customer(env, exc, MessageKind.PAYMENT_FOLLOW_UP)
    if kind is ActionKind.SEND_NOTICE:
        return msg.tell_customer(env, exc, MessageKind.PAYMENT_CANCELLED)
    if kind is ActionKind.ALERT:
        return msg.alert_merchant(env, exc, AlertKind.SIGN_IN_FAILURES)
    if kind is ActionKind.ESCALATE:
        told = msg.alert_merchant(env, exc, AlertKind.RECON_ESCALATED)
        tail_zh = "已通知商户。" if told.outcome is ActionOutcome.QUEUED else told.zh
        tail_en = "the merchant is alerted" if told.outcome is ActionOutcome.QUEUED else told.en
        return fx.Effect.done(
            f"自动重试已达上限，转人工处理；{tail_zh}", f"retries used up: passed to a person; {tail_en}"
        )
    if kind is ActionKind.ASSIGN:
        owner = (note or env.actor).strip() or env.actor
        return fx.Effect.done(f"由{owner}负责处理。", f"taken by {owner}")
    if kind is ActionKind.RESOLVE:
        return fx.Effect.done("已标记为解决。", "marked resolved")
    if kind is ActionKind.WRITE_OFF:
        return fx.Effect.done(
            "已核销（不再追收或退还）。", "written off (nothing more is collected or returned)"
        )
    return fx.Effect.done("已添加备注。", "note added")


def act_many(
    ctx: ActionContext,
    ids: Iterable[int],
    action: ActionKind | str,
    *,
    actor: str,
    note: str | None = None,
) -> list[ActionResult]:
    """:func:`act` on each id in turn, each in its own transaction: one's failure is its own."""
    kind = _kind(action)
    return [act(ctx, int(i), kind, actor=actor, note=note) for i in dict.fromkeys(ids)]


def planned_actions(klass: ExceptionClass, evidence: Mapping[str, Any]) -> tuple[ActionKind, ...]:
    """The automatic actions of one exception: the matcher's ``planned`` list when it wrote one,
    else the class's (charged_no_receipt picks its branch by ``terminal_saw_approval``)."""
    planned = evidence.get("planned")
    if isinstance(planned, list):
        return tuple(ActionKind(p) for p in planned if p in ActionKind.__members__.values())
    if klass is ExceptionClass.CHARGED_NO_RECEIPT:
        if evidence.get("terminal_saw_approval"):
            return (ActionKind.REPRINT, ActionKind.SEND_E_RECEIPT)
        return (ActionKind.REVERSE,)
    if klass is ExceptionClass.REFUND_STUCK:
        return (ActionKind.RETRY_REFUND,)  # escalates by itself past the limit
    return AUTOMATIC_ACTIONS[klass]


def apply_automatic(
    ctx: ActionContext, exception_ids: Iterable[int], *, actor: str = AUTO
) -> list[ActionResult]:
    """The automatic actions of the exceptions a reconciliation run opened (or found again).
    An action already done or queued for an exception is not taken twice (a rerun of the day
    is a no-op); a final exception is left alone."""
    results: list[ActionResult] = []
    ids = list(dict.fromkeys(int(i) for i in exception_ids))
    for exception_id in ids:
        with ctx.store.engine.connect() as conn:
            exc = _load(conn, exception_id, lock=False)
            if exc is None or exc.state in EXCEPTION_FINAL:
                continue
            done = set(
                conn.execute(
                    select(recon_actions.c.action).where(
                        recon_actions.c.exception_id == exception_id,
                        recon_actions.c.outcome.in_((ActionOutcome.DONE.value, ActionOutcome.QUEUED.value)),
                    )
                ).scalars()
            )
        for kind in planned_actions(exc.klass, exc.evidence):
            # a stuck refund is retried by every run until the limit, then escalated once
            repeatable = kind is ActionKind.RETRY_REFUND and ActionKind.ESCALATE.value not in done
            if kind.value in done and not repeatable:
                continue
            result = act(ctx, exception_id, kind, actor=actor)
            results.append(result)
            if result.state in EXCEPTION_FINAL:
                break
    store_diagnoses(ctx, ids)
    return results


def results_json(results: Iterable[ActionResult]) -> list[dict[str, Any]]:
    """For the CLI's and the run's summaries."""
    return [
        {
            "exception_id": r.exception_id,
            "action": r.action.value,
            "outcome": r.outcome.value,
            "state": None if r.state is None else r.state.value,
            "detail": r.detail_en,
            "detail_en": r.detail_en,
            "detail_zh": r.detail_zh,
        }
        for r in results
    ]


def refunds_due(ctx: ActionContext, *, every_s: int) -> list[int]:
    """The stuck refunds to retry now: not final, not escalated, last retried over ``every_s``
    seconds ago (or never). A run opens an exception once; the schedule retries it from here."""
    e, a = recon_exceptions, recon_actions
    last = (
        select(a.c.exception_id, func.max(a.c.at).label("last"))
        .where(a.c.action == ActionKind.RETRY_REFUND.value)
        .group_by(a.c.exception_id)
        .subquery("last")
    )
    escalated = exists().where(a.c.exception_id == e.c.id, a.c.action == ActionKind.ESCALATE.value)
    before = ctx.clock.now() - timedelta(seconds=every_s)
    query = (
        select(e.c.id)
        .outerjoin(last, last.c.exception_id == e.c.id)
        .where(
            e.c["class"] == ExceptionClass.REFUND_STUCK.value,
            e.c.state.not_in([s.value for s in EXCEPTION_FINAL]),
            ~escalated,
            or_(last.c.last.is_(None), last.c.last < before),
        )
        .order_by(e.c.id)
    )
    with ctx.store.engine.connect() as conn:
        return [int(i) for i in conn.execute(query).scalars()]


def store_diagnoses(ctx: ActionContext, exception_ids: Iterable[int]) -> int:
    """Each exception's ``diagnosis`` (JSON: zh, en), written from the evidence as it stands
    after its actions: what the queue shows beside the record. Returns how many were written."""
    from tillroll.recon.diagnose import diagnose

    written = 0
    for exception_id in exception_ids:
        with ctx.store.engine.begin() as conn:
            exc = _load(conn, exception_id, lock=False)
            reference = None if exc is None else (exc.rrn or exc.order_no or exc.reference)
            if exc is None or reference is None:
                continue
            found = diagnose(conn, reference)
            if not found.found:
                continue
            text = json.dumps({"zh": found.text("zh"), "en": found.text("en")}, ensure_ascii=False)
            conn.execute(
                update(recon_exceptions).where(recon_exceptions.c.id == exc.id).values(diagnosis=text)
            )
            written += 1
    return written


def follow_commands(ctx: ActionContext) -> list[ActionResult]:
    """Close the loop on terminal commands: an exception in progress whose commands the terminal
    all reported done is resolved (the slip is reprinted, the refunds retried); one whose command
    failed is escalated to a person. The outcome the terminal reported is the note."""
    from tillroll.store.tables import terminal_commands as c

    e = recon_exceptions
    query = (
        select(c.c.exception_id, c.c.state, c.c.outcome, c.c.command)
        .join(e, e.c.id == c.c.exception_id)
        .where(e.c.state == ExceptionState.IN_PROGRESS.value)
        .order_by(c.c.exception_id, c.c.id)
    )
    by_exception: dict[int, list[Any]] = {}
    with ctx.store.engine.connect() as conn:
        for row in conn.execute(query):
            by_exception.setdefault(int(row.exception_id), []).append(row)
    results: list[ActionResult] = []
    for exception_id, commands in by_exception.items():
        states = {str(r.state) for r in commands}
        told = "; ".join(f"{r.command}: {r.outcome}" for r in commands if r.outcome)[:500] or None
        if "failed" in states:
            results.append(act(ctx, exception_id, ActionKind.ESCALATE, actor=AUTO, note=told))
        elif states == {"done"}:
            results.append(act(ctx, exception_id, ActionKind.RESOLVE, actor=AUTO, note=told))
    return results
