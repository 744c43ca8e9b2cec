"""Shared parts of the notification tests: a back-office database, merchants, facts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select

from tillroll.notify.outbox import MessageState
from tillroll.store import make_engine, migrate
from tillroll.store.tables import merchants, outbox

MID = "898310048160001"
MID2 = "898310048160002"
MERCHANT_NAME = "测试便利店"
# 2026-12-02 01:30:15 UTC is 09:30:15 in Shanghai.
FACT_AT = datetime(2026, 12, 2, 1, 30, 15)
FACT_AT_LOCAL = "2026-12-02 09:30:15"


def back_office(db_url: str) -> Engine:
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        for mid, name in ((MID, MERCHANT_NAME), (MID2, "第二商户")):
            conn.execute(insert(merchants).values(mid=mid, name=name, created_at=FACT_AT))
    return engine


def cancelled_fact(n: int = 1, contact: str | None = "alice@example.com", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"payment_cancelled:T0000001:ORDER{n:06d}",
        "mid": MID,
        "tid": "T0000001",
        "at": FACT_AT.isoformat(),
        "amount_minor": 1250 + n,
        "code_masked": "134567********1234",
        "brand": "WeChat Pay",
        **({"contact": contact} if contact else {}),
        **extra,
    }


def states(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.messages.c.state, func.count()).group_by(outbox.messages.c.state))
        counts = {str(state): int(n) for state, n in rows}
    return {s.value: counts.get(s.value, 0) for s in MessageState}
