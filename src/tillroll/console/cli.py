"""`tillroll web add-user` and `tillroll web audit-verify`.

A password is read from a file or typed at a prompt (twice, not echoed) — never taken from the
command line, where other users' `ps` and the shell's history would see it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def add_user_command(
    username: Annotated[str, typer.Argument(help="The log-in name.")],
    role: Annotated[str, typer.Option("--role", help="cashier | supervisor | merchant_admin | operator")],
    mid: Annotated[str | None, typer.Option("--mid", help="The merchant (every role but operator).")] = None,
    password_file: Annotated[
        Path | None, typer.Option("--password-file", help="A file whose first line is the password.")
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", envvar="TILLROLL_DB", help="The host's database URL.")
    ] = None,
) -> None:
    """Add a console user (the password from --password-file, else a prompt)."""
    from tillroll.clock import SystemClock
    from tillroll.console.users import Role, UserError, add_user
    from tillroll.host.store import open_store

    try:
        the_role = Role(role)
    except ValueError:
        typer.secho(
            f"bad input: role {role!r} is not one of {', '.join(r.value for r in Role)}",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(2) from None
    if password_file is not None:
        try:
            lines = password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            typer.secho(
                f"bad input: cannot read {password_file}: {exc.strerror}", err=True, fg=typer.colors.RED
            )
            raise typer.Exit(2) from None
        password = lines[0] if lines else ""
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    store = open_store(db)
    try:
        user_id = add_user(store.engine, username, password, the_role, mid, now=SystemClock().now())
    except UserError as exc:
        typer.secho(f"bad input: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    finally:
        store.engine.dispose()
    where = f"merchant {mid}" if mid else "every merchant"
    typer.echo(f"user {username} added (id {user_id}, {the_role.value}, {where}); log in at /console/login")


def audit_verify_command(
    db: Annotated[
        str | None, typer.Option("--db", envvar="TILLROLL_DB", help="The host's database URL.")
    ] = None,
) -> None:
    """Check the audit log's hash chain: exit 1 naming the first bad row when it is broken."""
    from tillroll.console.audit import verify
    from tillroll.host.store import open_store

    store = open_store(db)
    try:
        with store.engine.connect() as conn:
            report = verify(conn)
    finally:
        store.engine.dispose()
    if report.ok:
        typer.echo(f"audit log intact: {report.rows} rows, every hash holds")
        return
    typer.secho(
        f"audit log BROKEN at row id {report.first_bad_id} ({report.rows} rows read): {report.reason}. "
        "Rows from this one on cannot be trusted; restore the log from a backup and find who changed it.",
        err=True,
        fg=typer.colors.RED,
    )
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("add-user")(add_user_command)
    app.command("audit-verify")(audit_verify_command)
