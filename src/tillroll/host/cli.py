"""`tillroll host …`: register merchants, terminals and cards; serve the card rail."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import sys
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tillroll.clock import DEFAULT_MERCHANT_TZ, TimeZoneError, merchant_zone
from tillroll.host.admin import AdminError, add_card, add_merchant, add_terminal, card_balance, card_messages
from tillroll.host.config import ConfigError, HostConfig
from tillroll.money import AmountError, format_yuan, parse_yuan
from tillroll.pan import mask_pan
from tillroll.screen import wide_console
from tillroll.store import DatabaseUrlError

app = typer.Typer(no_args_is_help=True, help="The acquirer host and its simulated issuer.")

TzOption = Annotated[
    str,
    typer.Option(
        "--tz",
        envvar="TILLROLL_MERCHANT_TZ",
        help="Merchant time zone of fields 12/13, settlement dates and report days (IANA name)",
    ),
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: $TILLROLL_DB, else ./tillroll-data/host.db)"),
]


def read_secret(value: str, what: str) -> str:
    """`-` means: read it from a hidden prompt (a terminal) or one line of standard input, so
    that it need not sit in the shell history."""
    if value != "-":
        return value
    if sys.stdin.isatty():
        return getpass.getpass(f"{what}: ").strip()
    return sys.stdin.readline().strip()


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise typer.BadParameter(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:8583")
    return host, int(port)


@app.command("add-merchant")
def add_merchant_cmd(
    mid: Annotated[str, typer.Argument(help="Merchant id, 15 characters")],
    name: Annotated[str, typer.Option("--name", help="Registered merchant name")],
    db: DbOption = None,
) -> None:
    """Register a merchant."""
    try:
        add_merchant(db, mid, name)
    except (AdminError, DatabaseUrlError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"mid": mid, "name": name}, ensure_ascii=False))


@app.command("add-terminal")
def add_terminal_cmd(
    tid: Annotated[str, typer.Argument(help="Terminal id, 8 characters")],
    merchant: Annotated[str, typer.Option("--merchant", help="Merchant id the terminal belongs to")],
    tmk: Annotated[
        str | None,
        typer.Option("--tmk", help="Terminal master key, 32 hex digits; - to read it from a prompt/stdin"),
    ] = None,
    db: DbOption = None,
) -> None:
    """Register a terminal; prints JSON {"tid","mid","tmk"} (TMK random when not given)."""
    key: bytes | None = None
    if tmk is not None:
        tmk = read_secret(tmk, "TMK (32 hex digits)")
        try:
            key = bytes.fromhex(tmk)
        except ValueError:
            raise _fail("--tmk must be 32 hex digits") from None
        if len(key) != 16:
            raise _fail("--tmk must be 32 hex digits (a double-length key)")
    try:
        key = add_terminal(db, tid, merchant, key)
    except (AdminError, DatabaseUrlError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"tid": tid, "mid": merchant, "tmk": key.hex().upper()}))


@app.command("add-card")
def add_card_cmd(
    pan: Annotated[str, typer.Argument(help="Card number")],
    expiry: Annotated[str, typer.Option("--expiry", help="YYMM")],
    pin: Annotated[
        str,
        typer.Option(
            "--pin", help="4-12 digits, stored only as an IBM 3624 offset; - to read it from a prompt/stdin"
        ),
    ],
    balance: Annotated[str, typer.Option("--balance", help="Opening balance in yuan, e.g. 1000.00")],
    limit: Annotated[str | None, typer.Option("--limit", help="Per-transaction limit in yuan")] = None,
    db: DbOption = None,
) -> None:
    """Issue a card at the simulated bank."""
    try:
        balance_minor = parse_yuan(balance)
        limit_minor = parse_yuan(limit) if limit is not None else None
        add_card(db, pan, expiry, read_secret(pin, "PIN"), balance_minor, limit_minor=limit_minor)
    except (AdminError, AmountError, DatabaseUrlError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"card": mask_pan(pan), "balance": format_yuan(balance_minor)}))


@app.command("messages")
def messages_cmd(
    pan: Annotated[str, typer.Argument(help="Card number")],
    db: DbOption = None,
) -> None:
    """Show the cardholder's message stream (what the customer's phone received)."""
    try:
        for text in card_messages(db, pan):
            typer.echo(text)
        typer.echo(f"balance {format_yuan(card_balance(db, pan))}")
    except (ValueError, DatabaseUrlError) as exc:
        raise _fail(str(exc)) from None


@app.command("settlement-report")
def settlement_report_cmd(
    day: Annotated[str, typer.Option("--date", help="Settlement day, YYYY-MM-DD")],
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="CSV file to write (default: settlement-report-DAY.csv)")
    ] = None,
    db: DbOption = None,
    tz: TzOption = DEFAULT_MERCHANT_TZ,
) -> None:
    """Per merchant and terminal: counts, gross, refunds, fees and net to pay, for one day."""
    from tillroll.host.report import report_table, settlement_report, write_csv
    from tillroll.host.store import open_store

    try:
        when = date.fromisoformat(day)
    except ValueError:
        raise _fail(f"--date {day!r} is not YYYY-MM-DD") from None
    try:
        zone = merchant_zone(tz)
        store = open_store(db)
    except (DatabaseUrlError, TimeZoneError) as exc:
        raise _fail(str(exc)) from None
    with store.engine.connect() as conn:
        rows = settlement_report(conn, when, zone)
    table = report_table(rows, when)
    wide_console().print(table)
    path = csv_path or Path(f"settlement-report-{when}.csv")
    write_csv(rows, path)
    typer.echo(f"written {path} ({len(rows)} rows)")


def parse_before(text: str | None) -> datetime | None:
    """`--before` as the merchant's naive local time; None means now."""
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M")
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not YYYY-MM-DD HH:MM, e.g. 2026-12-01 23:00") from None


