"""The terminal's wallet settings (``pos init --wallet …``), typed and checked at start.

The merchant's wallet key signs every request: it is a secret like the TMK, kept in
``terminal.json`` only sealed under ``device.key`` (``config.py``), and never in a repr or a log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_MCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
KEY_MAX_CHARS = 128


class WalletConfigError(ValueError):
    """A wallet setting is not valid; the message says which and how to fix it."""


@dataclass(frozen=True)
class WalletSettings:
    url: str  # http://HOST:PORT of the wallet service
    merchant: str  # mch_id
    key: str = field(repr=False)  # the merchant's signing key: secret
    connect_timeout_s: float = 3.0
    response_timeout_s: float = 10.0  # one call; a timeout is "unknown", never "failed"
    # USERPAYING / SYSTEMERROR / no answer: query every interval until the window since pay ends,
    # then reverse (WeChat's documented schedule: every 5 s for 45 s, when the wallet closes it)
    query_interval_s: float = 5.0
    query_window_s: float = 45.0
    refund_query_tries_max: int = 3  # refund/query calls while a refund is PROCESSING, per command

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise WalletConfigError(
                f"wallet address {self.url!r} is not http://HOST:PORT: write it like http://127.0.0.1:8600"
            )
        if not _MCH_ID.match(self.merchant):
            raise WalletConfigError(f"wallet merchant id {self.merchant!r} must be 1-32 of [A-Za-z0-9_-]")
        if not 0 < len(self.key) <= KEY_MAX_CHARS or not self.key.isprintable() or " " in self.key:
            raise WalletConfigError(
                f"the wallet key must be 1-{KEY_MAX_CHARS} printable characters, no spaces"
            )
        for name in ("connect_timeout_s", "response_timeout_s"):
            if not 0 < getattr(self, name) <= 120:
                raise WalletConfigError(f"wallet {name} must be within 0..120 seconds")
        if not 0 < self.query_interval_s <= 60:
            raise WalletConfigError("wallet query_interval_s must be within 0..60 seconds")
        if not self.query_interval_s <= self.query_window_s <= 600:
            raise WalletConfigError("wallet query_window_s must be within query_interval_s..600 seconds")
        if not 0 <= self.refund_query_tries_max <= 20:
            raise WalletConfigError("wallet refund_query_tries_max must be within 0..20")

    def __repr__(self) -> str:
        return f"WalletSettings(url={self.url!r}, merchant={self.merchant!r}, key=<hidden>)"
