"""Merchant-local time from UTC instants, whatever the process's TZ."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tillroll.clock import (
    FakeClock,
    SystemClock,
    TimeZoneError,
    local_day_bounds,
    merchant_now,
    merchant_zone,
    to_merchant_local,
)

SHANGHAI = merchant_zone("Asia/Shanghai")


def test_a_utc_instant_shows_beijing_time() -> None:
    clock = FakeClock(datetime(2026, 11, 29, 16, 30, 15))  # 16:30 UTC is 00:30 the next day
    assert merchant_now(clock, SHANGHAI) == datetime(2026, 11, 30, 0, 30, 15)
    aware = datetime(2026, 11, 29, 16, 30, 15, tzinfo=UTC)
    assert to_merchant_local(aware, SHANGHAI) == datetime(2026, 11, 30, 0, 30, 15)


def test_system_clock_is_utc() -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    now = SystemClock().now()
    after = datetime.now(UTC).replace(tzinfo=None)
    assert now.tzinfo is None and before <= now <= after


def test_a_local_day_is_a_utc_range() -> None:
    assert local_day_bounds(date(2026, 11, 30), SHANGHAI) == (
        datetime(2026, 11, 29, 16, 0),
        datetime(2026, 11, 30, 16, 0),
    )
    # A day with a DST change is 23 hours long, not 24.
    start, end = local_day_bounds(date(2026, 3, 8), merchant_zone("America/New_York"))
    assert (end - start).total_seconds() == 23 * 3600


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "Asia/"])
def test_an_unknown_zone_is_refused_with_a_hint(name: str) -> None:
    with pytest.raises(TimeZoneError, match="Asia/Shanghai"):
        merchant_zone(name)
