"""The terminal's typed, validated configuration and its files in the data dir.

Data dir layout::

    terminal.json   settings (no key in clear)
    device.key      the device's local master key (32 bytes hex, mode 0600)
    journal.db      the journal (SQLite, WAL, synchronous=FULL)
    e-receipts/     HTML e-receipts written when a slip could not be printed

The TMK is stored sealed (AES-GCM) under ``device.key``; working keys in the journal likewise.
Neither ever reaches a log, a repr or an error message.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tillroll.clock import DEFAULT_MERCHANT_TZ, TimeZoneError, merchant_zone
from tillroll.crypto.keystore import KeyStore, KeyStoreError
from tillroll.owner_only import FILE_MODE, private_dir
from tillroll.terminal.retry import Backoff
from tillroll.terminal.wallet_config import WalletConfigError, WalletSettings

CONFIG_FILE = "terminal.json"
DEVICE_KEY_FILE = "device.key"
JOURNAL_FILE = "journal.db"
E_RECEIPT_DIR = "e-receipts"
DEFAULT_DATA_DIR = Path("tillroll-data/pos")
DATA_DIR_ENV = "TILLROLL_POS_DIR"

_TID = re.compile(r"^[0-9A-Za-z]{8}$")
_MID = re.compile(r"^[0-9A-Za-z]{15}$")
_HEX32 = re.compile(r"^[0-9A-Fa-f]{32}$")
_OPERATOR = re.compile(r"^[0-9A-Za-z]{3}$")
_BACKOFFICE = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:]+\](:[0-9]{1,5})?")


class ConfigError(ValueError):
    """A setting is not valid; the message says which and how to fix it."""


@dataclass(frozen=True)
class HostAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostAddress:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(
                f"host address {text!r} is not HOST:PORT: write it like 127.0.0.1:5000 (port 1..65535)"
            )
        return cls(host.strip("[]"), int(port))

    @property
    def pair(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_tmk(text: str) -> bytes:
    if not _HEX32.match(text.strip()):
        raise ConfigError("TMK must be 32 hex digits (16 bytes), as printed by `tillroll host add-terminal`")
    return bytes.fromhex(text.strip())


@dataclass(frozen=True)
class TerminalConfig:
    tid: str
    mid: str
    tmk: bytes = field(repr=False)
    host: HostAddress
    backup_host: HostAddress | None = None
    printer_url: str | None = None
    merchant_name: str = ""
    operator: str = "001"
    response_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    reversal_retries_max: int = 3  # per attempt; a reversal is never dropped
    resend_max: int = 1  # sends of a new STAN after 77
    retry_96_max: int = 2  # identical repeats after a verified 96
    refund_retries_max: int = 3  # repeats of the same refund/settlement while its outcome is unknown
    retry_backoff_s: float = 0.5  # ceiling of the first wait; doubles per failure (retry.py)
    retry_backoff_cap_s: float = 8.0  # no single wait between repeats is longer
    retry_wait_total_s: float = 20.0  # a cashier's command waits at most this in all between repeats
    key_lifetime_s: int = 86_400  # the host's session lifetime
    sign_in_margin_s: int = 600  # sign in again this long before the lifetime runs out
    printer_timeout_s: float = 3.0
    printer_width_cols: int = 32
    sign_in_mode: str = "003"
    # `pos run` (resident.py): echo when the line was idle this long; alert on a reversal
    # pending longer than this; settle each day at this merchant-local HH:MM (None: never)
    echo_interval_s: float = 300.0
    reversal_alert_s: float = 60.0
    settle_at: str | None = None
    merchant_tz: str = DEFAULT_MERCHANT_TZ  # slips and `pos journal` show this zone's local time
    wallet: WalletSettings | None = None  # the QR wallet rail (wallet_config.py); None: no wallet
    # The back office (`tillroll web`): facts in the journal's outbox go there, and slips carry a
    # QR code of the e-receipt's link under it. None: facts wait in the journal.
    backoffice_url: str | None = None
    backoffice_timeout_s: float = 2.0  # one delivery; a one-shot command relays at most this long

    def __post_init__(self) -> None:
        try:
            merchant_zone(self.merchant_tz)
        except TimeZoneError as exc:
            raise ConfigError(f"merchant_tz: {exc}") from None
        if not _TID.match(self.tid):
            raise ConfigError(f"terminal id {self.tid!r} must be 8 letters or digits")
        if not _MID.match(self.mid):
            raise ConfigError(f"merchant id {self.mid!r} must be 15 letters or digits")
        if len(self.tmk) != 16:
            raise ConfigError("TMK must be 16 bytes (32 hex digits)")
        if not _OPERATOR.match(self.operator):
            raise ConfigError(f"operator {self.operator!r} must be 3 letters or digits")
        if len(self.merchant_name) > 80:
            raise ConfigError("merchant name must be at most 80 characters")
        for name in ("response_timeout_s", "connect_timeout_s", "printer_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 300:
                raise ConfigError(f"{name} must be within 0..300 seconds, got {value}")
        if not 1 <= self.reversal_retries_max <= 20:
            raise ConfigError("reversal_retries_max must be within 1..20")
        if not 0 <= self.resend_max <= 3 or not 0 <= self.retry_96_max <= 5:
            raise ConfigError("resend_max must be within 0..3 and retry_96_max within 0..5")
        if not 0 <= self.refund_retries_max <= 10:
            raise ConfigError("refund_retries_max must be within 0..10")
        if not 0 <= self.retry_backoff_s <= 10:
            raise ConfigError("retry_backoff_s must be within 0..10 seconds")
        if not self.retry_backoff_s <= self.retry_backoff_cap_s <= 600:
            raise ConfigError("retry_backoff_cap_s must be within retry_backoff_s..600 seconds")
        if not 0 <= self.retry_wait_total_s <= 600:
            raise ConfigError("retry_wait_total_s must be within 0..600 seconds")
        if self.key_lifetime_s <= 0 or not 0 <= self.sign_in_margin_s < self.key_lifetime_s:
            raise ConfigError("key_lifetime_s must be positive and sign_in_margin_s below it")
        if not 5 <= self.echo_interval_s <= 86_400 or not 1 <= self.reversal_alert_s <= 86_400:
            raise ConfigError("echo_interval_s must be within 5..86400 s, reversal_alert_s within 1..86400 s")
        if self.settle_at is not None and not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", self.settle_at):
            raise ConfigError(f"settle_at {self.settle_at!r} must be HH:MM (merchant-local), like 23:30")
        if self.sign_in_mode not in ("003", "004"):
            raise ConfigError("sign_in_mode must be 003 or 004")
        if self.printer_url is not None and not (
            self.printer_url.startswith("tcp://") or self.printer_url.startswith("file:")
        ):
            raise ConfigError(
                f"printer {self.printer_url!r} is not tcp://HOST:PORT or file:PATH: "
                "write it like tcp://127.0.0.1:9100"
            )
        if self.backoffice_url is not None and not _BACKOFFICE.fullmatch(self.backoffice_url):
            raise ConfigError(
                f"back office {self.backoffice_url!r} is not http://HOST:PORT: "
                "write it like http://127.0.0.1:8080"
            )
        if not 0 < self.backoffice_timeout_s <= 30:
            raise ConfigError("backoffice_timeout_s must be within 0..30 seconds")

    @property
    def refresh_after_s(self) -> int:
        """Seconds after a sign-in at which the terminal signs in again by itself."""
        return self.key_lifetime_s - self.sign_in_margin_s

    @property
    def zone(self) -> ZoneInfo:
        """The merchant's time zone: instants are kept in UTC and shown in this zone."""
        return merchant_zone(self.merchant_tz)

    @property
    def backoff(self) -> Backoff:
        """The waits between repeats of one request (refund, settlement, upload, reversal)."""
        return Backoff(self.retry_backoff_s, self.retry_backoff_cap_s, self.retry_wait_total_s)

    def __repr__(self) -> str:
        return f"TerminalConfig(tid={self.tid!r}, mid={self.mid!r}, host={self.host}, tmk=<hidden>)"


