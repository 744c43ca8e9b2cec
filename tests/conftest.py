"""Shared fixtures: the profile's worked examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _vectors_path() -> Path:
    for candidate in (
        ROOT.parent / "shared" / "protocol" / "vectors.json",
        ROOT / "tests" / "data" / "vectors.json",
    ):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("shared/protocol/vectors.json not found beside the checkout")


@pytest.fixture(scope="session")
def vectors() -> dict[str, dict[str, Any]]:
    data = json.loads(_vectors_path().read_text())
    return {v["name"]: v for v in data["vectors"]}
