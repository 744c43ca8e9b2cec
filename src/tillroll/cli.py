"""The `tillroll` command line: host, pos and demo command groups."""

from __future__ import annotations

import typer

from tillroll.host.cli import app as host_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="tillroll POS payment stack")
app.add_typer(host_app, name="host")


@app.command()
def version() -> None:
    """Print the version."""
    from tillroll import __version__

    typer.echo(__version__)


def main() -> None:
    app()
