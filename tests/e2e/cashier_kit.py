"""What the ops pages' browser tests share: a terminal data dir (as ``tillroll pos init`` makes
it) talking to the live host, wallet and an ESC/POS printer emulator, whose engine runs in the
live console's process (``attach_ops``, as ``tillroll web --terminal DIR`` does); a signature
drawn with the mouse on the cashier screen's pad; the console's CSRF token of a page."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consolekit import MERCHANT_A, MID_A, TID_A1, TMK, WALLET_KEY, WALLET_MCH

from tillroll.console.cashier_engine import CashierEngine
from tillroll.console.cashier_page import attach_ops
from tillroll.sim.fault_proxy import FaultProxy
from tillroll.sim.printer_emulator import PrinterEmulator
from tillroll.terminal import HostAddress, TerminalConfig
from tillroll.terminal.config import save_config
from tillroll.terminal.wallet_config import WalletSettings


@dataclass
class Attached:
    engine: CashierEngine
    printer: PrinterEmulator
    data_dir: Path
    proxy: FaultProxy | None = None  # the terminal's line to the host, when asked for


@contextmanager
def attached_terminal(
    live_console: Any,
    live_host: Any,
    live_wallet: Any,
    tmp_path: Path,
    *,
    refund_limit_minor: int = 500_00,
    faulty_line: bool = False,
) -> Iterator[Attached]:
    """``faulty_line``: the terminal reaches the host through a fault proxy, and its cashier
    commands give up retrying soon (the rest is in doubt, resolved in the background)."""
    with ExitStack() as stack:
        printer = stack.enter_context(PrinterEmulator())
        proxy = stack.enter_context(FaultProxy(live_host.address)) if faulty_line else None
        address = proxy.address if proxy is not None else live_host.address
        quick = {"retry_wait_total_s": 1.0, "reversal_retries_max": 2} if faulty_line else {}
        data_dir = tmp_path / "pos-cashier"
        save_config(
            data_dir,
            TerminalConfig(
                tid=TID_A1,
                mid=MID_A,
                tmk=TMK,
                host=HostAddress(*address),
                merchant_name=MERCHANT_A,
                response_timeout_s=3.0,
                connect_timeout_s=1.0,
                printer_url=printer.url,
                backoffice_url=live_console.url,
                wallet=WalletSettings(
                    url=live_wallet.base_url,
                    merchant=WALLET_MCH,
                    key=WALLET_KEY,
                    query_interval_s=0.3,
                    query_window_s=6.0,
                    response_timeout_s=3.0,
                    connect_timeout_s=1.0,
                ),
                **quick,
            ),
        )
        engine = attach_ops(live_console.app, terminal_dir=data_dir, refund_limit_minor=refund_limit_minor)
        assert engine is not None
        try:
            yield Attached(engine, printer, data_dir, proxy)
        finally:
            engine.stop()
            live_console.ctx.extras.pop("cashier", None)


def draw_signature(page: Any, selector: str) -> None:
    """Sign on the pad with the mouse: a few strokes across the canvas."""
    box = page.locator(selector).bounding_box()
    assert box is not None
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    for stroke in (
        [(0.1, 0.7), (0.25, 0.2), (0.4, 0.8), (0.55, 0.3)],
        [(0.6, 0.6), (0.75, 0.25), (0.9, 0.7)],
    ):
        page.mouse.move(x0 + w * stroke[0][0], y0 + h * stroke[0][1])
        page.mouse.down()
        for fx, fy in stroke[1:]:
            page.mouse.move(x0 + w * fx, y0 + h * fy, steps=8)
        page.mouse.up()


def csrf_of(page: Any) -> str:
    token: str = page.locator("input[name=csrf_token]").first.get_attribute("value")
    return token


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


def png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return img.size
