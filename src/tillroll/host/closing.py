"""Batches the host closes itself (PROFILE §6): a sign-in after a lost journal, and cut-over.

Either way the batch is settled as a 0500 would settle it (its approved sales reach the
merchant, fees are taken), the settlement row says it was closed by the host and carries no
terminal figures, the terminal's session admits nothing new in it (77), and its next sign-in
gets the next batch in 60.2. The merchant is alerted (tillroll.notify) in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, or_, select

from tillroll.host.settlement import ClosedBatch, ClosedBy, close_batch
from tillroll.notify.facts import AlertKind
from tillroll.notify.outbox import MessageKind
from tillroll.notify.routing import fan_out
from tillroll.store.tables import merchants, requests, sessions, settlements, terminals

STAN_MAX = 999_999
# STANs wrap from 999999 to 000001 and a batch never holds this many requests (PROFILE §6): a
# STAN up to this far ahead of another, around the wrap, is "above" it.
_STAN_AHEAD_MAX = STAN_MAX // 2


def _stans_at_or_above(stan: int) -> Any:
    """A condition on requests.stan: the stored STAN is `stan` or above it, counting the wrap."""
    high = stan + _STAN_AHEAD_MAX
    if high <= STAN_MAX:
        return and_(requests.c.stan >= f"{stan:06d}", requests.c.stan <= f"{high:06d}")
    return or_(requests.c.stan >= f"{stan:06d}", requests.c.stan <= f"{high - STAN_MAX:06d}")


def journal_lost(conn: Connection, tid: str, batch: str, sign_in_stan: str) -> bool:
    """A sign-in whose STAN is not above the highest the host stored for the terminal's open
    batch: the terminal started its counter again and would repeat keys it used before."""
    if not (sign_in_stan.isdigit() and len(sign_in_stan) == 6):
        return False
    query = select(
        exists().where(
            requests.c.tid == tid,
            requests.c.batch == batch,
            _stans_at_or_above(int(sign_in_stan)),
        )
    )
    return bool(conn.execute(query).scalar())


def batch_for_sign_in(conn: Connection, term: Any, sign_in_stan: str, now: datetime) -> str:
    """The batch a sign-in names in 60.2: the terminal's open batch, or, when its journal was
    lost, a new one, after the host closed and settled the open one.

    The terminal's row is locked and read again: a settlement or cut-over of this terminal in
    flight (another host process, on PostgreSQL) either commits first — then this sign-in sees
    the next batch — or waits for this one and then closes the session it opens. Read without
    the lock, a sign-in could hand out the batch a racing settlement was closing, in a session
    left active (tests/integration/test_host_race_pg.py found it)."""
    tid = str(term["tid"])
    batch = str(
        conn.execute(select(terminals.c.batch).where(terminals.c.tid == tid).with_for_update()).scalar_one()
    )
    if not journal_lost(conn, str(term["tid"]), batch, sign_in_stan):
        return batch
    closed = close_batch(
        conn,
        tid=str(term["tid"]),
        mid=str(term["mid"]),
        batch=batch,
        fee_rate_ppm=int(term["fee_rate_ppm"]),
        now=now,
        theirs=None,
        closed_by=ClosedBy.HOST,
    )
    alert_merchant(conn, AlertKind.JOURNAL_LOSS, closed, now)
    return _next_open_batch(conn, closed.tid)


def alert_merchant(conn: Connection, alert: AlertKind, closed: ClosedBatch, now: datetime) -> None:
    """Tell the merchant, in the transaction that closed the batch, that the host closed it."""
    fact = {
        "id": f"{alert.value}:{closed.tid}:{closed.batch}",
        "alert": alert.value,
        "mid": closed.mid,
        "tid": closed.tid,
        "batch": closed.batch,
        "at": now.isoformat(),
        "amount_minor": closed.totals.debit_minor,
        "count": closed.totals.debit_count,
        "net_minor": closed.net_minor,
    }
    fan_out(conn, MessageKind.MERCHANT_ALERT, fact, now)


def _next_open_batch(conn: Connection, tid: str) -> str:
    return str(conn.execute(select(terminals.c.batch).where(terminals.c.tid == tid)).scalar_one())


def open_batches(
    conn: Connection, before: datetime, *, tid: str | None = None, lock: bool = False
) -> list[Any]:
    """Each terminal's open batch that a sign-in opened before `before` and nobody settled
    (only `tid`'s, if given); `lock` takes its terminal row for update."""
    opened = (
        select(sessions.c.tid, sessions.c.batch, func.min(sessions.c.signed_in_at).label("opened_at"))
        .group_by(sessions.c.tid, sessions.c.batch)
        .subquery()
    )
    settled = select(settlements.c.id).where(
        settlements.c.tid == terminals.c.tid, settlements.c.batch == terminals.c.batch
    )
    query = (
        select(
            terminals.c.tid,
            terminals.c.mid,
            terminals.c.batch,
            merchants.c.fee_rate_ppm,
            opened.c.opened_at,
        )
        .join(merchants, merchants.c.mid == terminals.c.mid)
        .join(opened, and_(opened.c.tid == terminals.c.tid, opened.c.batch == terminals.c.batch))
        .where(opened.c.opened_at < before, ~exists(settled))
        .order_by(terminals.c.tid)
    )
    if tid is not None:
        query = query.where(terminals.c.tid == tid)
    if lock:
        query = query.with_for_update(of=terminals)
    return list(conn.execute(query).mappings())


def cutover(engine: Engine, *, before: datetime, now: datetime) -> list[ClosedBatch]:
    """Close and settle every batch still open from before `before` (the merchant's local
    time, as instants are stored): a terminal that died mid-day still gets its merchant paid.

    Each batch is closed in a transaction of its own that holds only its terminal's row. A
    group commit in flight holds shared locks on several terminals' rows, taken in the order
    its requests arrived; a cut-over that locked every row at once, in its own order, formed a
    cycle with it and PostgreSQL aborted one of the two (tests/integration/test_host_close_race.py
    found it). Holding one row at a time, the cut-over only ever waits for a group, never a
    group for it and it for the group. A crash part-way leaves the remaining batches open; the
    next run closes them (a batch already closed is no longer listed)."""
    with engine.connect() as conn:
        tids = [str(row["tid"]) for row in open_batches(conn, before)]
    closed: list[ClosedBatch] = []
    for tid in tids:
        with engine.begin() as conn:
            # Listed again under the lock: the terminal may have settled or signed in since.
            for row in open_batches(conn, before, tid=tid, lock=True):
                batch = close_batch(
                    conn,
                    tid=str(row["tid"]),
                    mid=str(row["mid"]),
                    batch=str(row["batch"]),
                    fee_rate_ppm=int(row["fee_rate_ppm"]),
                    now=now,
                    theirs=None,
                    closed_by=ClosedBy.HOST,
                )
                alert_merchant(conn, AlertKind.CUTOVER, batch, now)
                closed.append(batch)
    return closed
