"""`tillroll web`: the back office's web app (e-receipts, the intake of terminals' facts, the
merchant console); `tillroll web add-user` and `tillroll web audit-verify` (tillroll.console.cli)."""

from __future__ import annotations

from typing import Annotated

import typer

from tillroll.recon.scheduler import ReconScheduleConfig, ScheduleConfigError
from tillroll.web.config import WebConfig, WebConfigError, parse_listen

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    help="Serve the back office (run without a command), or manage the console's users and audit log.",
)


@app.callback()
def web(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to serve on.")] = "127.0.0.1:8080",
    db: Annotated[
        str | None, typer.Option("--db", envvar="TILLROLL_DB", help="The host's database URL.")
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option("--public-url", help="Base of the links customers open (default http://LISTEN)."),
    ] = None,
    receipt_ttl_days: Annotated[
        int, typer.Option("--receipt-ttl-days", help="Days an e-receipt link works after the sale.")
    ] = 180,
    recon: Annotated[
        bool, typer.Option("--recon/--no-recon", help="Reconcile on a schedule: nightly and hourly.")
    ] = False,
    recon_nightly_at: Annotated[
        str, typer.Option("--recon-nightly-at", help="HH:MM (Asia/Shanghai) to reconcile yesterday.")
    ] = "02:30",
    recon_every_s: Annotated[
        int, typer.Option("--recon-every-s", help="Reconcile today every this many seconds (0: off).")
    ] = 3600,
) -> None:
    """Serve the back office: e-receipts at /r/<token>, terminals' facts at /api/v1/…, the console."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from tillroll.host.store import open_store
    from tillroll.web.app import create_app

    try:
        host, port = parse_listen(listen)
        schedule = ReconScheduleConfig(
            enabled=recon, nightly_at=recon_nightly_at, today_every_s=recon_every_s
        )
        config = WebConfig(
            host=host, port=port, public_url=public_url, receipt_ttl_days=receipt_ttl_days, recon=schedule
        )
    except (WebConfigError, ScheduleConfigError) as exc:
        typer.secho(f"bad input: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    store = open_store(db)
    app = create_app(config, store)
    typer.echo(
        f"web: serving on {config.base_url} (e-receipts at {config.base_url}/r/<token>, "
        f"console at {config.base_url}/console)"
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        store.engine.dispose()


def _register() -> None:
    from tillroll.console.cli import register

    register(app)


_register()
