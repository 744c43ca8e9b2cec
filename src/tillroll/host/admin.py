"""Registering merchants, terminals and cards (the `tillroll host add-*` commands)."""

from __future__ import annotations

import os
import re

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from tillroll.clock import Clock, SystemClock
from tillroll.host.store import HostStore, key_label, open_store
from tillroll.issuer import bank
from tillroll.store.tables import merchants, terminals

_MID = re.compile(r"^[0-9A-Za-z]{15}$")
_TID = re.compile(r"^[0-9A-Za-z]{8}$")


class AdminError(ValueError):
    pass


def _store(db: str | HostStore | None) -> HostStore:
    return db if isinstance(db, HostStore) else open_store(db)


def add_merchant(
    db: str | HostStore | None, mid: str, name: str, *, fee_rate_ppm: int = 6000, clock: Clock | None = None
) -> None:
    if not _MID.match(mid):
        raise AdminError(f"merchant id {mid!r} must be 15 letters or digits")
    if not name.strip() or len(name) > 80:
        raise AdminError("merchant name must be 1 to 80 characters")
    store = _store(db)
    try:
        with store.engine.begin() as conn:
            conn.execute(
                insert(merchants).values(
                    mid=mid, name=name, fee_rate_ppm=fee_rate_ppm, created_at=(clock or SystemClock()).now()
                )
            )
    except IntegrityError:
        raise AdminError(f"merchant {mid} is already registered") from None


def add_terminal(
    db: str | HostStore | None, tid: str, mid: str, tmk: bytes | None = None, *, clock: Clock | None = None
) -> bytes:
    """Register a terminal; returns its TMK (random when not given)."""
    if not _TID.match(tid):
        raise AdminError(f"terminal id {tid!r} must be 8 letters or digits")
    if tmk is not None and len(tmk) != 16:
        raise AdminError("TMK must be 16 bytes (32 hex digits)")
    tmk = tmk or os.urandom(16)
    store = _store(db)
    with store.engine.begin() as conn:
        if conn.execute(select(merchants.c.mid).where(merchants.c.mid == mid)).first() is None:
            raise AdminError(
                f"merchant {mid} is not registered: add it first with `tillroll host add-merchant`"
            )
        if conn.execute(select(terminals.c.tid).where(terminals.c.tid == tid)).first() is not None:
            raise AdminError(f"terminal {tid} is already registered")
        conn.execute(
            insert(terminals).values(
                tid=tid,
                mid=mid,
                tmk_enc=store.keystore.seal(tmk, label=key_label(tid, "tmk")),
                created_at=(clock or SystemClock()).now(),
            )
        )
    return tmk


def add_card(
    db: str | HostStore | None,
    pan: str,
    expiry_yymm: str,
    pin: str,
    balance_minor: int,
    *,
    limit_minor: int | None = None,
    clock: Clock | None = None,
) -> None:
    store = _store(db)
    try:
        with store.engine.begin() as conn:
            bank.add_card(
                conn,
                pan=pan,
                expiry_yymm=expiry_yymm,
                pin=pin,
                balance_minor=balance_minor,
                limit_minor=limit_minor,
                now=(clock or SystemClock()).now(),
                keystore=store.keystore,
            )
    except bank.CardError as exc:
        raise AdminError(str(exc)) from None
    except IntegrityError:
        raise AdminError(f"card ending {pan[-4:]} is already registered") from None


def card_messages(db: str | HostStore | None, pan: str) -> list[str]:
    """The cardholder's message stream (what the customer's phone shows)."""
    with _store(db).engine.connect() as conn:
        return bank.messages(conn, pan)


def card_balance(db: str | HostStore | None, pan: str) -> int:
    with _store(db).engine.connect() as conn:
        return bank.card_balance(conn, pan)
