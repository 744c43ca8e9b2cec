"""Rich consoles for command output: as wide as the terminal, 140 columns when not a terminal
(pipes, CI logs), so that tables of journals and reports stay readable."""

from __future__ import annotations

import shutil
from typing import Any

from rich.console import Console

WIDTH_WHEN_PIPED = 140


def wide_console(**kwargs: Any) -> Console:
    return Console(width=shutil.get_terminal_size((WIDTH_WHEN_PIPED, 24)).columns, **kwargs)
