"""SMS through an HTTP SMS gateway: ``POST {base}/messages`` with ``{"id", "to", "text"}`` and
the header ``Idempotency-Key: <message id>``; the gateway sends a repeated id once."""

from __future__ import annotations

from tillroll.notify import http
from tillroll.notify.outbox import Channel, StoredMessage


class SmsGatewaySender:
    channel = Channel.SMS

    def __init__(self, base_url: str, *, timeout_s: float = http.HTTP_TIMEOUT_S) -> None:
        self.url = base_url.rstrip("/") + "/messages"
        self._http = http.client(timeout_s)

    def send(self, message: StoredMessage) -> None:
        body = {
            "id": message.message_id,
            "to": message.recipient,
            "text": str(message.payload.get("text", "")),
        }
        http.post(self._http, message.message_id, self.url, headers={"idempotency-key": message.message_id},
                  json=body)  # fmt: skip

    def close(self) -> None:
        self._http.close()
