"""The resident loop's pure decisions (`terminal/resident.py`), seconds in, action out."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from tillroll.terminal import HostAddress, TerminalConfig
from tillroll.terminal.config import ConfigError
from tillroll.terminal.resident import LOOK_S, Action, Facts, overdue, plan, settle_due

CONFIG = TerminalConfig(
    tid="10000001",
    mid="898310048990001",
    tmk=bytes(16),
    host=HostAddress("127.0.0.1", 5000),
    key_lifetime_s=3600,
    sign_in_margin_s=600,
    echo_interval_s=60,
)


def facts(**kw: object) -> Facts:
    base: dict[str, object] = dict(
        now_s=1000.0,
        reversal_due_s=None,
        session_age_s=10.0,
        sign_in_due_s=None,
        idle_s=0.0,
        settle_due=False,
    )
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_a_due_reversal_goes_first_even_without_a_session() -> None:
    assert plan(facts(reversal_due_s=999.0, session_age_s=None), CONFIG).action is Action.REVERSE


def test_a_reversal_not_yet_due_sets_the_wait() -> None:
    p = plan(facts(reversal_due_s=1000.4), CONFIG)
    assert p.action is None and p.wait_s == pytest.approx(0.4)


def test_the_wait_is_never_longer_than_look_s() -> None:
    assert plan(facts(), CONFIG).wait_s == LOOK_S


def test_sign_in_when_none_or_near_the_key_lifetime_but_not_before_its_backoff() -> None:
    assert plan(facts(session_age_s=None), CONFIG).action is Action.SIGN_IN
    assert plan(facts(session_age_s=2999.0), CONFIG).action is None
    assert plan(facts(session_age_s=3000.0), CONFIG).action is Action.SIGN_IN
    held = plan(facts(session_age_s=None, sign_in_due_s=1000.3), CONFIG)
    assert held.action is None and held.wait_s == pytest.approx(0.3)


def test_echo_only_when_idle_and_signed_in() -> None:
    assert plan(facts(idle_s=59.0), CONFIG).action is None
    assert plan(facts(idle_s=60.0), CONFIG).action is Action.ECHO
    assert plan(facts(idle_s=60.0, session_age_s=None, sign_in_due_s=2000.0), CONFIG).action is None


def test_settle_waits_for_pending_reversals() -> None:
    assert plan(facts(settle_due=True), CONFIG).action is Action.SETTLE
    assert plan(facts(settle_due=True, reversal_due_s=1005.0), CONFIG).action is None


def test_settle_due_once_a_day_after_the_local_time() -> None:
    at = datetime(2026, 12, 1, 23, 29)
    assert not settle_due(at, "23:30", None)
    assert settle_due(at.replace(minute=30), "23:30", None)
    assert settle_due(at.replace(minute=30), "23:30", date(2026, 11, 30))
    assert not settle_due(at.replace(minute=45), "23:30", date(2026, 12, 1))
    assert not settle_due(at, None, None)


def test_overdue_alerts_once_per_reversal() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0)
    pending = [(1, datetime(2026, 12, 1, 11, 58, 0)), (2, datetime(2026, 12, 1, 11, 59, 30))]
    assert overdue(pending, now, 60.0, set()) == [1]
    assert overdue(pending, now, 60.0, {1}) == []


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="settle_at"):
        TerminalConfig(
            tid="10000001", mid="898310048990001", tmk=bytes(16), host=CONFIG.host, settle_at="25:00"
        )
    with pytest.raises(ConfigError, match="echo_interval_s"):
        TerminalConfig(
            tid="10000001", mid="898310048990001", tmk=bytes(16), host=CONFIG.host, echo_interval_s=0
        )
    with pytest.raises(ConfigError, match="time zone"):
        TerminalConfig(
            tid="10000001", mid="898310048990001", tmk=bytes(16), host=CONFIG.host, merchant_tz="Mars/X"
        )


def test_a_due_wallet_order_goes_before_sign_in_but_after_a_due_reversal() -> None:
    assert plan(facts(wallet_due_s=999.0, session_age_s=None), CONFIG).action is Action.WALLET
    assert plan(facts(wallet_due_s=999.0, reversal_due_s=999.0), CONFIG).action is Action.REVERSE
    p = plan(facts(wallet_due_s=1000.3), CONFIG)
    assert p.action is None and p.wait_s == pytest.approx(0.3)
