"""Test helper: the live stack behind the cashier screen — a real acquirer host (TCP), a real
wallet provider (HTTP), an ESC/POS printer emulator (TCP) and a terminal data dir set up as
``tillroll pos init`` does, whose engine the web process runs (:class:`CashierEngine`).

    with cashier_stack(db_url, tmp_path) as stack:
        engine = stack.engine()          # started; stopped at the end
        job = engine.submit(Operation.SALE, amount_minor=1250, pan=PAN, expiry=EXPIRY, pin=PIN)
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, WalletServer, wallet_server

from tillroll.console.cashier_engine import CashierEngine
from tillroll.console.cashier_signature import load_signature
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.store import HostStore, open_store
from tillroll.sim.fault_proxy import FaultProxy
from tillroll.sim.printer_emulator import PrinterEmulator
from tillroll.terminal import HostAddress, TerminalConfig
from tillroll.terminal.config import save_config
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.wallet import admin as wallet_admin
from tillroll.wallet.config import WalletConfig
from tillroll.web import WebConfig, WebServer, create_app

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
EXPIRY = "3012"
PIN = "123456"
MERCHANT = "一号便利店"
WAIT_S = 20.0  # every wait on a condition is bounded by this

# A short wallet schedule: query every 0.2 s for 1.5 s; the provider closes unconfirmed orders after 3 s.
PROVIDER = WalletConfig(userpaying_close_s=3.0, refund_settle_s=0.2, sweep_interval_s=0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signature_png(width: int = 400, height: int = 150) -> bytes:
    """A drawn signature: a transparent pad with a few dark strokes (what the canvas posts)."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.line(
        [(20, 100), (80, 30), (140, 110), (200, 40), (260, 120), (380, 60)], fill=(0, 0, 0, 255), width=5
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def raster_images(stream: bytes) -> list[tuple[int, int]]:
    """(width in bytes, height in dots) of every GS v 0 raster image in an ESC/POS stream."""
    found = []
    at = stream.find(b"\x1dv0")
    while at >= 0:
        x = stream[at + 4] + 256 * stream[at + 5]
        y = stream[at + 6] + 256 * stream[at + 7]
        found.append((x, y))
        at = stream.find(b"\x1dv0", at + 8 + x * y)
    return found


@dataclass
class Stack:
    store: HostStore
    host: HostServer
    proxy: FaultProxy  # the terminal's line to the host: faults injected here
    wallet: WalletServer
    printer: PrinterEmulator
    data_dir: Path
    web_url: str | None = None
    _exit: ExitStack = field(default_factory=ExitStack)

    def user(self, name: str, balance_fen: int = 100_00, behaviour: str = "ok") -> str:
        """A wallet customer; returns a fresh payment code."""
        wallet_admin.add_user(self.wallet.engine, name, balance_fen, behaviour=behaviour)
        return wallet_admin.issue_code(self.wallet.engine, name)

    def engine(self, resolve_interval_s: float = 0.2) -> CashierEngine:
        eng = CashierEngine(
            self.data_dir,
            signature_lookup=lambda tid, ref: load_signature(self.store.engine, tid, ref),
            resolve_interval_s=resolve_interval_s,
        ).start()
        self._exit.callback(eng.stop)
        return eng


@contextmanager
def cashier_stack(db_url: str, tmp_path: Path, *, web: bool = False) -> Iterator[Stack]:
    """The stack; ``web``: also the back office (``tillroll.web.create_app``) the terminal
    delivers its facts to (``stack.web_url``)."""
    with ExitStack() as stack:
        store = open_store(db_url)
        stack.callback(store.engine.dispose)
        add_merchant(store, MID, MERCHANT)
        add_terminal(store, TID, MID, TMK)
        add_card(store, PAN, EXPIRY, PIN, 1_000_00)
        host = stack.enter_context(HostServer(store, key_lifetime_s=3600))
        proxy = stack.enter_context(FaultProxy(host.address))
        wallet = stack.enter_context(wallet_server(db_url, PROVIDER))
        wallet_admin.add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        printer = stack.enter_context(PrinterEmulator())
        web_url = None
        if web:
            port = free_port()
            server = WebServer(create_app(WebConfig(port=port), store), port=port).start()
            stack.callback(server.stop)
            web_url = server.url
        data_dir = tmp_path / "pos"
        config = TerminalConfig(
            tid=TID,
            mid=MID,
            tmk=TMK,
            host=HostAddress(*proxy.address),
            merchant_name=MERCHANT,
            response_timeout_s=2.0,
            connect_timeout_s=1.0,
            retry_backoff_s=0.2,
            retry_backoff_cap_s=0.5,
            retry_wait_total_s=1.0,  # the cashier's command gives up soon: the rest is in doubt
            reversal_retries_max=2,
            printer_url=printer.url,
            backoffice_url=web_url,
            wallet=WalletSettings(
                url=wallet.base_url,
                merchant=MCH_ID,
                key=MCH_KEY,
                query_interval_s=0.2,
                query_window_s=1.5,
                response_timeout_s=2.0,
                connect_timeout_s=1.0,
            ),
        )
        save_config(data_dir, config)
        s = Stack(store, host, proxy, wallet, printer, data_dir, web_url)
        with s._exit:
            yield s
