"""The aggregated bad-input log: one line per offender per interval, with a count; bounded."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError

from tillroll.host.offenders import OTHERS, OffenderLog, describe, safe_text


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.offenders"]


def test_a_flood_from_one_offender_is_one_line_then_one_summary_per_interval(
    ticks: Ticks, caplog: pytest.LogCaptureFixture
) -> None:
    log = OffenderLog(logging.getLogger("test.offenders"), ticks, interval_s=60)
    for _ in range(10_000):
        log.note("10.0.0.9", "format error: nibble A in a field of digits (field 4, byte offset 27)")
    assert _lines(caplog) == [
        "bad input from 10.0.0.9: format error: nibble A in a field of digits (field 4, byte offset 27)"
    ]
    ticks.now = 61
    log.note("10.0.0.9", "closing: frame length 0 outside 13..2048")
    (summary,) = _lines(caplog)[1:]
    assert summary.startswith("bad input from 10.0.0.9: 10000 more in the last 61 s (last: closing")
    ticks.now = 130
    log.flush()  # the offender went quiet: forgotten, nothing more to say
    log.flush()
    assert len(_lines(caplog)) == 2


def test_flush_and_close_summarise_counts_nobody_else_would(
    ticks: Ticks, caplog: pytest.LogCaptureFixture
) -> None:
    log = OffenderLog(logging.getLogger("test.offenders"), ticks, interval_s=1)
    log.note("a", "x")
    log.note("a", "y")
    ticks.now = 2
    log.flush()
    log.note("b", "z")
    log.note("b", "z")
    log.close()
    assert _lines(caplog) == [
        "bad input from a: x",
        "bad input from a: 1 more in the last 2 s (last: y)",
        "bad input from b: z",
        "bad input from b: 1 more in the last 0 s (last: z)",
    ]


def test_offenders_tracked_are_bounded(ticks: Ticks, caplog: pytest.LogCaptureFixture) -> None:
    log = OffenderLog(logging.getLogger("test.offenders"), ticks, offenders_max=3)
    for n in range(1000):
        log.note(f"10.0.{n // 256}.{n % 256}", "bad")
    assert len(_lines(caplog)) == 4  # three offenders, then everyone else together
    assert _lines(caplog)[-1] == f"bad input from {OTHERS}: bad"


def test_a_traceback_once_per_site_and_card_numbers_masked(
    ticks: Ticks, caplog: pytest.LogCaptureFixture
) -> None:
    log = OffenderLog(logging.getLogger("test.offenders"), ticks, interval_s=0)

    def fail() -> None:
        raise ValueError("card 6222021234567890123 is odd")

    for n in range(3):
        try:
            fail()
        except ValueError as exc:
            log.note(f"peer{n}", describe(exc), exc)
    lines = _lines(caplog)
    assert len(lines) == 3
    assert "Traceback" in lines[0] and all("Traceback" not in line for line in lines[1:])
    assert all("6222021234567890123" not in line and "622202*********0123" in line for line in lines)


def test_database_errors_are_described_without_statement_or_parameters() -> None:
    exc = OperationalError("INSERT INTO cards VALUES (?)", ("6222021234567890123",), Exception("boom"))
    text = describe(exc)
    assert "INSERT" not in text and "6222" not in text and "OperationalError" in text
    assert len(safe_text("x" * 10_000)) < 300
