"""A merchant's webhook receiver, written from the Standard Webhooks specification (1.0.0,
"Verifying webhook authenticity"), not from tillroll's signer:

- the signed content is ``{webhook-id}.{webhook-timestamp}.{raw body}``;
- the secret is ``whsec_`` + base64; the HMAC-SHA256 key is the base64-decoded part;
- ``webhook-signature`` is a space-delimited list of ``<version>,<base64 signature>``; ``v1`` is
  HMAC-SHA256; any one matching (constant-time comparison) verifies;
- ``webhook-timestamp`` (Unix seconds) must be within a tolerance of the receiver's clock;
- ``webhook-id`` is the idempotency key: a repeated id is acknowledged and not processed again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

TOLERANCE_S = 5 * 60


@dataclass
class Receiver:
    secret: str
    now_s: Callable[[], float] = time.time
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # by webhook-id, first copy
    requests: list[str] = field(default_factory=list)  # every webhook-id that arrived
    rejected: list[str] = field(default_factory=list)  # why each refused request was refused
    fail_next: int = 0
    answer_status: int | None = None  # answer every request with this status (e.g. 410)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def _key(self) -> bytes:
        assert self.secret.startswith("whsec_")
        return base64.b64decode(self.secret.removeprefix("whsec_"))

    def verify(self, msg_id: str, timestamp: str, body: bytes, signatures: str) -> str | None:
        """None if authentic, else why not."""
        if not (msg_id and timestamp and signatures):
            return "missing webhook headers"
        try:
            sent_at = int(timestamp)
        except ValueError:
            return "timestamp is not an integer"
        if abs(self.now_s() - sent_at) > TOLERANCE_S:
            return "timestamp outside tolerance"
        content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
        expected = base64.b64encode(hmac.new(self._key(), content, hashlib.sha256).digest()).decode()
        for entry in signatures.split(" "):
            version, _, value = entry.partition(",")
            if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
                return None
        return "no signature matches"

    def wait_for(self, count: int, timeout_s: float = 5.0) -> int:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout=timeout_s)
            return len(self.requests)


def create_receiver_app(receiver: Receiver) -> FastAPI:
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> JSONResponse:
        body = await request.body()  # the raw bytes: never parse and re-serialise before verifying
        h = request.headers
        msg_id = h.get("webhook-id", "")
        why = receiver.verify(msg_id, h.get("webhook-timestamp", ""), body, h.get("webhook-signature", ""))
        with receiver.arrived:
            receiver.requests.append(msg_id)
            receiver.arrived.notify_all()
            if why is not None:
                receiver.rejected.append(why)
                return JSONResponse({"error": why}, status_code=401)
            if receiver.answer_status is not None:
                return JSONResponse({}, status_code=receiver.answer_status)
            if receiver.fail_next > 0:
                receiver.fail_next -= 1
                return JSONResponse({"error": "busy"}, status_code=503)
            receiver.events.setdefault(msg_id, json.loads(body))
        return JSONResponse({"ok": True})

    return app
