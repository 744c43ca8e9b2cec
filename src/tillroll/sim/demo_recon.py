"""The demo's end of day: reconciliation of its business day, and (``--serve``) the console.

After the terminals have settled (and so uploaded their journals, docs/terminal.md), the day is
reconciled the way the back office's nightly run would: the wallet's statement of the day is
fetched from the provider and imported, ``tillroll recon run`` matches the day as of the end of
its ageing window (a nightly run happens long after the last payment: nothing is "pending"
merely because the demo is fast), the automatic actions of what it found are taken
(``tillroll.recon.actions.apply_automatic``), and the terminals upload once more so that the
commands those actions left for them (a reprint, a refund retried) are run and acknowledged;
what they reported then resolves (or escalates) those exceptions (``follow_commands``).
What was found and what was done is printed.

With ``--serve`` the back office keeps running on the demo's data with a console user made for
the occasion (a merchant admin of the demo's merchant, a random password printed once), until
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import secrets
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from tillroll.clock import Clock
from tillroll.host.store import HostStore
from tillroll.recon.actions import ActionContext, ActionResult, apply_automatic, follow_commands
from tillroll.recon.run import ReconConfig, RunResult, run_day
from tillroll.recon.statement import StatementError, fetch_statement, import_statement
from tillroll.store.tables import recon_exceptions, terminal_commands
from tillroll.terminal import Terminal
from tillroll.terminal.wallet_config import WalletSettings

DEMO_USER = "demo-admin"


@dataclass
class ReconDay:
    """What the end-of-day reconciliation found and did."""

    business_date: str
    run: RunResult | None = None
    statement_rows: int = 0
    statement_problems: int = 0
    actions: list[ActionResult] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)  # terminal_commands after the uploads
    followed: list[ActionResult] = field(default_factory=list)  # exceptions closed by what terminals did
    problems: list[str] = field(default_factory=list)  # what kept it from running at all


def reconcile_day(
    store: HostStore,
    day: date,
    *,
    clock: Clock,
    base_url: str,
    terminals: Sequence[Terminal],
    wallet: WalletSettings | None,
    config: ReconConfig | None = None,
) -> ReconDay:
    """Import the day's wallet statement, run the reconciliation, take the automatic actions,
    let the terminals run the commands they were left (see the module docstring)."""
    config = config or ReconConfig()
    out = ReconDay(day.isoformat())
    if wallet is not None:
        bill_date = day.strftime("%Y%m%d")
        try:
            text = fetch_statement(wallet.url, mch_id=wallet.merchant, key=wallet.key, bill_date=bill_date)
            imported = import_statement(
                store.engine, text, mch_id=wallet.merchant, bill_date=bill_date, now=clock.now()
            )
        except StatementError as exc:
            out.problems.append(f"wallet statement not imported: {exc}")
        else:
            out.statement_rows, out.statement_problems = imported.rows, len(imported.problems)
    ctx = ActionContext(store=store, clock=clock, base_url=base_url, wallets={"*": wallet} if wallet else {})

    def after(ids: list[int]) -> None:
        out.actions.extend(apply_automatic(ctx, ids))

    # As of the end of the ageing window: what the nightly run would see (module docstring).
    as_of = clock.now() + timedelta(seconds=config.ageing_s + 1)
    out.run = run_day(store.engine, day, now=as_of, config=config, after=after)
    for term in terminals:  # the commands the actions left (reprint, retry refunds): run, reported
        term.upload_journal()
    out.followed = follow_commands(ctx)  # what the terminals reported closes (or escalates) those
    with store.engine.connect() as conn:
        out.commands = [
            dict(r)
            for r in conn.execute(
                select(
                    terminal_commands.c.id,
                    terminal_commands.c.tid,
                    terminal_commands.c.command,
                    terminal_commands.c.reference,
                    terminal_commands.c.state,
                    terminal_commands.c.outcome,
                ).order_by(terminal_commands.c.id)
            ).mappings()
        ]
    return out


def _exceptions(store: HostStore, ids: list[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    with store.engine.connect() as conn:
        rows = conn.execute(select(recon_exceptions).where(recon_exceptions.c.id.in_(ids))).mappings()
        return {r["id"]: dict(r) for r in rows}


def print_recon(console: Console, store: HostStore, day: ReconDay) -> None:
    """What was found, per class and one by one, and what was done about each."""
    console.rule(f"对账 Reconciliation of {day.business_date}")
    for problem in day.problems:
        console.print(f"[yellow]{problem}[/]")
    if day.statement_rows or day.statement_problems:
        console.print(
            f"钱包对账单 wallet statement: {day.statement_rows} rows imported, "
            f"{day.statement_problems} line(s) that could not be read"
        )
    run = day.run
    if run is None:
        return
    sources = run.summary.get("sources", {})
    if sources:
        console.print("sources: " + ", ".join(f"{k} {v}" for k, v in sources.items()))
    if not run.found:
        console.print("[green]no exception: the day reconciles / 无差异[/]")
    found = _exceptions(store, run.opened)
    by_exception: dict[int, list[ActionResult]] = {}
    for a in day.actions:
        by_exception.setdefault(a.exception_id, []).append(a)
    table = Table(title="found and done / 差异与处理", show_lines=False, pad_edge=False)
    for col in ("#", "class", "terminal", "reference", "amount", "planned", "done"):
        table.add_column(col, overflow="fold")
    for eid in run.opened:
        exc = found.get(eid, {})
        evidence = json.loads(exc.get("evidence") or "{}")
        reference = (
            exc.get("rrn")
            or exc.get("order_no")
            or (f"{exc.get('batch')}.{exc.get('stan')}" if exc.get("stan") else exc.get("key", ""))
        )
        amount = exc.get("amount_minor")
        done = "; ".join(
            f"{a.action.value}: {a.outcome.value} — {a.detail_en}" for a in by_exception.get(eid, [])
        )
        table.add_row(
            str(eid),
            str(exc.get("class", "")),
            str(exc.get("tid") or ""),
            str(reference),
            f"{amount / 100:.2f}" if isinstance(amount, int) else "",
            ", ".join(evidence.get("planned", [])),
            done or "(nothing automatic: in the queue)",
        )
    if run.opened:
        console.print(table)
    for cls, count in sorted(run.found.items()):
        console.print(f"  {cls}: {count}")
    console.print(f"opened {len(run.opened)} exception(s), {len(day.actions)} automatic action(s) taken")
    for cmd in day.commands:
        console.print(
            f"  terminal {cmd['tid']}: {cmd['command']} {cmd['reference'] or ''} → {cmd['state']}"
            + (f" ({cmd['outcome']})" if cmd["outcome"] else "")
        )
    for a in day.followed:
        console.print(f"  exception {a.exception_id}: {a.action.value} → {a.state.value if a.state else '?'}")


def make_demo_user(store: HostStore, mid: str, *, clock: Clock) -> tuple[str, str]:
    """A console log-in for the demo's merchant: (user, password), the password random."""
    from tillroll.console.users import Role, add_user

    password = secrets.token_urlsafe(12)
    add_user(store.engine, DEMO_USER, password, Role.MERCHANT_ADMIN, mid, now=clock.now())
    return DEMO_USER, password


# Told the console's address, user and password once it serves (tests log in with them).
Serving = Callable[[str, str, str], None]


def serve_until_stopped(
    console: Console,
    url: str,
    user: str,
    password: str,
    *,
    stop: threading.Event | None = None,
    on_serving: Serving | None = None,
) -> None:
    """Print the console's address and log-in, then wait for ``stop`` — set by Ctrl-C or SIGTERM
    when this runs in the main thread."""
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        console.rule("控制台 Console")
        console.print(f"the console runs on the demo's data: [bold]{url}/console[/]")
        console.print(
            f"log in as [bold]{user}[/] with password [bold]{password}[/] (商户管理员 merchant admin)"
        )
        console.print("Ctrl-C stops it / 按 Ctrl-C 停止")
        if on_serving is not None:
            on_serving(url, user, password)
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