@app.command("cutover")
def cutover_cmd(
    before: Annotated[
        str | None,
        typer.Option(
            "--before", help='Close batches opened before "YYYY-MM-DD HH:MM", merchant time (default now)'
        ),
    ] = None,
    db: DbOption = None,
    tz: TzOption = DEFAULT_MERCHANT_TZ,
) -> None:
    """Close and settle every batch still open from before a time (a terminal that died still
    gets its merchant paid); its terminal gets a new batch at its next sign-in."""
    from tillroll.clock import SystemClock, to_merchant_local, utc_naive
    from tillroll.host.closing import cutover
    from tillroll.host.store import open_store

    local = parse_before(before)
    try:
        zone = merchant_zone(tz)
        store = open_store(db)
    except (DatabaseUrlError, TimeZoneError) as exc:
        raise _fail(str(exc)) from None
    now = SystemClock().now()
    # Instants are stored as naive UTC: the merchant's wall-clock time is converted once, here.
    cut = now if local is None else utc_naive(local.replace(tzinfo=zone))
    try:
        closed = cutover(store.engine, before=cut, now=now)
    finally:
        store.engine.dispose()  # a CLI run leaves no pooled connection behind
    shown = to_merchant_local(cut, zone)
    table = Table(title=f"日切 Cut-over: batches opened before {shown:%Y-%m-%d %H:%M} ({tz})")
    for col in ("TID", "MID", "批次 Batch"):
        table.add_column(col)
    for col in ("消费 Sales", "金额 Gross", "退货 Refunds", "退款额 Refunded", "手续费 Fees", "应付 Net"):
        table.add_column(col, justify="right")
    for c in closed:
        t = c.totals
        table.add_row(
            c.tid, c.mid, c.batch, str(t.debit_count), format_yuan(t.debit_minor), str(t.credit_count),
            format_yuan(t.credit_minor), format_yuan(c.fee_minor), format_yuan(c.net_minor),
        )  # fmt: skip
    wide_console().print(table)
    typer.echo(f"closed {len(closed)} batch(es); their terminals get a new batch at the next sign-in")


@app.command("ledger-check")
def ledger_check_cmd(db: DbOption = None) -> None:
    """Rebuild every balance from the ledger's postings and compare with the bank's balances."""
    from tillroll.host.report import ledger_problems
    from tillroll.host.store import open_store

    store = open_store(db)
    with store.engine.connect() as conn:
        problems = ledger_problems(conn)
    for p in problems:
        typer.secho(p, fg=typer.colors.RED)
    if problems:
        raise typer.Exit(1)
    typer.echo("ledger balanced: every balance rebuilt from the postings matches")


