"""Test helper: the real wallet provider over HTTP on 127.0.0.1, on a free port.

    with wallet_server(db_url) as wallet:          # or WalletConfig(userpaying_close_s=1.0)
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(wallet.engine, "alice", 100_00)
        answer = wallet.call("/v1/pay", auth_code=issue_code(wallet.engine, "alice"), ...)

`wallet.base_url` is what a client is pointed at (e.g. the terminal's wallet client).
`wallet.call` signs a request with the merchant key, POSTs it and checks the answer's signature.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine

from tillroll.clock import Clock, SystemClock
from tillroll.wallet.admin import open_wallet
from tillroll.wallet.app import create_app
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.service import WalletService
from tillroll.wallet.sign import new_nonce, signed, verify

MCH_ID = "1900000109"
MCH_NAME = "测试便利店"
MCH_KEY = "192006250b4c09247ec02edce69f6a2d"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 10.0


@dataclass
class WalletServer:
    base_url: str
    engine: Engine
    service: WalletService
    key: str = MCH_KEY
    mch_id: str = MCH_ID

    def call(
        self, path: str, *, key: str | None = None, check_sign: bool = True, **fields: Any
    ) -> dict[str, Any]:
        """Sign ``fields`` (plus mch_id and a nonce), POST them, return the answer's JSON."""
        body = {"mch_id": self.mch_id, "nonce_str": new_nonce(), **fields}
        answer = httpx.post(self.base_url + path, json=signed(body, key or self.key), timeout=CALL_TIMEOUT_S)
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        if check_sign and data.get("return_code") == "SUCCESS":
            assert verify(data, key or self.key), f"answer not signed right: {data}"
        return data

    def post_raw(self, path: str, content: bytes) -> httpx.Response:
        return httpx.post(
            self.base_url + path,
            content=content,
            headers={"Content-Type": "application/json"},
            timeout=CALL_TIMEOUT_S,
        )


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free 127.0.0.1 port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port} within {READY_TIMEOUT_S} s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)
        sock.close()


@contextmanager
def wallet_server(
    db_url: str, config: WalletConfig | None = None, clock: Clock | None = None, *, background: bool = True
) -> Iterator[WalletServer]:
    """The wallet provider on ``db_url`` (schema created), serving on a free port."""
    engine = open_wallet(db_url)
    service = WalletService(engine, clock or SystemClock(), config or WalletConfig())
    try:
        with serve_app(create_app(service, run_background=background)) as base_url:
            yield WalletServer(base_url, engine, service)
    finally:
        engine.dispose()
