"""Wiring: a :class:`~tillroll.notify.relay.Relay` with its senders, from a :class:`NotifyConfig`."""

from __future__ import annotations

from collections.abc import Callable

from tillroll.clock import SystemClock
from tillroll.notify.config import ConfigError, NotifyConfig
from tillroll.notify.deadletter import back_office_dead_letter
from tillroll.notify.outbox import Channel, Sender, StoredMessage
from tillroll.notify.relay import Relay, RelayConfig, scaled_schedules


def build_relay(config: NotifyConfig) -> tuple[Relay, Callable[[], None]]:
    """The relay and a function that closes its connections."""
    clock = SystemClock()
    relay_config = RelayConfig(
        lease_s=config.lease_s, batch_max=config.batch_max, schedules=scaled_schedules(config.schedule_scale)
    )
    closers: list[Callable[[], None]] = []
    senders: dict[Channel, Sender] = {}
    if config.journal is not None:
        # A terminal's facts go to its back office the terminal's own way: signed with its
        # back-office key, to the address it was set up with (`pos init --backoffice`).
        from tillroll.notify.deadletter import journal_dead_letter
        from tillroll.store import make_engine
        from tillroll.terminal.backoffice import BackOfficeSender
        from tillroll.terminal.config import JOURNAL_FILE, load_config
        from tillroll.terminal.journal import outbox as journal_outbox

        terminal = load_config(config.journal)
        if terminal.backoffice_url is None:
            raise ConfigError(
                f"the terminal in {config.journal} has no back office: set one with "
                "`tillroll pos init … --backoffice http://HOST:PORT`"
            )
        engine = make_engine(f"sqlite:///{config.journal / JOURNAL_FILE}")
        backoffice = BackOfficeSender(
            terminal.backoffice_url,
            terminal.tid,
            terminal.tmk,
            timeout_s=terminal.backoffice_timeout_s,
            clock=clock,
        )
        senders[Channel.BACKOFFICE] = backoffice
        closers.append(backoffice.close)
        relay = Relay(engine, journal_outbox, senders, clock=clock, config=relay_config,
                      on_dead=journal_dead_letter(journal_outbox))  # fmt: skip
    else:
        from tillroll.host.store import open_store
        from tillroll.notify.endpoints import webhook_secret
        from tillroll.notify.webhook import WebhookSender
        from tillroll.store.tables import outbox

        store = open_store(config.db)
        engine = store.engine
        secrets: dict[tuple[str, str], str | None] = {}

        def secret_for(message: StoredMessage) -> str | None:
            key = (str(message.payload.get("mid")), message.recipient)
            if key not in secrets:
                with engine.connect() as conn:
                    secrets[key] = webhook_secret(conn, store.keystore, mid=key[0], url=key[1])
            return secrets[key]

        webhook = WebhookSender(secret_for, clock)
        senders[Channel.WEBHOOK] = webhook
        closers.append(webhook.close)
        if config.smtp is not None:
            from tillroll.notify.smtp import SmtpSender

            smtp = SmtpSender(config.smtp)
            senders[Channel.EMAIL] = smtp
            closers.append(smtp.close)
        if config.sms_url is not None:
            from tillroll.notify.sms import SmsGatewaySender

            sms = SmsGatewaySender(config.sms_url)
            senders[Channel.SMS] = sms
            closers.append(sms.close)
        relay = Relay(
            engine, outbox, senders, clock=clock, config=relay_config, on_dead=back_office_dead_letter
        )
    closers.append(engine.dispose)

    def close() -> None:
        for closer in closers:
            closer()

    return relay, close
