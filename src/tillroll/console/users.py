"""Console users: roles, argon2id password hashes, log-in with lock-out.

A password is only ever held as an argon2id hash (argon2-cffi's defaults, RFC 9106 low-memory
profile). Failed log-ins are counted in the user's row; `lockout_failures` in a row lock the
account for `lockout_minutes` — a correct password during the lock is refused too, so guessing
cannot go on. A name with no user is counted, answered and locked out the same way (in
console_login_failures) and costs a hash verification like a known one: neither the page's words,
its status nor its timing tell which names exist.
"""

from __future__ import annotations

import contextlib
import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ColumnElement, Connection, Engine, Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tillroll.console import audit
from tillroll.console.config import ConsoleConfig
from tillroll.store.tables import console_login_failures, console_users, merchants

_HASHER = PasswordHasher()  # argon2id
_DUMMY_HASH = _HASHER.hash("not a password of anyone")
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{1,63}")
MIN_PASSWORD = 10


class Role(enum.StrEnum):
    CASHIER = "cashier"
    SUPERVISOR = "supervisor"
    MERCHANT_ADMIN = "merchant_admin"
    OPERATOR = "operator"  # the acquirer's operator: every merchant


# What each role may do beyond reading its merchant's pages (checked by auth.require).
RANK = {Role.CASHIER: 1, Role.SUPERVISOR: 2, Role.MERCHANT_ADMIN: 3, Role.OPERATOR: 4}


class UserError(ValueError):
    """Bad input to add_user: the text says what to change."""


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def add_user(
    engine: Engine, username: str, password: str, role: Role, mid: str | None, *, now: datetime
) -> int:
    """A new user (a merchant's staff need their merchant; an operator has none); returns its id."""
    if not _USERNAME.fullmatch(username):
        raise UserError(
            "the user name must be 2-64 letters, digits or . _ @ - (starting with a letter or digit)"
        )
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must be at least {MIN_PASSWORD} characters")
    if role is Role.OPERATOR and mid is not None:
        raise UserError("an operator sees every merchant: give no --mid")
    if role is not Role.OPERATOR and mid is None:
        raise UserError(f"a {role.value} works for one merchant: give --mid")
    with engine.begin() as conn:
        if (
            mid is not None
            and conn.execute(select(merchants.c.mid).where(merchants.c.mid == mid)).first() is None
        ):
            raise UserError(
                f"merchant {mid} is not known to the host; add it first (tillroll host add-merchant)"
            )
        if conn.execute(select(console_users.c.id).where(console_users.c.username == username)).first():
            raise UserError(f"user {username} exists already")
        # The name's failures from before it was taken (counted like a user's) do not carry over.
        conn.execute(delete(console_login_failures).where(console_login_failures.c.username == username))
        pk = conn.execute(
            insert(console_users).values(
                username=username,
                password_hash=hash_password(password),
                role=role.value,
                mid=mid,
                created_at=now,
            )
        ).inserted_primary_key
        assert pk is not None
        user_id = int(pk[0])
        audit.record(
            conn,
            at=now,
            actor="cli",
            action="user.add",
            target=f"user:{username}",
            mid=mid,
            after={"username": username, "role": role.value, "mid": mid},
        )
    return user_id


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: Role
    mid: str | None


class LoginResult(enum.Enum):
    OK = "ok"
    WRONG = "wrong"  # unknown user or wrong password: the page does not say which
    LOCKED = "locked"  # locked now (by this attempt or before)
    INACTIVE = "inactive"


@dataclass(frozen=True)
class Login:
    result: LoginResult
    user: User | None = None
    locked_until: datetime | None = None
    failures_left: int | None = None


def _user(row: object) -> User:
    m = row._mapping  # type: ignore[attr-defined]
    return User(int(m["id"]), m["username"], Role(m["role"]), m["mid"])


