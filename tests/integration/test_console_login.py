"""Log-in answers never tell which user names exist: a name with no user gets, try for try, the
answer a taken name gets for a wrong password — the same words, the same tries left, the same
lock-out and its end — on SQLite and PostgreSQL, with racing guesses counted one by one."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from tillroll.console.config import ConsoleConfig
from tillroll.console.users import Login, LoginResult, Role, add_user, authenticate
from tillroll.host.admin import add_merchant
from tillroll.host.store import HostStore, open_store
from tillroll.store.tables import audit_log, console_login_failures

MID = "898310048990001"
PASSWORD = "correct horse battery"
NOW = datetime(2026, 12, 3, 9, 0)
CONFIG = ConsoleConfig(lockout_failures=4, lockout_minutes=10)


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    add_user(s.engine, "li.lei", PASSWORD, Role.CASHIER, MID, now=NOW)
    yield s
    s.engine.dispose()


def attempt(store: HostStore, username: str, password: str, now: datetime) -> Login:
    with store.engine.begin() as conn:
        return authenticate(conn, username, password, now=now, config=CONFIG)


def seen(login: Login) -> tuple[LoginResult, int | None, datetime | None]:
    """What the log-in page shows of an answer: its kind, the tries left, the lock's end."""
    return login.result, login.failures_left, login.locked_until


def test_an_unknown_name_is_answered_like_a_taken_one_at_every_try(store: HostStore) -> None:
    instants = [NOW + timedelta(seconds=i) for i in range(CONFIG.lockout_failures + 2)]
    instants += [instants[-1] + timedelta(minutes=CONFIG.lockout_minutes, seconds=1)]  # lock over
    taken = [seen(attempt(store, "li.lei", "a wrong guess", at)) for at in instants]
    free = [seen(attempt(store, "han.meimei", "a wrong guess", at)) for at in instants]

    assert free == taken
    kinds = [k for k, _, _ in taken]
    assert kinds == [LoginResult.WRONG] * 3 + [LoginResult.LOCKED] * 3 + [LoginResult.WRONG]
    assert [left for _, left, _ in taken][:3] == [3, 2, 1]
    with store.engine.connect() as conn:
        lockouts = conn.execute(
            select(audit_log.c.target).where(audit_log.c.action == "user.lockout").order_by(audit_log.c.id)
        ).scalars()
        assert list(lockouts) == ["user:li.lei", "user:han.meimei"]  # the guessing is on record


def test_the_right_password_during_a_lock_is_refused_and_works_after_it(store: HostStore) -> None:
    for i in range(CONFIG.lockout_failures):
        attempt(store, "li.lei", "a wrong guess", NOW + timedelta(seconds=i))
    assert attempt(store, "li.lei", PASSWORD, NOW + timedelta(minutes=1)).result is LoginResult.LOCKED
    after = NOW + timedelta(minutes=CONFIG.lockout_minutes, seconds=10)
    assert attempt(store, "li.lei", PASSWORD, after).result is LoginResult.OK


def test_racing_guesses_at_an_unknown_name_are_counted_one_by_one(store: HostStore) -> None:
    with ThreadPoolExecutor(max_workers=CONFIG.lockout_failures) as pool:
        answers = list(
            pool.map(
                lambda _: seen(attempt(store, "wei.wei", "a wrong guess", NOW)),
                range(CONFIG.lockout_failures + 1),
            )
        )
    kinds = sorted(k.value for k, _, _ in answers)
    assert kinds == sorted([LoginResult.WRONG.value] * 3 + [LoginResult.LOCKED.value] * 2), answers
    assert sorted(left for k, left, _ in answers if k is LoginResult.WRONG) == [1, 2, 3]


def test_spent_counters_are_pruned_and_a_new_user_starts_clean(store: HostStore) -> None:
    for i in range(CONFIG.lockout_failures):
        attempt(store, "ma.li", "a wrong guess", NOW + timedelta(seconds=i))
    attempt(store, "zhou.jie", "a wrong guess", NOW)
    later = NOW + timedelta(minutes=CONFIG.lockout_minutes, seconds=5)
    attempt(store, "zhou.jie", "a wrong guess", later)  # prunes ma.li's run-out lock
    with store.engine.connect() as conn:
        names = conn.execute(select(console_login_failures.c.username)).scalars().all()
    assert names == ["zhou.jie"]

    add_user(store.engine, "zhou.jie", PASSWORD, Role.CASHIER, MID, now=later)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(console_login_failures)).scalar_one() == 0
    left = attempt(store, "zhou.jie", "a wrong guess", later).failures_left
    assert left == CONFIG.lockout_failures - 1  # not the two failures from before it existed
