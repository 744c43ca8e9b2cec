"""The web app's typed settings, checked at start."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tillroll.console.config import ConsoleConfig
from tillroll.recon.scheduler import ReconScheduleConfig

_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")


class WebConfigError(ValueError):
    pass


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # The address customers open (links in e-mails and SMS); default http://HOST:PORT. Terminals
    # print the same base in their QR codes (their `--backoffice`).
    public_url: str | None = None
    receipt_ttl_days: int = 180  # an e-receipt link works this many days after the approval
    body_max_bytes: int = 64 * 1024  # one fact delivery; a larger body is refused unread
    console: ConsoleConfig = field(default_factory=ConsoleConfig)  # the merchant console (/console)
    recon: ReconScheduleConfig = field(default_factory=ReconScheduleConfig)  # reconciliation on a schedule

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise WebConfigError(f"port {self.port} is not within 0..65535")
        if not 1 <= self.receipt_ttl_days <= 3650:
            raise WebConfigError("receipt_ttl_days must be within 1..3650")
        if not 1024 <= self.body_max_bytes <= 1024 * 1024:
            raise WebConfigError("body_max_bytes must be within 1 KiB..1 MiB")
        if self.public_url is not None and not _URL.fullmatch(self.public_url):
            raise WebConfigError(f"public URL {self.public_url!r} must be http(s)://HOST[:PORT][/path]")

    @property
    def base_url(self) -> str:
        """Where links point, without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); port 0 picks a free one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise WebConfigError(f"listen address {text!r} is not HOST:PORT, like 127.0.0.1:8080")
    return host.strip("[]"), int(port)