@app.command("serve")
def serve_cmd(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT")] = "127.0.0.1:8583",
    db: DbOption = None,
    key_lifetime_s: Annotated[
        int, typer.Option("--key-lifetime-s", help="Working-key session lifetime")
    ] = 86_400,
    tz: TzOption = DEFAULT_MERCHANT_TZ,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Run N host processes on the one port (SO_REUSEPORT), sharing the database "
            "(PostgreSQL; on SQLite they queue on its one writer); 1..64",
        ),
    ] = None,
    db_process: Annotated[
        bool | None,
        typer.Option(
            "--db-process/--one-process",
            help="Do the database work in a second process (decode and sign in this one): "
            "two cores for one host. Default: a second process on SQLite when the machine has "
            "two cores or more, one process on PostgreSQL (which grows with --workers)",
        ),
    ] = None,
    worker_fd: Annotated[int | None, typer.Option("--worker-fd", hidden=True)] = None,
) -> None:
    """Serve the card rail over TCP until interrupted."""
    from tillroll.host.db_process import DbProcessFailed
    from tillroll.host.server import HostFailed, run_event_loop, serve
    from tillroll.host.store import open_store

    host, port = parse_listen(listen)
    try:
        if db_process and workers is not None:
            raise ConfigError("--workers and --db-process go one at a time")
        config = HostConfig(
            key_lifetime_s=key_lifetime_s,
            merchant_tz=tz,
            reuse_port=worker_fd is not None,
            db_process=bool(db_process),
        )
        if workers is not None:
            _supervise(workers, host, port, db, config)
            return
        # A child of --workers: its parent migrated the database already.
        store = open_store(db, migrate_schema=worker_fd is None)
        if db_process is None and worker_fd is None:
            config = replace(config, db_process=_two_cores_for(store.url))
    except (ConfigError, DatabaseUrlError) as exc:
        raise _fail(str(exc)) from None
    # force: a library may have put a handler on the root logger first (then INFO was lost).
    who = "" if worker_fd is None else " [%(process)d]"  # a child of --workers: its pid on each line
    fmt = f"%(asctime)s{who} %(name)s %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, force=True)
    try:
        if worker_fd is not None:
            from tillroll.host.workers import serve_worker

            run_event_loop(serve_worker(store, config, host, port, worker_fd))
            return
        typer.echo(f"tillroll host listening on {host}:{port} ({store.url.split('://')[0]})")
        run_event_loop(serve(store, config, host, port))
    except KeyboardInterrupt:
        typer.echo("stopped")
    except (HostFailed, DbProcessFailed) as exc:
        raise _fail(f"host stopped: {exc}") from None
    except OSError as exc:  # the address is taken or not ours
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@app.command("db-process", hidden=True)
def db_process_cmd(
    link_fd: Annotated[int, typer.Option("--link-fd")],
    db: DbOption = None,
    key_lifetime_s: Annotated[int, typer.Option("--key-lifetime-s")] = 86_400,
    tz: TzOption = DEFAULT_MERCHANT_TZ,
) -> None:
    """The database process of `serve --db-process` (started by it, never by hand)."""
    from tillroll.clock import SystemClock
    from tillroll.host.db_process import serve_db_process
    from tillroll.host.pipeline import HostPipeline
    from tillroll.host.store import open_store

    try:
        config = HostConfig(key_lifetime_s=key_lifetime_s, merchant_tz=tz)
        store = open_store(db, migrate_schema=False)  # the serving process migrated it
    except (ConfigError, DatabaseUrlError) as exc:
        raise _fail(str(exc)) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [db %(process)d] %(name)s %(message)s", force=True
    )
    serve_db_process(HostPipeline(store.engine, store.keystore, SystemClock(), config), link_fd)


def _two_cores_for(url: str) -> bool:
    """Whether `serve` takes a database process by default: on SQLite (one writer: more host
    processes only take turns at it) when there is a second core to run it on
    (docs/performance.md: +37–78 % at concurrency 50 on two cores)."""
    return url.startswith("sqlite") and usable_cores() >= 2


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system has one: a container's
    CPU set, `taskset`), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _supervise(workers: int, host: str, port: int, db: str | None, config: HostConfig) -> None:
    """`--workers N`: migrate once here, then run N children (host/workers.py)."""
    from tillroll.host.store import open_store
    from tillroll.host.workers import ListenError, WorkerPlan, check_workers, supervise

    check_workers(workers)
    store = open_store(db)  # the master key is checked and the schema migrated, once, before any child
    store.engine.dispose()  # the children open their own: nothing of this engine crosses into them
    plan = WorkerPlan(workers, host, port, store.url, config)
    if plan.backend.startswith("sqlite") and workers > 1:
        typer.secho(
            f"note: SQLite has one writer at a time; the {workers} workers take turns at it "
            "(PostgreSQL is what --workers is for)",
            err=True,
            fg=typer.colors.YELLOW,
        )
    try:
        code = asyncio.run(supervise(plan, typer.echo))
    except ListenError as exc:
        raise _fail(str(exc)) from None
    if code == 2:
        raise _fail("host stopped: its workers kept dying")
    typer.echo("stopped")
    raise typer.Exit(code)
