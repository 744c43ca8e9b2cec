"""A local SMS gateway for tests and the demo (FastAPI): what a real HTTP SMS gateway does, here.

``POST /messages`` with ``{"id", "to", "text"}`` (``to`` in E.164) stores the message under its
phone and answers 201; the same ``id`` again answers 200 ``duplicate`` and stores nothing (the
gateway deduplicates on the id, as the idempotency key promises). ``GET /messages?to=PHONE``
lists a phone's messages; ``POST /control/fail`` with ``{"count": N, "status": 503}`` (and
optionally ``"retry_after_s"``, sent as Retry-After) makes the next N sends fail.
``requests`` counts every send, duplicates included.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

ID_MAX = 128
TEXT_MAX = 1000  # characters; a long SMS is sent as several parts
READY_TIMEOUT_S = 10.0
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")


class SmsIn(BaseModel):
    id: str = Field(min_length=1, max_length=ID_MAX)
    to: str
    text: str = Field(min_length=1, max_length=TEXT_MAX)


class FailIn(BaseModel):
    count: int = Field(ge=0, le=10_000)
    status: int = Field(default=503, ge=400, le=599)
    retry_after_s: int | None = Field(default=None, ge=0, le=86_400)  # sent as Retry-After


@dataclass(frozen=True)
class Sms:
    id: str
    to: str
    text: str


@dataclass
class GatewayState:
    by_phone: dict[str, list[Sms]] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    requests: int = 0
    fail_next: int = 0
    fail_status: int = 503
    retry_after_s: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def messages(self, phone: str) -> list[Sms]:
        with self.lock:
            return list(self.by_phone.get(phone, []))


def create_app(state: GatewayState | None = None) -> FastAPI:
    state = state or GatewayState()
    app = FastAPI(title="tillroll local SMS gateway")
    app.state.gateway = state

    @app.post("/messages")
    def send(sms: SmsIn) -> JSONResponse:
        with state.lock:
            state.requests += 1
            if state.fail_next > 0:
                state.fail_next -= 1
                headers = {} if state.retry_after_s is None else {"retry-after": str(state.retry_after_s)}
                return JSONResponse(
                    {"error": "gateway told to fail"}, status_code=state.fail_status, headers=headers
                )
            if not _E164.match(sms.to):
                return JSONResponse({"error": f"{sms.to!r} is not an E.164 number"}, status_code=422)
            if sms.id in state.ids:
                return JSONResponse({"status": "duplicate", "id": sms.id}, status_code=200)
            state.ids.add(sms.id)
            state.by_phone.setdefault(sms.to, []).append(Sms(sms.id, sms.to, sms.text))
        return JSONResponse({"status": "accepted", "id": sms.id}, status_code=201)

    @app.get("/messages")
    def listed(to: str) -> list[dict[str, Any]]:
        return [{"id": s.id, "to": s.to, "text": s.text} for s in state.messages(to)]

    @app.post("/control/fail")
    def fail(order: FailIn) -> dict[str, int]:
        with state.lock:
            state.fail_next, state.fail_status = order.count, order.status
            state.retry_after_s = order.retry_after_s
        return {"fail_next": order.count}

    return app


@contextmanager
def running_gateway(host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[str, GatewayState]]:
    """The gateway served by uvicorn in a thread; yields its base URL and its state."""
    state = GatewayState()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="sms-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server.started:  # uvicorn offers no event to wait on; bounded
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the SMS gateway did not start on {host}:{bound} within {READY_TIMEOUT_S} s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound}", state
    finally:
        server.should_exit = True
        thread.join(READY_TIMEOUT_S)
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m tillroll.sim.sms_gateway [--listen HOST:PORT]``: serve until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="A local HTTP SMS gateway that keeps what it receives.")
    parser.add_argument("--listen", default="127.0.0.1:8026", help="HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(create_app(), host=host or "127.0.0.1", port=int(port), log_level="info")


if __name__ == "__main__":
    main()
