"""The audit chain under writers racing: every append reads the chain's tail, so two at once must
be serialised (PostgreSQL: an advisory lock; SQLite: its one writer), or two rows would name the
same predecessor and the chain would break."""

from __future__ import annotations

import threading
from datetime import datetime

from sqlalchemy import select

from tillroll.console.audit import record, verify
from tillroll.store import make_engine, migrate
from tillroll.store.tables import audit_log

WRITERS, ROWS_EACH = 4, 15


def test_racing_writers_keep_one_unbroken_chain(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    start = threading.Barrier(WRITERS, timeout=30)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            start.wait()
            for i in range(ROWS_EACH):
                with engine.begin() as conn:
                    record(conn, at=datetime(2026, 12, 2, 8, 0, i), actor=f"u{n}", action="test.race",
                           target=f"t{n}.{i}", after={"i": i})  # fmt: skip
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with engine.connect() as conn:
        report = verify(conn)
        prevs = list(conn.execute(select(audit_log.c.prev_hash)).scalars())
    engine.dispose()
    assert errors == []
    assert report.ok and report.rows == WRITERS * ROWS_EACH, report
    assert len(set(prevs)) == len(prevs)  # no two rows claim the same predecessor
