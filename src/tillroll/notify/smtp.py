"""E-mail over SMTP (stdlib smtplib): one kept-open connection, reopened when it fails.

The Message-ID header is ``<our message id@domain>``, so a message sent twice (a relay crash
between send and mark) carries one Message-ID and the mailbox can tell it is the same.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import smtplib
from dataclasses import dataclass
from email.header import Header
from email.utils import formatdate, parseaddr

from tillroll.notify.outbox import Channel, DeliveryFailed, StoredMessage

log = logging.getLogger(__name__)
MESSAGE_ID_HEADER = "X-Tillroll-Message-Id"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str = "tillroll <notify@tillroll.localhost>"
    message_id_domain: str = "tillroll.localhost"
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.host or not 0 < self.port < 65536 or self.timeout_s <= 0:
            raise ValueError(f"SMTP server {self.host}:{self.port} (timeout {self.timeout_s} s) is not valid")


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def build_email(message: StoredMessage, config: SmtpConfig) -> bytes:
    """The message as RFC 5322 bytes: headers (the subject RFC 2047-encoded) and a base64 UTF-8
    text body. Built directly rather than through ``email.message.EmailMessage``, whose header
    parsing costs more than the whole SMTP exchange on a kept-open connection."""
    subject = Header(str(message.payload.get("subject", "")), "utf-8").encode()
    body = base64.encodebytes(str(message.payload.get("text", "")).encode()).decode("ascii")
    headers = [
        f"From: {config.sender}",
        f"To: {message.recipient}",
        f"Subject: {subject}",
        f"Date: {formatdate(usegmt=True)}",
        f"Message-ID: <{message.message_id}@{config.message_id_domain}>",
        f"{MESSAGE_ID_HEADER}: {message.message_id}",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: base64",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode("ascii")


def _address(sender: str) -> str:
    return parseaddr(sender)[1] or sender


class SmtpSender:
    channel = Channel.EMAIL

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._from = _address(config.sender)
        self._smtp: smtplib.SMTP | None = None

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = smtplib.SMTP(self.config.host, self.config.port, timeout=self.config.timeout_s)
            self._smtp.ehlo()
        return self._smtp

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def send(self, message: StoredMessage) -> None:
        email = build_email(message, self.config)
        # Two tries: a kept-open connection the server closed (idle timeout) fails at once and
        # the second try opens a new one; a server that is down fails both.
        for attempt in (1, 2):
            try:
                self._connection().sendmail(self._from, [message.recipient], email)
                return
            except smtplib.SMTPRecipientsRefused as exc:
                codes = [code for code, _ in exc.recipients.values()]
                raise DeliveryFailed(
                    message.message_id, f"recipient refused ({codes})", retryable=all(c < 500 for c in codes)
                ) from None
            except smtplib.SMTPResponseException as exc:
                self._reset()
                text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
                raise DeliveryFailed(
                    message.message_id, f"SMTP {exc.smtp_code} {text}".strip(), retryable=exc.smtp_code < 500
                ) from None
            except (smtplib.SMTPException, OSError) as exc:
                self._drop()
                if attempt == 2:
                    raise DeliveryFailed(message.message_id, f"SMTP connection: {exc}") from None
                log.info("SMTP connection lost (%s); reconnecting", exc)

    def _reset(self) -> None:
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
        self._drop()
