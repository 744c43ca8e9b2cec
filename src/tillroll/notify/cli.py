"""`tillroll notify …`: merchant endpoints, the outbox's contents, and the relay."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import Engine, select

from tillroll.notify.config import ConfigError, NotifyConfig
from tillroll.notify.outbox import Channel, MessageState, OutboxTables
from tillroll.screen import wide_console
from tillroll.store import DatabaseUrlError

app = typer.Typer(no_args_is_help=True, help="Customer and merchant notifications: the outbox relay.")

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Back-office database URL (default: $TILLROLL_DB, else ./tillroll-data/host.db)"
    ),
]
LIST_LIMIT = 200


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


@app.command("add-endpoint")
def add_endpoint_cmd(
    mid: Annotated[str, typer.Argument(help="Merchant id")],
    email: Annotated[str | None, typer.Option("--email", help="An e-mail address")] = None,
    sms: Annotated[str | None, typer.Option("--sms", help="A mobile phone number")] = None,
    webhook: Annotated[str | None, typer.Option("--webhook", help="A webhook URL (signed)")] = None,
    db: DbOption = None,
) -> None:
    """Add where a merchant is told (alerts; webhooks also get every event). A webhook's signing
    secret is printed once: keep it, the merchant's receiver verifies with it."""
    from tillroll.clock import SystemClock
    from tillroll.host.store import open_store
    from tillroll.notify.endpoints import EndpointError, add_endpoint

    given = [(c, a) for c, a in ((Channel.EMAIL, email), (Channel.SMS, sms), (Channel.WEBHOOK, webhook)) if a]
    if len(given) != 1:
        raise _fail("give exactly one of --email ADDR, --sms PHONE, --webhook URL")
    [(channel, address)] = given
    try:
        store = open_store(db)
    except DatabaseUrlError as exc:
        raise _fail(str(exc)) from None
    try:
        with store.engine.begin() as conn:
            endpoint, secret = add_endpoint(
                conn, store.keystore, mid=mid, channel=channel, address=address, now=SystemClock().now()
            )
    except EndpointError as exc:
        raise _fail(str(exc)) from None
    finally:
        store.engine.dispose()
    typer.echo(f"endpoint {endpoint.id}: {endpoint.channel} {endpoint.address} for merchant {endpoint.mid}")
    if secret:
        typer.echo(f"signing secret (shown once): {secret}")


def _engine_and_tables(db: str | None, journal: Path | None) -> tuple[Engine, OutboxTables]:
    from tillroll.store import make_engine

    if journal is not None:
        from tillroll.terminal.config import JOURNAL_FILE
        from tillroll.terminal.journal import outbox as journal_outbox

        path = journal / JOURNAL_FILE
        if not path.exists():
            raise _fail(f"no terminal journal at {path}")
        return make_engine(f"sqlite:///{path}"), journal_outbox
    from tillroll.host.store import open_store
    from tillroll.store.tables import outbox

    return open_store(db).engine, outbox


@app.command("list")
def list_cmd(
    state: Annotated[
        MessageState | None, typer.Option("--state", help="Only messages in this state (dead: dead letters)")
    ] = None,
    db: DbOption = None,
    journal: Annotated[
        Path | None, typer.Option("--journal", help="A terminal's data folder instead")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = LIST_LIMIT,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line")] = False,
) -> None:
    """The outbox's messages, newest first, with their attempts and last error."""
    try:
        engine, tables = _engine_and_tables(db, journal)
    except DatabaseUrlError as exc:
        raise _fail(str(exc)) from None
    m = tables.messages
    query = select(m).order_by(m.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(m.c.state == state.value)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    engine.dispose()
    if as_json:
        for r in rows:
            typer.echo(
                json.dumps({k: (str(v) if v is not None else None) for k, v in r.items() if k != "payload"})
            )
        return
    table = Table(title=f"outbox: {len(rows)} message(s)" + (f" {state.value}" if state else ""))
    for col in (
        "message id",
        "kind",
        "channel",
        "recipient",
        "state",
        "attempts",
        "next / delivered",
        "last error",
    ):
        table.add_column(col)
    for r in rows:
        when = r["delivered_at"] if r["state"] == MessageState.DELIVERED else r["next_attempt_at"]
        table.add_row(
            r["message_id"], r["kind"], r["channel"], r["recipient"], r["state"], str(r["attempts"]),
            f"{when:%Y-%m-%d %H:%M:%S}Z", r["last_error"] or "",
        )  # fmt: skip
    wide_console().print(table)


@app.command("run")
def run_cmd(
    db: DbOption = None,
    journal: Annotated[
        Path | None, typer.Option("--journal", help="Relay a terminal's outbox (its data folder) instead")
    ] = None,
    smtp: Annotated[str | None, typer.Option("--smtp", help="SMTP server HOST:PORT for e-mail")] = None,
    sms_url: Annotated[str | None, typer.Option("--sms-url", help="SMS gateway base URL")] = None,
    once: Annotated[bool, typer.Option("--once", help="One round, then exit")] = False,
    schedule_scale: Annotated[
        float, typer.Option("--schedule-scale", min=0.0, help="Multiply every retry delay (tests, demos)")
    ] = 1.0,
) -> None:
    """Deliver the outbox: e-mail, SMS and signed webhooks (or a terminal's facts to the back
    office), at least once, retried with backoff, dead letters raising a merchant alert."""
    from tillroll.notify.service import build_relay

    try:
        config = NotifyConfig.from_options(
            db=db, journal=journal, smtp=smtp, sms_url=sms_url, schedule_scale=schedule_scale,
        )  # fmt: skip
        relay, close = build_relay(config)
    except (ConfigError, DatabaseUrlError) as exc:
        raise _fail(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if once:
            report = relay.run_once()
            typer.echo(
                f"claimed {report.claimed}, delivered {report.delivered}, failed {report.failed}, "
                f"dead {report.dead}"
            )
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        typer.echo(f"relaying {', '.join(sorted(c.value for c in relay.senders))} (Ctrl-C stops)")
        relay.run(stop)
    finally:
        close()
