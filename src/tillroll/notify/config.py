"""The relay's configuration, typed and validated once at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tillroll.notify.smtp import SmtpConfig, parse_host_port

SMTP_DEFAULT_PORT = 25


class ConfigError(ValueError):
    pass


def _http_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8025")
    return url


@dataclass(frozen=True)
class NotifyConfig:
    db: str | None  # the back office's database (when journal is None)
    journal: Path | None  # a terminal's data folder: relay its outbox to the back office
    smtp: SmtpConfig | None
    sms_url: str | None
    schedule_scale: float = 1.0
    lease_s: float = 60.0
    batch_max: int = 500

    @classmethod
    def from_options(
        cls,
        *,
        db: str | None,
        journal: Path | None,
        smtp: str | None,
        sms_url: str | None,
        schedule_scale: float = 1.0,
    ) -> NotifyConfig:
        if schedule_scale < 0:
            raise ConfigError("--schedule-scale must be >= 0")
        if journal is not None:
            if db or smtp or sms_url:
                raise ConfigError(
                    "--journal relays a terminal's facts to its back office (the address it was set "
                    "up with): give no --db, --smtp or --sms-url with it"
                )
            if not journal.is_dir():
                raise ConfigError(f"--journal {journal} is not a terminal's data folder")
            return cls(None, journal, None, None, schedule_scale)
        smtp_config = None
        if smtp:
            try:
                host, port = parse_host_port(smtp, SMTP_DEFAULT_PORT)
                smtp_config = SmtpConfig(host, port)
            except ValueError as exc:
                raise ConfigError(f"--smtp: {exc}") from None
        sms = _http_url(sms_url, "--sms-url") if sms_url else None
        return cls(db, None, smtp_config, sms, schedule_scale)
