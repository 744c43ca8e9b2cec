"""A merchant's notification endpoints: e-mail addresses, phones (SMS), signed webhooks.

A webhook's signing secret (``whsec_<base64>``, the Standard Webhooks form) is generated here,
shown once to the merchant and stored sealed under the host's master key: the relay opens it
to sign, nothing else ever sees it again.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from tillroll.crypto.keystore import KeyStore
from tillroll.notify.contacts import ContactError, parse_email, parse_phone
from tillroll.notify.outbox import RECIPIENT_MAX, Channel
from tillroll.store.tables import merchants, notify_endpoints

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # as Svix generates them


class EndpointError(ValueError):
    """An endpoint that cannot be added (unknown merchant, bad address, already there)."""


@dataclass(frozen=True)
class Endpoint:
    id: int
    mid: str
    channel: Channel
    address: str


def new_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (its base64 part, decoded)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)


def _secret_label(mid: str, url: str) -> bytes:
    return f"webhook:{mid}:{url}".encode()


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > RECIPIENT_MAX:
        raise EndpointError(f"{url!r} is not a webhook URL (http(s)://host/path, at most {RECIPIENT_MAX})")
    return url.strip()


def add_endpoint(
    conn: Connection, keystore: KeyStore, *, mid: str, channel: Channel, address: str, now: datetime
) -> tuple[Endpoint, str | None]:
    """Add an endpoint; for a webhook also return its new signing secret (shown once)."""
    if conn.execute(select(merchants.c.mid).where(merchants.c.mid == mid)).first() is None:
        raise EndpointError(f"merchant {mid} is not registered (host add-merchant)")
    try:
        if channel is Channel.EMAIL:
            address = parse_email(address).address
        elif channel is Channel.SMS:
            address = parse_phone(address).address
        elif channel is Channel.WEBHOOK:
            address = check_webhook_url(address)
        else:
            raise EndpointError(f"channel {channel} is not a merchant endpoint")
    except ContactError as exc:
        raise EndpointError(str(exc)) from None
    secret = new_webhook_secret() if channel is Channel.WEBHOOK else None
    sealed = keystore.seal(secret.encode(), label=_secret_label(mid, address)) if secret else None
    try:
        with conn.begin_nested():
            result = conn.execute(
                insert(notify_endpoints).values(
                    mid=mid, channel=channel.value, address=address, secret_enc=sealed, created_at=now
                )
            )
    except IntegrityError:
        raise EndpointError(f"merchant {mid} already has the {channel} endpoint {address}") from None
    key = result.inserted_primary_key
    assert key is not None
    return Endpoint(int(key[0]), mid, channel, address), secret


def merchant_endpoints(conn: Connection, mid: str) -> list[Endpoint]:
    rows = conn.execute(
        select(notify_endpoints.c.id, notify_endpoints.c.channel, notify_endpoints.c.address)
        .where(notify_endpoints.c.mid == mid, notify_endpoints.c.active == 1)
        .order_by(notify_endpoints.c.id)
    )
    return [Endpoint(int(r.id), mid, Channel(r.channel), str(r.address)) for r in rows]


def webhook_secret(conn: Connection, keystore: KeyStore, *, mid: str, url: str) -> str | None:
    """The signing secret of ``mid``'s webhook ``url``, or None if there is no such endpoint."""
    sealed = conn.execute(
        select(notify_endpoints.c.secret_enc).where(
            notify_endpoints.c.mid == mid,
            notify_endpoints.c.channel == Channel.WEBHOOK.value,
            notify_endpoints.c.address == url,
        )
    ).scalar()
    if sealed is None:
        return None
    return keystore.open(bytes(sealed), label=_secret_label(mid, url)).decode()


def disable_endpoint(conn: Connection, *, mid: str, channel: Channel, address: str) -> bool:
    """Stop sending to an endpoint (a webhook answered 410 Gone); True if one was switched off."""
    result = conn.execute(
        update(notify_endpoints)
        .where(
            notify_endpoints.c.mid == mid,
            notify_endpoints.c.channel == channel.value,
            notify_endpoints.c.address == address,
            notify_endpoints.c.active == 1,
        )
        .values(active=0)
    )
    return result.rowcount == 1
