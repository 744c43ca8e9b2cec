"""`tillroll wallet …` (WALLET.md §6, fixed): set up the simulated wallet provider and serve it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from sqlalchemy import Engine

from tillroll.money import AmountError, format_yuan, parse_yuan
from tillroll.store import DatabaseUrlError
from tillroll.wallet.behaviour import BehaviourError
from tillroll.wallet.codes import Brand
from tillroll.wallet.config import WalletConfigError

app = typer.Typer(
    no_args_is_help=True, help="The simulated QR wallet provider (merchant scans the customer's code)."
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Wallet database URL (default: $TILLROLL_WALLET_DB, else ./tillroll-data/wallet.db)"
    ),
]
T = TypeVar("T")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


def _run(db: str | None, action: Callable[[Engine], T]) -> T:
    """Open the wallet database, run ``action``, and turn the expected errors into one line."""
    from tillroll.wallet.admin import WalletAdminError, open_wallet

    try:
        engine = open_wallet(db)
    except DatabaseUrlError as exc:
        raise _fail(str(exc)) from None
    try:
        return action(engine)
    except (WalletAdminError, BehaviourError, AmountError) as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.dispose()


@app.command("add-merchant")
def add_merchant_cmd(
    mch_id: Annotated[str, typer.Argument(help="Merchant id (1–32 characters [A-Za-z0-9_-])")],
    name: Annotated[str, typer.Option("--name", help="Merchant name, as the customer's messages show it")],
    key: Annotated[str, typer.Option("--key", help="The merchant's signing key (16–128 characters)")],
    notify_url: Annotated[
        str | None, typer.Option("--notify-url", help="Where payment notifications are POSTed")
    ] = None,
    db: DbOption = None,
) -> None:
    """Register a merchant and its signing key."""
    from tillroll.wallet.admin import add_merchant

    _run(db, lambda e: add_merchant(e, mch_id, name, key, notify_url))
    typer.echo(f"merchant {mch_id} ({name}) added")


@app.command("add-user")
def add_user_cmd(
    user: Annotated[str, typer.Argument(help="Wallet user name")],
    balance: Annotated[str, typer.Option("--balance", help="Starting balance in yuan, e.g. 1000.00")],
    brand: Annotated[Brand, typer.Option("--brand", help="wx (微信支付) or ali (支付宝)")] = Brand.WX,
    behaviour: Annotated[
        str,
        typer.Option("--behaviour", help="ok, confirm:S, never, fail:CODE, error-once or slow:S"),
    ] = "ok",
    db: DbOption = None,
) -> None:
    """Add a wallet user with a balance and a behaviour (how their phone answers)."""
    from tillroll.wallet.admin import add_user

    def act(engine: Engine) -> None:
        add_user(engine, user, parse_yuan(balance), brand, behaviour)

    _run(db, act)
    typer.echo(f"user {user} added")


@app.command("code")
def code_cmd(user: Annotated[str, typer.Argument(help="Wallet user name")], db: DbOption = None) -> None:
    """Print one fresh payment code (one-time, live 60 s), nothing else."""
    from tillroll.wallet.admin import issue_code

    typer.echo(_run(db, lambda e: issue_code(e, user)))


@app.command("balance")
def balance_cmd(user: Annotated[str, typer.Argument(help="Wallet user name")], db: DbOption = None) -> None:
    """Print the user's balance in yuan, e.g. 987.50."""
    from tillroll.wallet.admin import balance_fen

    typer.echo(format_yuan(_run(db, lambda e: balance_fen(e, user))))


@app.command("messages")
def messages_cmd(user: Annotated[str, typer.Argument(help="Wallet user name")], db: DbOption = None) -> None:
    """Print the user's message stream (what the wallet app shows), one message per line."""
    from tillroll.wallet.admin import user_messages

    for text in _run(db, lambda e: user_messages(e, user)):
        typer.echo(text)


@app.command("serve")
def serve_cmd(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to listen on")] = "127.0.0.1:8600",
    db: DbOption = None,
    notify_scale: Annotated[
        float, typer.Option("--notify-scale", help="Multiply every notification retry interval by this")
    ] = 1.0,
) -> None:
    """Serve the wallet API over HTTP until interrupted."""
    import uvicorn

    from tillroll.clock import SystemClock
    from tillroll.host.cli import parse_listen
    from tillroll.wallet.app import create_app
    from tillroll.wallet.config import WalletConfig
    from tillroll.wallet.service import WalletService

    host, port = parse_listen(listen)
    try:
        config = WalletConfig(notify_scale=notify_scale)
    except WalletConfigError as exc:
        raise _fail(str(exc)) from None
    from tillroll.wallet.admin import open_wallet

    try:
        engine = open_wallet(db)
    except DatabaseUrlError as exc:
        raise _fail(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = WalletService(engine, SystemClock(), config)
    typer.echo(f"wallet provider listening on http://{host}:{port}", err=True)
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
    finally:
        engine.dispose()
