"""The asynchronous payment notification (WALLET.md §5): durable in the database, sent by the
serve process's background task, retried on the contract's schedule until acknowledged.

A row is written in the transaction that makes an order paid (``service._charge``), so a paid
order is always announced and a rolled-back one never. A sweeper *claims* due rows by moving
their next attempt a lease ahead with a conditional update (two serve processes on one database
do not send the same attempt), sends, and records the result. A crash after sending and before
recording sends that attempt again after the lease: duplicates are possible, as the contract
says, and the merchant deduplicates on ``transaction_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa

from tillroll.clock import Clock
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.service import WalletService, wallet_time
from tillroll.wallet.sign import new_nonce, signed
from tillroll.wallet.tables import merchants, notifications, orders

log = logging.getLogger(__name__)
CLAIM_BATCH_MAX = 50
ERROR_TEXT_MAX = 250


@dataclass(frozen=True)
class Delivery:
    notification_id: int
    url: str
    body: dict[str, object]
    transaction_id: str


def is_ack(status_code: int, body: bytes) -> bool:
    """HTTP 200 with a JSON object whose return_code is SUCCESS; anything else is a failure."""
    if status_code != 200:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("return_code") == "SUCCESS"


@dataclass
class Notifier:
    service: WalletService  # its transactions, clock and config

    @property
    def clock(self) -> Clock:
        return self.service.clock

    @property
    def config(self) -> WalletConfig:
        return self.service.config

    def claim_due(self) -> list[Delivery]:
        now = self.clock.now()
        lease_until = now + timedelta(seconds=self.config.notify_lease_s)
        claimed: list[Delivery] = []
        with self.service.transaction() as conn:
            rows = conn.execute(
                sa.select(notifications, orders, merchants.c.key)
                .join(orders, orders.c.id == notifications.c.order_id)
                .join(merchants, merchants.c.mch_id == orders.c.mch_id)
                .where(notifications.c.next_attempt_at <= now, notifications.c.acknowledged_at.is_(None))
                .order_by(notifications.c.next_attempt_at)
                .limit(CLAIM_BATCH_MAX)
            ).mappings()
            for row in list(rows):
                took = conn.execute(
                    notifications.update()
                    .where(
                        notifications.c.id == row["id"],
                        notifications.c.next_attempt_at == row["next_attempt_at"],
                    )
                    .values(next_attempt_at=lease_until)
                )
                if took.rowcount != 1:
                    continue  # another sweeper has it
                fields: dict[str, object] = {
                    "mch_id": row["mch_id"],
                    "nonce_str": new_nonce(),
                    "out_trade_no": row["out_trade_no"],
                    "transaction_id": row["transaction_id"],
                    "total_fee": row["total_fee"],
                    "time_end": wallet_time(row["paid_at"]),
                    "brand": row["brand"],
                    "result_code": "SUCCESS",
                }
                claimed.append(
                    Delivery(row["id"], row["url"], signed(fields, row["key"]), row["transaction_id"])
                )
        return claimed

    def record(self, delivery: Delivery, acknowledged: bool, error: str = "") -> None:
        now = self.clock.now()
        with self.service.transaction() as conn:
            attempts = conn.execute(
                sa.select(notifications.c.attempts).where(notifications.c.id == delivery.notification_id)
            ).scalar_one()
            done = attempts + 1
            values: dict[str, object] = {"attempts": done}
            if acknowledged:
                values |= {"acknowledged_at": now, "next_attempt_at": None, "last_error": None}
            else:
                interval = self.config.notify_interval_s(done)
                values |= {
                    "next_attempt_at": None if interval is None else now + timedelta(seconds=interval),
                    "last_error": error[:ERROR_TEXT_MAX],
                }
                if interval is None:
                    log.warning(
                        "notification of %s: gave up after %d attempts", delivery.transaction_id, done
                    )
            conn.execute(
                notifications.update().where(notifications.c.id == delivery.notification_id).values(**values)
            )

    async def send(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        try:
            answer = await client.post(delivery.url, json=delivery.body, timeout=self.config.notify_timeout_s)
        except Exception as exc:  # any failure to deliver is an attempt that failed, never a lost row
            ok, error = False, f"{type(exc).__name__}: {exc}"
        else:
            ok = is_ack(answer.status_code, answer.content)
            error = "" if ok else f"HTTP {answer.status_code}: {answer.content[:100]!r}"
        await asyncio.to_thread(self.record, delivery, ok, error)


def next_attempts(first: datetime, config: WalletConfig) -> list[datetime]:
    """When the attempts of a never-acknowledged notification happen (for docs and tests)."""
    times = [first]
    done = 1
    while (interval := config.notify_interval_s(done)) is not None:
        times.append(times[-1] + timedelta(seconds=interval))
        done += 1
    return times
