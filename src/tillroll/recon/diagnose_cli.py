"""`tillroll diagnose TRACE|RRN|ORDER`: a payment's diagnosis, printed for a person."""

from __future__ import annotations

from typing import Annotated

import typer


def diagnose_command(
    reference: Annotated[
        str, typer.Argument(help="batch.trace (000001.000123), trace, RRN (12 digits) or order number")
    ],
    db: Annotated[
        str | None, typer.Option("--db", envvar="TILLROLL_DB", help="The back office's database URL.")
    ] = None,
    lang: Annotated[str | None, typer.Option("--lang", help="zh or en (default: both, 中文 first)")] = None,
) -> None:
    """What happened to one payment, from the records, in words a merchant understands."""
    from tillroll.host.store import open_store
    from tillroll.recon.diagnose import diagnose

    if lang not in (None, "zh", "en"):
        typer.secho(f"bad input: --lang {lang!r} must be zh or en", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    store = open_store(db)
    try:
        with store.engine.connect() as conn:
            found = diagnose(conn, reference)
    finally:
        store.engine.dispose()
    for which in ("zh", "en") if lang is None else (lang,):
        for sentence in found.sentences:
            typer.echo(sentence.zh if which == "zh" else sentence.en)
        if lang is None and which == "zh":
            typer.echo("")
    if not found.found:
        raise typer.Exit(1)
