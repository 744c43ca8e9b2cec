"""`tillroll recon …`: reconcile a business day; import the wallet's statement.

tillroll recon run --date YYYY-MM-DD [--db URL]
tillroll recon import-statement FILE --mch-id M --date YYYY-MM-DD [--db URL]
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tillroll.store import DatabaseUrlError

app = typer.Typer(
    no_args_is_help=True, help="Reconciliation: match a business day's sources, open exceptions."
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Back-office database URL (default: $TILLROLL_DB, else ./tillroll-data/host.db)"
    ),
]
DateOption = Annotated[str, typer.Option("--date", help="The business day, YYYY-MM-DD (merchant time zone)")]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


def _engine(db: str | None):  # type: ignore[no-untyped-def]
    from tillroll.store import make_engine, migrate

    try:
        engine = make_engine(db)
    except DatabaseUrlError as exc:
        raise _fail(str(exc)) from None
    migrate(engine)
    return engine


@app.command("run")
def run_cmd(
    day: DateOption,
    db: DbOption = None,
    ageing_s: Annotated[
        int, typer.Option("--ageing-s", min=0, help="Seconds before a missing other side is an exception")
    ] = 900,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON")] = False,
    actions: Annotated[
        bool, typer.Option("--actions/--no-actions", help="Take the automatic actions of what it opens")
    ] = True,
    base_url: Annotated[
        str, typer.Option("--base-url", help="The back office's public address (e-receipt links)")
    ] = "http://127.0.0.1:8080",
) -> None:
    """Reconcile one business day: journals, host and ledger, issuer, wallet statement, notices.
    Prints what was found per class and what the automatic actions did; exit 0 (exceptions are
    the queue's, not an error)."""
    from tillroll.clock import SystemClock
    from tillroll.recon.run import ReconConfig, parse_business_date, run_day

    try:
        business_date = parse_business_date(day)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    engine = _engine(db)
    done: list[dict[str, object]] = []
    after = _automatic(db, base_url, done) if actions else None
    try:
        result = run_day(
            engine, business_date, now=SystemClock().now(), config=ReconConfig(ageing_s=ageing_s), after=after
        )
    finally:
        engine.dispose()
    if as_json:
        doc = {**result.summary, "run_id": result.run_id, "opened": result.opened, "actions": done}
        typer.echo(json.dumps(doc, sort_keys=True, ensure_ascii=False))
        return
    s = result.summary
    typer.echo(f"reconciliation run {result.run_id} of {result.business_date} / 对账 {result.business_date}")
    typer.echo("sources: " + ", ".join(f"{k} {v}" for k, v in s["sources"].items()))
    if not s["statement"]["imported"]:
        typer.echo("wallet statement not imported: wallet payments are pending / 钱包对账单未导入")
    if s["statement"]["problems"]:
        typer.echo(
            f"statement lines that could not be read: {s['statement']['problems']} / 对账单无法读取的行"
        )
    pending = sum(s["pending"].values())
    if pending:
        typer.echo(f"pending (other side may still come): {pending} / 待定")
    if not result.found:
        typer.echo("no exception: the day reconciles / 无差异")
    for cls, count in sorted(result.found.items()):
        typer.echo(f"  {cls}: {count}")
    typer.echo(f"opened {len(result.opened)} new exception(s) / 新开差异 {len(result.opened)} 条")
    for action in done:
        what = f"#{action['exception_id']} {action['action']}: {action['outcome']}"
        typer.echo(f"  {what} — {action.get('detail_en', '')}")


def _automatic(
    db: str | None, base_url: str, done: list[dict[str, object]]
) -> Callable[[list[int]], object] | None:
    """The exception service's automatic actions (``tillroll.recon.actions``, its own part),
    when this build has it; the results are appended to ``done``."""
    try:
        service: Any = importlib.import_module("tillroll.recon.actions")
    except ModuleNotFoundError:
        typer.echo("automatic actions: not in this build (tillroll.recon.actions); left open", err=True)
        return None

    def after(opened: list[int]) -> object:
        from tillroll.host.store import open_store

        store = open_store(db)
        try:
            results = service.apply_automatic(service.ActionContext(store=store, base_url=base_url), opened)
            done.extend(service.results_json(results))
        finally:
            store.engine.dispose()
        return results

    return after


@app.command("import-statement")
def import_statement_cmd(
    file: Annotated[
        Path, typer.Argument(help="The statement CSV (WALLET.md §4)", exists=True, dir_okay=False)
    ],
    mch_id: Annotated[str, typer.Option("--mch-id", help="The wallet merchant id the statement is of")],
    day: DateOption,
    db: DbOption = None,
) -> None:
    """Import the wallet's daily statement, replacing an earlier import of that day; every line
    that cannot be read is stored and listed with its line number and reason."""
    from tillroll.clock import SystemClock
    from tillroll.recon.run import parse_business_date
    from tillroll.recon.statement import StatementError, import_statement

    try:
        bill_date = parse_business_date(day).strftime("%Y%m%d")
        text = file.read_text(encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(f"{exc}; the statement must be UTF-8 CSV") from None
    engine = _engine(db)
    try:
        result = import_statement(engine, text, mch_id=mch_id, bill_date=bill_date, now=SystemClock().now())
    except StatementError as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.dispose()
    typer.echo(f"imported {result.rows} row(s) of {mch_id} {bill_date} / 已导入 {result.rows} 行")
    for p in result.problems:
        typer.echo(f"  line {p.line_no}: {p.reason}")
    if result.problems:
        typer.echo(f"{len(result.problems)} line(s) could not be read / {len(result.problems)} 行无法读取")


# The exception queue from a shell, through the same service as the console (tillroll.recon.actions).
def _register_queue() -> None:
    from tillroll.recon.actions_cli import act_command, exceptions_command

    app.command("act")(act_command)
    app.command("exceptions")(exceptions_command)


_register_queue()
