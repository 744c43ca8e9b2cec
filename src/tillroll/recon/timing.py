"""Wall time per step of a reconciliation run (the benchmark prints them)."""

from __future__ import annotations

import time


class Steps:
    """``mark(name)`` closes the step that ended now; a name marked twice adds up."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.took: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        key = self.prefix + name
        self.took[key] = round(self.took.get(key, 0.0) + now - self._last, 3)
        self._last = now
