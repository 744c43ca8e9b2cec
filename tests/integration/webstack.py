"""The back office's web app (``tillroll.web.create_app``) over real HTTP for integration tests:
served by uvicorn on 127.0.0.1 at a port chosen up front, so that a test can stop it (the back
office down) and start it again at the same address the terminal was configured with."""

from __future__ import annotations

import socket

from tillroll.host.store import HostStore
from tillroll.web import WebConfig, WebServer, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Web:
    """The web app on a port chosen now, started and stopped at will (the back office down)."""

    def __init__(self, store: HostStore) -> None:
        self.port = free_port()
        self.config = WebConfig(port=self.port)
        self.store = store
        self.server: WebServer | None = None

    @property
    def url(self) -> str:
        return self.config.base_url

    def start(self) -> None:
        self.server = WebServer(create_app(self.config, self.store), port=self.port).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
