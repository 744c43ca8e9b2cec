"""Typed, validated host settings."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from tillroll.clock import DEFAULT_MERCHANT_TZ, TimeZoneError, merchant_zone


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class HostConfig:
    key_lifetime_s: int = 86_400
    connections_max: int = 512
    idle_timeout_s: float = 300.0
    frame_max_len: int = 2048
    # Database threads per host process (PostgreSQL; SQLite always uses one). One: two halve
    # every group (and double the per-group work) for no gain under one GIL — 1,249/s against
    # 630/s on PostgreSQL in back-to-back runs; more processes (`--workers`) are the way to grow.
    db_workers: int = 1
    batch_max: int = 64  # requests answered by one group commit
    # Ordinary sales of a group decided in memory and written together (host/sale_lane.py);
    # off, every request goes through the general steps one by one (the same outcomes).
    sale_lane: bool = True
    queue_max: int = 4096
    queue_wait_s: float = 5.0
    # A request not answered by then closes its connection (the terminal reverses); below the
    # terminal's own response timeout (30 s) so the host gives up first.
    request_timeout_s: float = 25.0
    # A database worker that dies is restarted; more deaths than this within a minute stop the
    # host (exit non-zero) rather than leave a port open that answers nothing.
    worker_restarts_max: int = 5
    bad_input_log_interval_s: float = 60.0  # one warning line per offender per interval
    acquirer_id: str = "00010000"
    issuer_name: str = "TILLROLL BANK"
    merchant_tz: str = DEFAULT_MERCHANT_TZ  # IANA zone of fields 12/13, settlement dates, reports
    # SO_REUSEPORT: several host processes listen on one port (`host serve --workers N`) and the
    # kernel spreads the connections over them.
    reuse_port: bool = False
    # The groups' database work in a process of its own (`host serve --db-process`,
    # host/db_process.py): the event loop's process decodes and signs on one core, the database
    # process decides, books and commits on another.
    db_process: bool = False

    def __post_init__(self) -> None:
        if self.key_lifetime_s <= 0:
            raise ConfigError("key lifetime must be a positive number of seconds")
        if min(self.connections_max, self.db_workers, self.batch_max, self.queue_max) <= 0:
            raise ConfigError("connection and worker limits must be positive")
        if not 13 <= self.frame_max_len <= 2048:
            raise ConfigError("frame limit must be within 13..2048 bytes (PROFILE §1)")
        if min(self.idle_timeout_s, self.request_timeout_s, self.bad_input_log_interval_s) <= 0:
            raise ConfigError("idle timeout, request timeout and log interval must be positive")
        if self.worker_restarts_max < 0:
            raise ConfigError("worker restarts must be zero or more")
        try:
            merchant_zone(self.merchant_tz)
        except TimeZoneError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def zone(self) -> ZoneInfo:
        """The merchant's time zone (zoneinfo caches it: this is no lookup per request)."""
        return merchant_zone(self.merchant_tz)
