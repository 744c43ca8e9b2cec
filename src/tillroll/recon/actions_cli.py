"""`tillroll recon act` and `tillroll recon exceptions`: the exception queue from a shell, through
the same service as the console (``tillroll.recon.actions``). ``tillroll recon run`` takes the
automatic actions itself, after matching."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from tillroll.recon.actions import (
    ActionContext,
    ActionError,
    ActionResult,
    act_many,
    results_json,
)
from tillroll.recon.model import ActionKind, ActionOutcome, ExceptionState

WALLET_KEY_ENV = "TILLROLL_WALLET_KEY"
DbOption = Annotated[
    str | None, typer.Option("--db", envvar="TILLROLL_DB", help="The back office's database URL.")
]
BaseUrlOption = Annotated[
    str, typer.Option("--base-url", help="The address customers open (e-receipt links).")
]
_MARK = {
    ActionOutcome.DONE: "✓",
    ActionOutcome.QUEUED: "→",
    ActionOutcome.SKIPPED: "·",
    ActionOutcome.FAILED: "✗",
}


def _wallets(url: str | None, mch_id: str | None, key_file: Path | None) -> dict[str, object]:
    """The wallet settings for the wallet actions: the key from a file or $TILLROLL_WALLET_KEY,
    never from the command line."""
    if url is None:
        return {}
    from tillroll.terminal.wallet_config import WalletConfigError, WalletSettings

    key = key_file.read_text().strip() if key_file is not None else os.environ.get(WALLET_KEY_ENV, "")
    try:
        return {"*": WalletSettings(url=url, merchant=mch_id or "", key=key)}
    except WalletConfigError as exc:
        typer.secho(f"bad input: {exc} (the key: --wallet-key-file or ${WALLET_KEY_ENV})", err=True, fg="red")
        raise typer.Exit(2) from None


def echo_results(results: list[ActionResult], lang: str | None = None) -> None:
    for r in results:
        state = "-" if r.state is None else r.state.value
        detail = (
            r.detail_en if lang == "en" else r.detail_zh if lang == "zh" else f"{r.detail_zh} / {r.detail_en}"
        )
        typer.echo(
            f"  {_MARK[r.outcome]} #{r.exception_id} {r.action.value}: {r.outcome.value} ({state}) {detail}"
        )


def act_command(
    ids: Annotated[list[int], typer.Argument(help="The exception id(s); several: each its own outcome")],
    action: Annotated[
        str, typer.Option("--action", help=f"One of: {', '.join(a.value for a in ActionKind)}")
    ],
    actor: Annotated[str, typer.Option("--actor", help="Who acts (kept in the audit log)")],
    note: Annotated[str | None, typer.Option("--note", help="A note; for assign, the new owner")] = None,
    db: DbOption = None,
    base_url: BaseUrlOption = "http://127.0.0.1:8080",
    wallet_url: Annotated[str | None, typer.Option("--wallet-url", help="The wallet provider")] = None,
    wallet_mch_id: Annotated[
        str | None, typer.Option("--wallet-mch-id", help="The wallet merchant id")
    ] = None,
    wallet_key_file: Annotated[
        Path | None, typer.Option("--wallet-key-file", exists=True, dir_okay=False, help="The wallet key")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcomes as JSON")] = False,
) -> None:
    """Act on exceptions: reverse, reprint, send_e_receipt, retry_refund, contact_customer, …
    Exit 1 when any action failed (each says why)."""
    from tillroll.host.store import open_store

    wallets = _wallets(wallet_url, wallet_mch_id, wallet_key_file)
    store = open_store(db)
    try:
        ctx = ActionContext(store=store, base_url=base_url, wallets=wallets)  # type: ignore[arg-type]
        results = act_many(ctx, ids, action, actor=actor, note=note)
    except ActionError as exc:
        typer.secho(f"bad input: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    finally:
        store.engine.dispose()
    if as_json:
        typer.echo(json.dumps(results_json(results), ensure_ascii=False))
    else:
        echo_results(results)
    if any(r.outcome is ActionOutcome.FAILED for r in results):
        raise typer.Exit(1)


def exceptions_command(
    state: Annotated[
        str | None, typer.Option("--state", help="open, in_progress, resolved, written_off")
    ] = None,
    day: Annotated[str | None, typer.Option("--date", help="The business day, YYYY-MM-DD")] = None,
    db: DbOption = None,
) -> None:
    """The exception queue, newest first (id, class, state, owner, terminal, reference, amount)."""
    from tillroll.money import format_yuan
    from tillroll.store import make_engine, migrate
    from tillroll.store.tables import recon_exceptions as e

    if state is not None and state not in ExceptionState.__members__.values():
        typer.secho(
            f"bad input: --state {state!r} is not one of {[s.value for s in ExceptionState]}", err=True
        )
        raise typer.Exit(2)
    engine = make_engine(db)
    migrate(engine)
    query = select(e).order_by(e.c.id.desc()).limit(500)
    if state is not None:
        query = query.where(e.c.state == state)
    if day is not None:
        query = query.where(e.c.business_date == day)
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(query).mappings())
    finally:
        engine.dispose()
    for r in rows:
        ref = r["rrn"] or r["order_no"] or (f"{r['batch']}.{r['stan']}" if r["batch"] else r["key"])
        amount = "" if r["amount_minor"] is None else f"¥{format_yuan(int(r['amount_minor']))}"
        typer.echo(
            f"#{r['id']} {r['business_date']} {r['class']} {r['state']} owner={r['owner'] or '-'} "
            f"{r['tid'] or '-'} {ref} {amount}"
        )
    if not rows:
        typer.echo("no exception / 无差异")
