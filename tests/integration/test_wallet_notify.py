"""The asynchronous payment notification (WALLET.md §5) to a real local receiver over HTTP.

The receiver is written from the contract: it checks the signature with the merchant's key,
acknowledges with HTTP 200 and {"return_code": "SUCCESS"} (unless told to fail this attempt), and
deduplicates on transaction_id.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, WalletServer, serve_app, wallet_server

from tillroll.wallet.admin import add_merchant, add_user, balance_fen, issue_code, user_messages
from tillroll.wallet.config import NOTIFY_SCHEDULE_S, WalletConfig
from tillroll.wallet.sign import verify
from tillroll.wallet.tables import notifications

WAIT_S = 20.0
START_FEN = 1000_00
NOTIFY_FIELDS = {"mch_id", "nonce_str", "out_trade_no", "transaction_id", "total_fee", "time_end", "brand"}


@dataclass
class Receiver:
    """Fails its first ``fail_first`` attempts, in turn: HTTP 500, a FAIL body, no answer in time
    (then a FAIL body, so a late read cannot turn the failure into an acknowledgement)."""

    fail_first: int = 0
    hang_s: float = 1.0
    posts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)  # deduplicated on transaction_id
    acked: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/notify")
        async def notify(request: Request) -> Response:
            body = await request.json()
            with self.lock:
                self.posts.append((time.monotonic(), body))
                n = len(self.posts)
            if not isinstance(body, dict) or not verify(body, MCH_KEY):
                return JSONResponse({"return_code": "FAIL", "return_msg": "bad sign"})
            if n <= self.fail_first:
                if n % 3 == 1:
                    return Response("oops", status_code=500)
                if n % 3 == 2:
                    return JSONResponse({"return_code": "FAIL"})
                await asyncio.sleep(self.hang_s)  # longer than the provider waits
                # Too late, and a failure all the same: on a loaded machine the provider's loop can
                # stall past its timeout and still read this answer, and the attempt must count as
                # failed either way (a late SUCCESS here once ended a give-up test early, at 6 of 16).
                return JSONResponse({"return_code": "FAIL", "return_msg": "too late"})
            with self.lock:
                self.facts.setdefault(body["transaction_id"], body)
            self.acked.set()
            return JSONResponse({"return_code": "SUCCESS", "return_msg": "OK"})

        return app


@contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    with serve_app(receiver.app()) as base_url:
        yield base_url + "/notify"


def rows(wallet: WalletServer) -> list[dict[str, Any]]:
    with wallet.engine.connect() as conn:
        return [
            dict(r) for r in conn.execute(sa.select(notifications).order_by(notifications.c.id)).mappings()
        ]


def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S} s"
        time.sleep(0.02)


def paid(wallet: WalletServer, name: str, out_trade_no: str, fee: int) -> dict[str, Any]:
    code = issue_code(wallet.engine, name)
    return wallet.call("/v1/pay", auth_code=code, out_trade_no=out_trade_no, total_fee=fee)


def test_retried_on_the_scaled_schedule_until_acknowledged(db_url: str) -> None:
    scale = 0.02  # 15 s -> 0.3 s
    receiver = Receiver(fail_first=3, hang_s=1.0)
    config = WalletConfig(notify_scale=scale, notify_timeout_s=0.4, sweep_interval_s=0.02)
    with receiving(receiver) as url, wallet_server(db_url, config) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY, notify_url=url)
        add_user(wallet.engine, "ann", START_FEN)
        answer = paid(wallet, "ann", "N-1", 1250)
        assert answer["result_code"] == "SUCCESS"
        assert receiver.acked.wait(WAIT_S)
        until(lambda: rows(wallet)[0]["acknowledged_at"] is not None, "acknowledgement recorded")
        [row] = rows(wallet)
        assert row["attempts"] == 4 and row["next_attempt_at"] is None
    bodies = [b for _, b in receiver.posts]
    assert len(bodies) == 4
    assert {b["transaction_id"] for b in bodies} == {answer["transaction_id"]}
    assert len({b["nonce_str"] for b in bodies}) == 4  # each attempt freshly signed
    body = bodies[-1]
    assert set(body) >= NOTIFY_FIELDS and body["result_code"] == "SUCCESS"
    assert (body["out_trade_no"], body["total_fee"], body["time_end"]) == ("N-1", 1250, answer["time_end"])
    assert list(receiver.facts) == [answer["transaction_id"]]  # four deliveries, one fact
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(receiver.posts)]
    for gap, interval in zip(gaps, NOTIFY_SCHEDULE_S, strict=False):
        assert gap >= interval * scale * 0.9, (gaps, "an attempt came before its time")


def test_confirmed_later_is_notified_without_anyone_asking(db_url: str) -> None:
    """confirm:S — the background task confirms, charges and notifies; nobody queries."""
    receiver = Receiver()
    config = WalletConfig(sweep_interval_s=0.02)
    with receiving(receiver) as url, wallet_server(db_url, config) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY, notify_url=url)
        add_user(wallet.engine, "ben", START_FEN, behaviour="confirm:0.3")
        assert paid(wallet, "ben", "N-2", 500)["err_code"] == "USERPAYING"
        assert receiver.acked.wait(WAIT_S)
        assert balance_fen(wallet.engine, "ben") == START_FEN - 500
        assert user_messages(wallet.engine, "ben") == [f"您在{MCH_NAME}付款5.00元"]
    [fact] = receiver.facts.values()
    assert fact["out_trade_no"] == "N-2"


def test_restart_continues_the_retries(db_url: str) -> None:
    receiver = Receiver(fail_first=1)
    # The retry is due 1.5 s after the first attempt (15 s × 0.1): time enough for the first
    # server to stop first even on a loaded machine (0.3 s was not, once).
    config = WalletConfig(notify_scale=0.1, sweep_interval_s=0.02)
    with receiving(receiver) as url:
        with wallet_server(db_url, config) as first:
            add_merchant(first.engine, MCH_ID, MCH_NAME, MCH_KEY, notify_url=url)
            add_user(first.engine, "cal", START_FEN)
            answer = paid(first, "cal", "N-3", 100)
            until(lambda: rows(first)[0]["attempts"] == 1, "first attempt recorded")
        # The first server is gone before its retry; a new one on the same database continues.
        assert not receiver.acked.is_set()
        with wallet_server(db_url, config) as second:
            assert receiver.acked.wait(WAIT_S)
            until(lambda: rows(second)[0]["acknowledged_at"] is not None, "acknowledgement recorded")
            assert rows(second)[0]["attempts"] == 2
    assert list(receiver.facts) == [answer["transaction_id"]]


def test_gives_up_after_the_last_interval(db_url: str) -> None:
    receiver = Receiver(fail_first=10_000)
    config = WalletConfig(notify_scale=0.00002, notify_timeout_s=0.3, sweep_interval_s=0.01)  # 24 h -> 1.7 s
    with receiving(receiver) as url, wallet_server(db_url, config) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY, notify_url=url)
        add_user(wallet.engine, "dot", START_FEN)
        paid(wallet, "dot", "N-4", 100)
        until(lambda: rows(wallet)[0]["next_attempt_at"] is None, "retries exhausted")
        [row] = rows(wallet)
        assert row["attempts"] == 1 + len(NOTIFY_SCHEDULE_S) and row["acknowledged_at"] is None
        assert row["last_error"]
    assert len(receiver.posts) == 16 and not receiver.facts


def test_no_notify_url_no_notification_and_unpaid_orders_are_never_announced(db_url: str) -> None:
    receiver = Receiver()
    with receiving(receiver) as url, wallet_server(db_url, WalletConfig(userpaying_close_s=0.3)) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY, notify_url=url)
        add_merchant(wallet.engine, "QUIET", "无回调店", "quiet-merchant-key-0001")
        add_user(wallet.engine, "eli", START_FEN, behaviour="never")
        add_user(wallet.engine, "poor", 1)
        assert paid(wallet, "eli", "N-5", 100)["err_code"] == "USERPAYING"
        assert paid(wallet, "poor", "N-6", 100)["err_code"] == "NOTENOUGH"
        wallet.call("/v1/reverse", out_trade_no="N-7")
        until(lambda: wallet.call("/v1/query", out_trade_no="N-5")["trade_state"] == "CLOSED", "closed")
        add_user(wallet.engine, "fin", START_FEN)
        code = issue_code(wallet.engine, "fin")
        quiet = wallet.call(
            "/v1/pay",
            key="quiet-merchant-key-0001",
            mch_id="QUIET",
            auth_code=code,
            out_trade_no="Q-1",
            total_fee=100,
        )
        assert quiet["result_code"] == "SUCCESS"
        assert rows(wallet) == []
    assert receiver.posts == []


def test_a_merchant_slow_to_answer_delays_nothing_else(db_url: str) -> None:
    """While one notification waits for a merchant that does not answer, the background task still
    closes an unconfirmed order (nobody queries it) and notifies another merchant."""
    release = threading.Event()
    stuck = FastAPI()

    @stuck.post("/notify")
    async def hang(request: Request) -> Response:
        await request.body()
        await asyncio.to_thread(release.wait, WAIT_S)
        return JSONResponse({"return_code": "SUCCESS"})

    other = Receiver()
    config = WalletConfig(
        userpaying_close_s=0.5, notify_timeout_s=WAIT_S, notify_lease_s=WAIT_S * 2, sweep_interval_s=0.02
    )
    with (
        serve_app(stuck) as stuck_url,
        receiving(other) as other_url,
        wallet_server(db_url, config) as wallet,
    ):
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY, notify_url=stuck_url + "/notify")
        add_merchant(wallet.engine, "M2", "第二家店", MCH_KEY, notify_url=other_url)
        add_user(wallet.engine, "gil", START_FEN)
        add_user(wallet.engine, "hol", START_FEN, behaviour="never")
        assert paid(wallet, "gil", "S-1", 100)["result_code"] == "SUCCESS"
        until(lambda: rows(wallet) != [] and rows(wallet)[0]["next_attempt_at"] is not None, "claimed")
        assert paid(wallet, "hol", "S-2", 100)["err_code"] == "USERPAYING"
        code = issue_code(wallet.engine, "gil")
        assert wallet.call("/v1/pay", mch_id="M2", auth_code=code, out_trade_no="S-3", total_fee=50)[
            "result_code"
        ] == ("SUCCESS")
        from tillroll.wallet.tables import orders

        def closed() -> bool:
            with wallet.engine.connect() as conn:
                state = conn.execute(
                    sa.select(orders.c.state).where(orders.c.out_trade_no == "S-2")
                ).scalar_one()
            return bool(state == "CLOSED")

        until(closed, "the unconfirmed order closed by the background task")
        assert other.acked.wait(WAIT_S)
        assert not release.is_set() and rows(wallet)[0]["attempts"] == 0  # the first is still waiting
        release.set()
        until(lambda: rows(wallet)[0]["acknowledged_at"] is not None, "the slow merchant acknowledged")
