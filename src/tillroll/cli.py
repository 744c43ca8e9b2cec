"""The `tillroll` command line: host, pos and demo command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tillroll.host.cli import app as host_app
from tillroll.notify.cli import app as notify_app
from tillroll.recon.cli import app as recon_app
from tillroll.recon.diagnose_cli import diagnose_command
from tillroll.terminal.cli import app as pos_app
from tillroll.wallet.cli import app as wallet_app
from tillroll.web.cli import app as web_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="tillroll POS payment stack")
app.add_typer(host_app, name="host")
app.add_typer(pos_app, name="pos")
app.add_typer(wallet_app, name="wallet")
app.add_typer(web_app, name="web")
app.add_typer(notify_app, name="notify")
app.add_typer(recon_app, name="recon")
app.command("diagnose")(diagnose_command)


@app.command()
def demo(
    work_dir: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to keep the day's files (default: a new temporary folder)"),
    ] = None,
    operations: Annotated[
        int, typer.Option("--operations", min=20, max=2000, help="Operations in the day")
    ] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the day's random choices")] = 2026,
    serve: Annotated[
        bool, typer.Option("--serve", help="Then keep the console running on the day's data (Ctrl-C stops)")
    ] = False,
) -> None:
    """Run a scripted day at two counters with faults injected, then the closing check and the
    day's reconciliation; with --serve, the console on the day's data with a log-in."""
    from tillroll.sim.demo import run_demo

    if not run_demo(work_dir, operations=operations, seed=seed, serve=serve):
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    from tillroll import __version__

    typer.echo(__version__)


def main() -> None:
    from tillroll.crypto.keystore import KeyStoreError

    try:
        app()
    except KeyStoreError as exc:  # the master key is missing, refused or not the database's
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
