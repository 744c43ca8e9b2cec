"""Setting the simulator up and looking into it: merchants, users, fresh codes, balances, messages.

Used by ``tillroll wallet …`` and by tests. ``open_wallet`` creates the schema (see tables.py for
why the simulator does that itself).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from tillroll.clock import Clock, SystemClock
from tillroll.owner_only import private_dir
from tillroll.store.engine import DEFAULT_DATA_DIR, make_engine
from tillroll.wallet.behaviour import parse_behaviour
from tillroll.wallet.codes import Brand, new_code
from tillroll.wallet.fields import MCH_ID_RE
from tillroll.wallet.tables import codes, merchants, messages, metadata, orders, refunds, users

CODE_TRIES_MAX = 5
USER_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")


class WalletAdminError(ValueError):
    pass


def default_wallet_url() -> str:
    """``TILLROLL_WALLET_DB``, else a SQLite file tillroll-data/wallet.db."""
    env = os.environ.get("TILLROLL_WALLET_DB")
    if env:
        return env
    private_dir(DEFAULT_DATA_DIR)
    return f"sqlite:///{(Path(DEFAULT_DATA_DIR) / 'wallet.db').resolve()}"


def open_wallet(url: str | None = None) -> Engine:
    engine = make_engine(url or default_wallet_url())
    metadata.create_all(engine)
    return engine


def add_merchant(engine: Engine, mch_id: str, name: str, key: str, notify_url: str | None = None) -> None:
    if not MCH_ID_RE.match(mch_id):
        raise WalletAdminError(f"merchant id {mch_id!r} must be 1–32 characters [A-Za-z0-9_-]")
    if not name.strip() or len(name) > 128:
        raise WalletAdminError("merchant name must be 1–128 characters")
    if not 16 <= len(key) <= 128 or not key.isascii() or not key.isprintable():
        raise WalletAdminError("merchant key must be 16–128 printable ASCII characters")
    if notify_url and not re.match(r"^https?://", notify_url):
        raise WalletAdminError(f"notify URL {notify_url!r} must start with http:// or https://")
    try:
        with engine.begin() as conn:
            conn.execute(
                merchants.insert().values(mch_id=mch_id, name=name, key=key, notify_url=notify_url or None)
            )
    except IntegrityError:
        raise WalletAdminError(f"merchant {mch_id} exists already") from None


def add_user(
    engine: Engine, name: str, balance_fen: int, brand: Brand = Brand.WX, behaviour: str = "ok"
) -> None:
    if not USER_RE.match(name):
        raise WalletAdminError(f"user {name!r} must be 1–64 characters [A-Za-z0-9_.@+-]")
    if balance_fen < 0:
        raise WalletAdminError("balance must not be negative")
    parsed = parse_behaviour(behaviour)  # BehaviourError (a ValueError) says what is wrong
    try:
        with engine.begin() as conn:
            conn.execute(
                users.insert().values(name=name, brand=brand, balance_fen=balance_fen, behaviour=str(parsed))
            )
    except IntegrityError:
        raise WalletAdminError(f"user {name} exists already") from None


def _user_id(conn: sa.Connection, name: str) -> int:
    user_id = conn.execute(sa.select(users.c.id).where(users.c.name == name)).scalar()
    if user_id is None:
        raise WalletAdminError(f"no wallet user {name!r}")
    return int(user_id)


def issue_code(engine: Engine, name: str, clock: Clock | None = None) -> str:
    """A fresh payment code of the user's brand, live for the code lifetime from now."""
    now = (clock or SystemClock()).now()
    for _ in range(CODE_TRIES_MAX):
        try:
            with engine.begin() as conn:
                user_id = _user_id(conn, name)
                brand = Brand(
                    conn.execute(sa.select(users.c.brand).where(users.c.id == user_id)).scalar_one()
                )
                code = new_code(brand)
                conn.execute(codes.insert().values(code=code, user_id=user_id, issued_at=now))
                return code
        except IntegrityError:
            continue  # the random code exists already: draw again
    raise WalletAdminError(f"could not draw a new code in {CODE_TRIES_MAX} tries")


def balance_fen(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        user_id = _user_id(conn, name)
        return int(conn.execute(sa.select(users.c.balance_fen).where(users.c.id == user_id)).scalar_one())


def user_messages(engine: Engine, name: str) -> list[str]:
    with engine.connect() as conn:
        user_id = _user_id(conn, name)
        rows = conn.execute(
            sa.select(messages.c.text).where(messages.c.user_id == user_id).order_by(messages.c.id)
        ).scalars()
        return [str(t) for t in rows]


def set_behaviour(engine: Engine, name: str, behaviour: str) -> None:
    parsed = parse_behaviour(behaviour)
    with engine.begin() as conn:
        user_id = _user_id(conn, name)
        conn.execute(users.update().where(users.c.id == user_id).values(behaviour=str(parsed)))


def takings_fen(engine: Engine, mch_id: str) -> int:
    with engine.connect() as conn:
        value = conn.execute(sa.select(merchants.c.takings_fen).where(merchants.c.mch_id == mch_id)).scalar()
    if value is None:
        raise WalletAdminError(f"no merchant {mch_id!r}")
    return int(value)


def money_total_fen(engine: Engine) -> int:
    """Every user's balance plus every merchant's takings: constant whatever happens."""
    with engine.connect() as conn:
        user_sum = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(users.c.balance_fen), 0))).scalar_one()
        mch_sum = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(merchants.c.takings_fen), 0))
        ).scalar_one()
    return int(user_sum) + int(mch_sum)


def takings_from_records(engine: Engine, mch_id: str) -> int:
    """The merchant's takings recomputed from orders and refunds (checks ``takings_fen``)."""
    with engine.connect() as conn:
        paid = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(orders.c.total_fee), 0)).where(
                orders.c.mch_id == mch_id, orders.c.state.in_(["SUCCESS", "REFUND"])
            )
        ).scalar_one()
        back = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(refunds.c.refund_fee), 0)).where(
                refunds.c.mch_id == mch_id, refunds.c.status == "SUCCESS"
            )
        ).scalar_one()
    return int(paid) - int(back)