@dataclass(frozen=True)
class _Failures:
    """Where one name's failed log-ins in a row are counted: its user's row, or for a name with
    no user a row of console_login_failures. One rule for both (`_count_failure`), so that the
    page's answers and its lock-out never tell a taken name from a free one."""

    table: Table
    where: ColumnElement[bool]
    failed_logins: int
    locked_until: datetime | None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now


def _unknown_name_failures(conn: Connection, username: str, now: datetime) -> _Failures:
    """The counter of a name with no user, created at 0 (racing guesses: one row, locked)."""
    f = console_login_failures
    # A row at 0 failures whose lock has run out says what no row says: pruned, so a spray of
    # names leaves only the names with failures still counting.
    conn.execute(delete(f).where(f.c.failed_logins == 0, f.c.locked_until <= now))
    insert_fn = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        insert_fn(f)
        .values(username=username, failed_logins=0)
        .on_conflict_do_nothing(index_elements=["username"])
    )
    row = conn.execute(select(f).where(f.c.username == username).with_for_update()).one()._mapping
    return _Failures(f, f.c.username == username, int(row["failed_logins"]), row["locked_until"])


def _count_failure(
    conn: Connection,
    failures: _Failures,
    username: str,
    mid: str | None,
    *,
    now: datetime,
    config: ConsoleConfig,
) -> Login:
    """One more failure in a row: WRONG with the tries left, or LOCKED (audited) at the limit."""
    count = failures.failed_logins + 1
    if count < config.lockout_failures:
        conn.execute(update(failures.table).where(failures.where).values(failed_logins=count))
        return Login(LoginResult.WRONG, failures_left=config.lockout_failures - count)
    until = now + timedelta(minutes=config.lockout_minutes)
    conn.execute(update(failures.table).where(failures.where).values(failed_logins=0, locked_until=until))
    audit.record(
        conn,
        at=now,
        actor=username,
        action="user.lockout",
        target=f"user:{username}",
        mid=mid,
        after={"failures": count, "locked_until": until.isoformat()},
    )
    return Login(LoginResult.LOCKED, locked_until=until)


def authenticate(
    conn: Connection, username: str, password: str, *, now: datetime, config: ConsoleConfig
) -> Login:
    """Check a log-in in the caller's transaction, counting failures and locking (audited)."""
    # The row is locked (PostgreSQL; SQLite's write transaction is exclusive already) so that
    # parallel guesses count one by one: none slips past the lock-out between a read and a write.
    row = conn.execute(
        select(console_users).where(console_users.c.username == username).with_for_update()
    ).first()
    if row is None:
        unknown = _unknown_name_failures(conn, username, now)
        if unknown.locked(now):
            return Login(LoginResult.LOCKED, locked_until=unknown.locked_until)
        with contextlib.suppress(VerificationError):
            _HASHER.verify(_DUMMY_HASH, password)  # the same cost as a known name's check
        return _count_failure(conn, unknown, username, None, now=now, config=config)
    m = row._mapping
    user = _user(row)
    failures = _Failures(
        console_users, console_users.c.id == user.id, int(m["failed_logins"]), m["locked_until"]
    )
    if failures.locked(now):
        return Login(LoginResult.LOCKED, user, locked_until=failures.locked_until)
    good: bool
    try:
        good = _HASHER.verify(m["password_hash"], password)
    except (VerificationError, InvalidHashError):
        good = False
    if not good:
        return _count_failure(conn, failures, username, user.mid, now=now, config=config)
    if not m["active"]:
        return Login(LoginResult.INACTIVE, user)
    if _HASHER.check_needs_rehash(m["password_hash"]):
        conn.execute(
            update(console_users)
            .where(console_users.c.id == user.id)
            .values(password_hash=hash_password(password))
        )
    conn.execute(
        update(console_users).where(console_users.c.id == user.id).values(failed_logins=0, locked_until=None)
    )
    return Login(LoginResult.OK, user)
