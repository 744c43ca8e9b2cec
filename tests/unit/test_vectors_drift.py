"""The in-repository worked examples equal the profile's own, where the profile sits beside us.

On development and CI machines the profile's home, `../shared/protocol/`, is checked out beside
this repository; a lone clone has only tests/data/vectors.json and skips the comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ROOT / "tests" / "data" / "vectors.json"
THEIRS = ROOT.parent / "shared" / "protocol" / "vectors.json"


def vector_drift(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """What differs between two vectors.json documents, one line per vector or top-level key."""
    lines: list[str] = []
    for key in sorted((set(ours) | set(theirs)) - {"vectors"}):
        if ours.get(key) != theirs.get(key):
            lines.append(f"top-level {key!r} differs")
    mine = {v["name"]: v for v in ours.get("vectors", [])}
    profile = {v["name"]: v for v in theirs.get("vectors", [])}
    same_order = list(mine) == list(profile)
    for name in sorted(set(mine) | set(profile)):
        if name not in mine:
            lines.append(f"{name}: only in the profile's copy")
        elif name not in profile:
            lines.append(f"{name}: only in tests/data")
        elif mine[name] != profile[name]:
            a, b = mine[name], profile[name]
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            lines.append(f"{name}: differs in {', '.join(keys)}")
    if not lines and not same_order:
        lines.append("the same vectors in a different order")
    return lines


def test_in_repository_vectors_equal_the_profiles() -> None:
    if not THEIRS.exists():
        pytest.skip(f"no profile beside the checkout ({THEIRS} absent): nothing to compare with")
    drift = vector_drift(json.loads(OURS.read_text()), json.loads(THEIRS.read_text()))
    assert not drift, (
        f"tests/data/vectors.json has drifted from {THEIRS}:\n  "
        + "\n  ".join(drift)
        + f"\nReview the profile's change, then: cp {THEIRS} {OURS} (and update docs/protocol.md)"
    )


def test_drift_names_each_differing_vector() -> None:
    base = {
        "description": "d",
        "vectors": [{"name": "a", "key": "00"}, {"name": "b", "mac": "11"}, {"name": "c"}],
    }
    assert vector_drift(base, json.loads(json.dumps(base))) == []
    changed = {
        "description": "d2",
        "vectors": [{"name": "a", "key": "01"}, {"name": "b", "mac": "11"}, {"name": "d"}],
    }
    assert vector_drift(base, changed) == [
        "top-level 'description' differs",
        "a: differs in key",
        "c: only in tests/data",
        "d: only in the profile's copy",
    ]
    reordered = {"description": "d", "vectors": list(reversed(base["vectors"]))}
    assert vector_drift(base, reordered) == ["the same vectors in a different order"]
