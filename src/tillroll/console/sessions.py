"""Server-side console sessions.

The cookie holds a random token (256 bits); the store keeps only its SHA-256, so a copy of the
database opens no session. A session ends when unused for `idle_minutes`, and in any case
`absolute_hours` after log-in. Each session has its own CSRF token, which every POST must carry.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, update

from tillroll.console.config import ConsoleConfig
from tillroll.console.users import Role, User
from tillroll.store.tables import console_sessions, console_users

# last_seen_at is written at most this often (not one write per page view).
_TOUCH_EVERY = timedelta(seconds=30)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    token_hash: str
    user: User
    csrf_token: str
    expires_at: datetime


def open_session(
    conn: Connection, user: User, *, now: datetime, config: ConsoleConfig
) -> tuple[str, Session]:
    """A new session for `user`; returns the cookie's token (never stored) and the session."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    expires = now + timedelta(hours=config.absolute_hours)
    digest = token_hash(token)
    conn.execute(
        insert(console_sessions).values(
            token_hash=digest,
            user_id=user.id,
            csrf_token=csrf,
            created_at=now,
            expires_at=expires,
            last_seen_at=now,
        )
    )
    # Old sessions of anyone are swept here: log-in is rare enough to pay for it.
    conn.execute(delete(console_sessions).where(console_sessions.c.expires_at <= now))
    return token, Session(digest, user, csrf, expires)


def find_session(
    conn: Connection, token: str | None, *, now: datetime, config: ConsoleConfig
) -> Session | None:
    """The live session of a cookie's token, touched; None when absent, expired or idle too long."""
    if not token or len(token) > 128:
        return None
    digest = token_hash(token)
    row = conn.execute(
        select(
            console_sessions,
            console_users.c.username,
            console_users.c.role,
            console_users.c.mid,
            console_users.c.active,
        )
        .join(console_users, console_users.c.id == console_sessions.c.user_id)
        .where(console_sessions.c.token_hash == digest)
    ).first()
    if row is None:
        return None
    m = row._mapping
    idle_end = m["last_seen_at"] + timedelta(minutes=config.idle_minutes)
    if now >= m["expires_at"] or now >= idle_end or not m["active"]:
        conn.execute(delete(console_sessions).where(console_sessions.c.token_hash == digest))
        return None
    if now - m["last_seen_at"] >= _TOUCH_EVERY:
        conn.execute(
            update(console_sessions).where(console_sessions.c.token_hash == digest).values(last_seen_at=now)
        )
    user = User(int(m["user_id"]), m["username"], Role(m["role"]), m["mid"])
    return Session(digest, user, m["csrf_token"], m["expires_at"])


def close_session(conn: Connection, digest: str) -> None:
    conn.execute(delete(console_sessions).where(console_sessions.c.token_hash == digest))
