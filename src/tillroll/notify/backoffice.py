"""A terminal's facts to the back office: ``POST <intake URL>`` with ``{"message_id", "kind",
"recipient", "payload", "created_at"}`` and ``Idempotency-Key: <message id>``. The back office
stores the fact and fans it out in one transaction, and answers a repeated id as the first."""

from __future__ import annotations

from tillroll.notify import http
from tillroll.notify.outbox import Channel, StoredMessage

# A refused signature or key (401/403) is a configuration to fix, not a fact to drop: retried.
INTAKE_FINAL_REFUSALS = http.FINAL_REFUSALS - {401, 403}


class BackofficeSender:
    channel = Channel.BACKOFFICE

    def __init__(self, intake_url: str, *, timeout_s: float = http.HTTP_TIMEOUT_S) -> None:
        self.url = intake_url
        self._http = http.client(timeout_s)

    def send(self, message: StoredMessage) -> None:
        body = {
            "message_id": message.message_id,
            "kind": message.kind.value,
            "recipient": message.recipient,
            "payload": dict(message.payload),
            "created_at": message.created_at.isoformat(),
        }
        http.post(self._http, message.message_id, self.url, headers={"idempotency-key": message.message_id},
                  json=body, final_refusals=INTAKE_FINAL_REFUSALS)  # fmt: skip

    def close(self) -> None:
        self._http.close()
