"""`tillroll wallet …` as a user runs it (WALLET.md §6): real processes, a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tillroll.wallet.codes import Brand, brand_of
from tillroll.wallet.sign import new_nonce, signed

KEY = "cli-merchant-key-0123456789"
READY_S = 15.0


def tillroll(*args: str, db: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillroll", "wallet", *args, "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_setup_commands_and_serve(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'wallet.db'}"
    assert "added" in tillroll("add-merchant", "M100", "--name", "测试便利店", "--key", KEY, db=db).stdout
    tillroll("add-user", "alice", "--balance", "1000", db=db)
    tillroll("add-user", "bob", "--balance", "20.5", "--brand", "ali", "--behaviour", "confirm:1", db=db)
    code = tillroll("code", "alice", db=db).stdout
    assert code.endswith("\n") and code.count("\n") == 1 and brand_of(code.strip()) is Brand.WX
    assert brand_of(tillroll("code", "bob", db=db).stdout.strip()) is Brand.ALI
    assert tillroll("balance", "bob", db=db).stdout == "20.50\n"
    assert (tmp_path / "wallet.db").stat().st_mode & 0o077 == 0

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tillroll", "wallet", "serve", "--listen", f"127.0.0.1:{port}", "--db", db],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_S
        while True:
            try:
                httpx.post(base + "/v1/query", content=b"{}", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "wallet serve did not answer"
                time.sleep(0.05)
        body = signed(
            {
                "mch_id": "M100",
                "nonce_str": new_nonce(),
                "auth_code": code.strip(),
                "out_trade_no": "C-1",
                "total_fee": 1250,
            },
            KEY,
        )
        answer = httpx.post(base + "/v1/pay", json=body, timeout=10).json()
        assert answer["result_code"] == "SUCCESS", answer
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
    assert tillroll("balance", "alice", db=db).stdout == "987.50\n"
    assert tillroll("messages", "alice", db=db).stdout == "您在测试便利店付款12.50元\n"


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("add-user", "x", "--balance", "12.345"), "not a yuan amount"),
        (("add-user", "x", "--balance", "1", "--behaviour", "sometimes"), "behaviour"),
        (("add-user", "x", "--balance", "1", "--behaviour", "fail:ORDERPAID"), "fail:CODE"),
        (("add-merchant", "M1", "--name", "n", "--key", "short"), "key must be"),
        (("balance", "nobody"), "no wallet user"),
        (("code", "nobody"), "no wallet user"),
    ],
)
def test_mistakes_are_one_clear_line(tmp_path: Path, args: tuple[str, ...], why: str) -> None:
    result = tillroll(*args, db=f"sqlite:///{tmp_path / 'w.db'}", check=False)
    assert result.returncode == 2 and why in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_bad_scale(tmp_path: Path) -> None:
    result = tillroll("serve", "--notify-scale", "0", db=f"sqlite:///{tmp_path / 'w.db'}", check=False)
    assert result.returncode == 2 and "notify_scale" in result.stderr