def device_keystore(data_dir: Path) -> KeyStore:
    """The device's local master key (generated on first use, mode 0600)."""
    path = data_dir / DEVICE_KEY_FILE
    if path.exists():
        try:
            return KeyStore(bytes.fromhex(path.read_text().strip()))
        except (ValueError, KeyStoreError):
            raise ConfigError(
                f"{path} is damaged: restore it from a backup or run `pos init` again"
            ) from None
    private_dir(data_dir)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return KeyStore(key)


_TMK_LABEL = b"terminal:tmk"
_WALLET_KEY_LABEL = b"terminal:wallet-key"


def save_config(data_dir: Path, config: TerminalConfig) -> Path:
    private_dir(data_dir)
    ks = device_keystore(data_dir)
    doc: dict[str, Any] = asdict(config)
    doc.pop("tmk")
    doc["host"] = str(config.host)
    doc["backup_host"] = str(config.backup_host) if config.backup_host else None
    doc["tmk_sealed"] = ks.seal(config.tmk, label=_TMK_LABEL).hex()
    if config.wallet is not None:  # the wallet key is sealed like the TMK, never kept in clear
        doc["wallet"].pop("key")
        doc["wallet"]["key_sealed"] = ks.seal(config.wallet.key.encode(), label=_WALLET_KEY_LABEL).hex()
    path = data_dir / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # a leftover of an interrupted write; created anew 0600 below
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, indent=2, ensure_ascii=False))
    os.replace(tmp, path)
    return path


def load_config(data_dir: Path) -> TerminalConfig:
    path = data_dir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(
            f"no terminal set up in {data_dir}: run `tillroll pos init --tid ... --mid ... --tmk ... "
            "--host HOST:PORT` first (or pass --dir / set TILLROLL_POS_DIR)"
        )
    try:
        doc = json.loads(path.read_text())
        ks = device_keystore(data_dir)
        tmk = ks.open(bytes.fromhex(doc.pop("tmk_sealed")), label=_TMK_LABEL)
        wallet = doc.pop("wallet", None)
        if wallet is not None:
            key = ks.open(bytes.fromhex(wallet.pop("key_sealed")), label=_WALLET_KEY_LABEL).decode()
            known_w = set(WalletSettings.__dataclass_fields__)
            doc["wallet"] = WalletSettings(key=key, **{k: v for k, v in wallet.items() if k in known_w})
    except (ValueError, KeyError, KeyStoreError, WalletConfigError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__}): run `pos init` again") from None
    doc["host"] = HostAddress.parse(doc["host"])
    doc["backup_host"] = HostAddress.parse(doc["backup_host"]) if doc.get("backup_host") else None
    known = set(TerminalConfig.__dataclass_fields__)
    return TerminalConfig(tmk=tmk, **{k: v for k, v in doc.items() if k in known})
