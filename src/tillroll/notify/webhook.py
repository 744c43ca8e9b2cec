"""Merchant webhooks, signed the Standard Webhooks way.

Headers ``webhook-id`` (our message id, the receiver's dedup key), ``webhook-timestamp`` (Unix
seconds of this attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`` keyed with the base64 part of the endpoint's ``whsec_`` secret). The body
is the exact JSON fixed at fan-out: the bytes signed are the bytes sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from calendar import timegm
from collections.abc import Callable

from tillroll.clock import Clock
from tillroll.notify import http
from tillroll.notify.endpoints import secret_key
from tillroll.notify.outbox import Channel, DeliveryFailed, StoredMessage

SecretLookup = Callable[[StoredMessage], str | None]
WEBHOOK_FINAL_REFUSALS = frozenset({410})
WEBHOOK_TIMEOUT_S = 15.0  # the spec recommends 15-30 s for the receiver to answer


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSender:
    channel = Channel.WEBHOOK

    def __init__(
        self, secret_for: SecretLookup, clock: Clock, *, timeout_s: float = WEBHOOK_TIMEOUT_S
    ) -> None:
        self.secret_for = secret_for
        self.clock = clock
        self._http = http.client(timeout_s)

    def send(self, message: StoredMessage) -> None:
        secret = self.secret_for(message)
        if secret is None:
            raise DeliveryFailed(
                message.message_id, "the webhook endpoint is no longer registered", retryable=False
            )
        body = str(message.payload["body"]).encode()
        timestamp = timegm(self.clock.now().timetuple())
        headers = {
            "content-type": "application/json",
            "webhook-id": message.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message.message_id, timestamp, body),
        }
        # Standard Webhooks: every non-2xx is a failure to retry, except 410 Gone (stop sending).
        http.post(self._http, message.message_id, message.recipient, headers=headers, content=body,
                  final_refusals=WEBHOOK_FINAL_REFUSALS)  # fmt: skip

    def close(self) -> None:
        self._http.close()
