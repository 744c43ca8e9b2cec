"""A local SMTP server (aiosmtpd) for tests and the demo: collects every message it accepts.

It runs its own event loop in a thread, on 127.0.0.1 and a free port. It deduplicates nothing:
a message sent twice is there twice (with one Message-ID), which is what a test checks. It can
be told to answer the next N messages with a temporary (451) or permanent (550) failure.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

START_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message_id: str  # the Message-ID header, as sent
    subject: str
    text: str
    raw: bytes


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self.sink._accept(envelope)


class SmtpSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[ReceivedMail] = []
        self._fail_next = 0
        self._fail_code = 451
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._sessions: list[SMTP] = []

    # --- control ----------------------------------------------------------------------------

    def start(self) -> SmtpSink:
        ready = threading.Event()
        errors: list[BaseException] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            handler = _Handler(self)

            def factory() -> SMTP:
                protocol = SMTP(handler, hostname="sink.localhost")
                self._sessions.append(protocol)
                return protocol

            try:
                server = await self._loop.create_server(factory, self.host, self._port)
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            self.port = int(server.sockets[0].getsockname()[1])
            ready.set()
            await self._stopping.wait()
            server.close()
            # Close the clients' connections too (a stop is a server going away mid-session).
            for protocol in self._sessions:
                if protocol.transport is not None:
                    protocol.transport.close()
            await server.wait_closed()
            await asyncio.sleep(0)  # let the transports' close callbacks run

        self._thread = threading.Thread(target=lambda: asyncio.run(serve()), name="smtp-sink", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the SMTP sink did not start within {START_TIMEOUT_S} s")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(START_TIMEOUT_S)
            self._thread = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def fail_next(self, count: int, *, code: int = 451) -> None:
        """Refuse the next ``count`` messages at DATA with ``code`` (4xx: try later, 5xx: never)."""
        with self._lock:
            self._fail_next, self._fail_code = count, code

    # --- what arrived -----------------------------------------------------------------------

    def _accept(self, envelope: Envelope) -> str:
        with self._changed:
            if self._fail_next > 0:
                self._fail_next -= 1
                return f"{self._fail_code} refused by the test sink"
            raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
            parsed = message_from_bytes(raw, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            body = parsed.get_body(preferencelist=("plain",))
            self._messages.append(
                ReceivedMail(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    message_id=str(parsed.get("Message-ID", "")),
                    subject=str(parsed.get("Subject", "")),
                    text=body.get_content() if body is not None else "",
                    raw=raw,
                )
            )
            self._changed.notify_all()
        return "250 OK"

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    def to(self, address: str) -> list[ReceivedMail]:
        return [m for m in self.messages if address in m.rcpt_tos]

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[ReceivedMail]:
        """Wait until at least ``count`` messages arrived (bounded); returns them all."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._messages) >= count, timeout=timeout_s)
            return list(self._messages)
