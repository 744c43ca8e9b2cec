"""A local SMTP server (aiosmtpd) for tests and the demo: collects every message it accepts.

It runs its own event loop in a thread, on 127.0.0.1 and a free port. It deduplicates nothing:
a message sent twice is there twice (with one Message-ID), which is what a test checks. It can
be told to answer the next N messages with a temporary (451) or permanent (550) failure.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import cached_property
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

START_TIMEOUT_S = 5.0
OnMessage = Callable[["ReceivedMail"], None]  # called (in the server's thread) for each message


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted message; parsed when first looked at (parsing is the slow part)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes

    @cached_property
    def parsed(self) -> EmailMessage:
        message = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        return message

    @property
    def message_id(self) -> str:
        return str(self.parsed.get("Message-ID", ""))

    @property
    def subject(self) -> str:
        return str(self.parsed.get("Subject", ""))

    @property
    def text(self) -> str:
        body = self.parsed.get_body(preferencelist=("plain",))
        return str(body.get_content()) if body is not None else ""


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self.sink._accept(envelope)


class SmtpSink:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_message: Callable[[ReceivedMail], None] | None = None,
    ) -> None:
        self.host = host
        self._on_message = on_message
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
            self._messages.append(ReceivedMail(str(envelope.mail_from), tuple(envelope.rcpt_tos), raw))
            self._changed.notify_all()
            received = self._messages[-1]
        if self._on_message is not None:
            self._on_message(received)
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


def main(argv: list[str] | None = None) -> None:
    """``python -m tillroll.sim.smtp_sink [--listen HOST:PORT] [--show]``: serve until SIGTERM or
    Ctrl-C, then print how many messages arrived as JSON. (Not until standard input closes: a
    server started with ``&`` from a shell script has no input and would stop at once, and one
    started with ``&`` at an interactive prompt would be stopped by the terminal for reading.)"""
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser(description="A local SMTP server that keeps what it receives.")
    parser.add_argument("--listen", default="127.0.0.1:8025", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--show", action="store_true", help="Print each message as it arrives")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")

    def show(mail: ReceivedMail) -> None:
        print(f"--- {mail.message_id} to {', '.join(mail.rcpt_tos)}\n{mail.subject}\n{mail.text}", flush=True)

    with SmtpSink(host or "127.0.0.1", int(port), on_message=show if args.show else None) as sink:
        print(f"listening on {sink.host}:{sink.port}", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        messages = sink.messages
    distinct = len({m.message_id for m in messages})
    print(json.dumps({"received": len(messages), "distinct_message_ids": distinct}))


if __name__ == "__main__":
    main()
