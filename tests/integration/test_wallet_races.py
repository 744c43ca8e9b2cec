"""Races the contract must survive: two provider *processes* on one database, and reverses racing
with the customer's late confirmation (the terminal gives up just as the phone says yes)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, wallet_server

from tillroll.wallet.admin import (
    add_merchant,
    add_user,
    balance_fen,
    issue_code,
    money_total_fen,
    user_messages,
)
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.sign import new_nonce, signed, verify

START_FEN = 1000_00
WAIT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(base: str, path: str, **fields: Any) -> dict[str, Any]:
    body = signed({"mch_id": MCH_ID, "nonce_str": new_nonce(), **fields}, MCH_KEY)
    answer: dict[str, Any] = httpx.post(base + path, json=body, timeout=30).json()
    if answer["return_code"] == "SUCCESS":
        assert verify(answer, MCH_KEY)
    return answer


def test_two_processes_racing_on_one_order_charge_once(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    with wallet_server(db_url) as here:
        add_merchant(here.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(here.engine, "two", START_FEN)
        other = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tillroll",
                "wallet",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--db",
                db_url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            there = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    httpx.post(there + "/v1/query", content=b"{}", timeout=1)
                    break
                except httpx.TransportError:
                    assert other.poll() is None, (tmp_path / "serve.log").read_text()
                    assert time.monotonic() < deadline, "the second process did not answer"
                    time.sleep(0.05)
            bases = [here.base_url, there]
            for round_no in range(3):
                code = issue_code(here.engine, "two")
                barrier = threading.Barrier(12)

                def racer(
                    i: int, code: str = code, round_no: int = round_no, barrier: threading.Barrier = barrier
                ) -> str:
                    barrier.wait(timeout=WAIT_S)
                    a = post(
                        bases[i % 2], "/v1/pay", auth_code=code, out_trade_no=f"P-{round_no}", total_fee=700
                    )
                    return str(a.get("err_code") or a["result_code"])

                with ThreadPoolExecutor(12) as pool:
                    results = list(pool.map(racer, range(12)))
                assert results.count("SUCCESS") == 1 and results.count("ORDERPAID") == 11, results
        finally:
            other.terminate()
            other.wait(timeout=15)
            log.close()
        assert balance_fen(here.engine, "two") == START_FEN - 3 * 700
        assert user_messages(here.engine, "two") == [f"您在{MCH_NAME}付款7.00元"] * 3
        assert money_total_fen(here.engine) == START_FEN


def test_reverse_racing_with_late_confirmation(db_url: str) -> None:
    """Each order's customer confirms at a random moment (some after the close); the terminal
    reverses at once and again until answered. Every order ends REVOKED, every customer has their
    money, and each stream is either empty (closed before a confirmation) or paid-then-reversed."""
    rng = random.Random(7)
    close_s = 0.6
    config = WalletConfig(userpaying_close_s=close_s, sweep_interval_s=0.03)
    with wallet_server(db_url, config) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        names = [f"r{i}" for i in range(12)]
        for name in names:
            add_user(
                wallet.engine, name, START_FEN, behaviour=f"confirm:{rng.uniform(0.0, close_s * 1.3):.3f}"
            )

        def one(i: int) -> str:
            name = names[i]
            no = f"RR-{i}"
            first = post(
                wallet.base_url,
                "/v1/pay",
                auth_code=issue_code(wallet.engine, name),
                out_trade_no=no,
                total_fee=1234,
            )
            assert first.get("err_code") == "USERPAYING", first
            deadline = time.monotonic() + WAIT_S
            while True:
                rev = post(wallet.base_url, "/v1/reverse", out_trade_no=no)
                if rev["result_code"] == "SUCCESS":
                    assert rev["recall"] == "N"
                    break
                assert rev["err_code"] == "USERPAYING" and rev["recall"] == "Y", rev
                assert time.monotonic() < deadline
                time.sleep(rng.uniform(0.0, 0.05))
            return str(post(wallet.base_url, "/v1/query", out_trade_no=no)["trade_state"])

        with ThreadPoolExecutor(12) as pool:
            states = list(pool.map(one, range(12)))
        assert states == ["REVOKED"] * 12
        paid_then_reversed = [f"您在{MCH_NAME}付款12.34元", f"{MCH_NAME}的付款12.34元已撤销，已退回"]
        for name in names:
            assert balance_fen(wallet.engine, name) == START_FEN
            assert user_messages(wallet.engine, name) in ([], paid_then_reversed), name
        assert money_total_fen(wallet.engine) == START_FEN * len(names)
