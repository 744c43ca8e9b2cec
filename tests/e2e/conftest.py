"""Browser and live-stack fixtures of the console's tests (and of every page's browser test).

The live stack, all real, all on 127.0.0.1:

- ``console_store`` — the host's store on ``db_url`` (SQLite and PostgreSQL) with two merchants
  (``MID_A`` with terminals ``TID_A1``/``TID_A2``, ``MID_B`` with ``TID_B1``) and a card;
- ``live_console`` — ``tillroll.web.create_app`` on that store served by ``tillroll.web.WebServer``
  in a thread (``.url``, ``.store``, ``.app``, ``.ctx``: the console's context);
- ``live_host`` — the acquirer host (``HostServer``) on the same store;
- ``live_wallet`` — the wallet provider over HTTP (tests/integration/walletserver.py) with the
  merchant ``WALLET_MCH`` and its key; ``wallet_settings`` — a terminal's settings for it;
- ``make_terminal(tid, mid, data_dir, wallet=None)`` — a real ``Terminal`` talking to the live host,
  delivering its facts to the live console's back office.

The browser: ``new_browser_context()`` opens Debian's chromium (``/usr/bin/chromium``) through
Playwright with a new user-data dir each time (contexts do not share cookies: two users at once
are two contexts); ``page`` is a page of a first one.

Helpers and constants are in tests/e2e/consolekit.py (``from consolekit import ...``):
``add_console_user(store, name, Role.X, mid)`` makes a user and returns its password;
``console_login(page, live_console.url, user, password)`` logs in through the form;
``screenshot(page, name)`` keeps a PNG under test-artifacts/screenshots/.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from tillroll.clock import Clock, SystemClock
from tillroll.console.context import ConsoleContext
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.store import HostStore, open_store
from tillroll.terminal import HostAddress, Terminal, TerminalConfig
from tillroll.web import WebConfig, WebServer, create_app

sys.path.insert(0, str(Path(__file__).resolve().parent))  # consolekit, for the fixtures below

from consolekit import (
    CARD_BALANCE_MINOR,
    CHROMIUM,
    CHROMIUM_ARGS,
    EXPIRY,
    MERCHANT_A,
    MERCHANT_B,
    MID_A,
    MID_B,
    PAGE_TIMEOUT_MS,
    PAN,
    PIN,
    TID_A1,
    TID_A2,
    TID_B1,
    TMK,
    WALLET_KEY,
    WALLET_MCH,
)

__all__ = ["CARD_BALANCE_MINOR", "EXPIRY", "MID_B", "PAN", "PIN", "TID_A2", "TID_B1"]  # for the tests


@pytest.fixture
def console_store(db_url: str) -> Iterator[HostStore]:
    store = open_store(db_url)
    add_merchant(store, MID_A, MERCHANT_A)
    add_merchant(store, MID_B, MERCHANT_B)
    add_terminal(store, TID_A1, MID_A, TMK)
    add_terminal(store, TID_A2, MID_A, TMK)
    add_terminal(store, TID_B1, MID_B, TMK)
    add_card(store, PAN, EXPIRY, PIN, CARD_BALANCE_MINOR)
    yield store
    store.engine.dispose()


@dataclass
class LiveConsole:
    url: str
    store: HostStore
    app: FastAPI
    clock: Clock

    @property
    def ctx(self) -> ConsoleContext:
        ctx: ConsoleContext = self.app.state.console
        return ctx


@pytest.fixture
def console_clock() -> Clock:
    """The console's clock (override in a test module to serve with a FakeClock)."""
    return SystemClock()


@pytest.fixture
def console_config() -> WebConfig:
    """The web app's settings (override in a test module: lock-out, spike threshold ...)."""
    return WebConfig(port=0)


@pytest.fixture
def live_console(
    console_store: HostStore, console_clock: Clock, console_config: WebConfig
) -> Iterator[LiveConsole]:
    app = create_app(console_config, console_store, clock=console_clock)
    server = WebServer(app, port=0).start()
    try:
        yield LiveConsole(server.url, console_store, app, console_clock)
    finally:
        server.stop()


@pytest.fixture
def live_host(console_store: HostStore) -> Iterator[HostServer]:
    with HostServer(console_store, key_lifetime_s=3600) as server:
        yield server


@pytest.fixture
def live_wallet(db_url: str) -> Iterator[Any]:
    from walletserver import wallet_server

    from tillroll.wallet.admin import add_merchant as add_wallet_merchant

    with wallet_server(db_url) as server:
        add_wallet_merchant(server.engine, WALLET_MCH, MERCHANT_A, WALLET_KEY)
        yield server


@pytest.fixture
def wallet_settings(live_wallet: Any) -> Any:
    """The terminal's settings for the live wallet (short query schedule): ``make_terminal(wallet=...)``."""
    from tillroll.terminal.wallet_config import WalletSettings

    return WalletSettings(
        url=live_wallet.base_url,
        merchant=WALLET_MCH,
        key=WALLET_KEY,
        query_interval_s=0.2,
        query_window_s=1.0,
        response_timeout_s=2.0,
        connect_timeout_s=1.0,
    )


@pytest.fixture
def make_terminal(
    tmp_path: Path, live_host: HostServer, live_console: LiveConsole
) -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def make(
        tid: str = TID_A1, mid: str = MID_A, *, wallet: Any = None, printer_url: str | None = None
    ) -> Terminal:
        config = TerminalConfig(
            tid=tid,
            mid=mid,
            tmk=TMK,
            host=HostAddress(*live_host.address),
            merchant_name=MERCHANT_A if mid == MID_A else MERCHANT_B,
            response_timeout_s=3.0,
            connect_timeout_s=1.0,
            printer_url=printer_url,
            backoffice_url=live_console.url,
            wallet=wallet,
        )
        term = Terminal(config, tmp_path / f"pos-{tid}", clock=live_console.clock)
        opened.append(term)
        return term

    yield make
    for term in opened:
        term.close()


@pytest.fixture
def new_browser_context(tmp_path: Path) -> Iterator[Callable[[], Any]]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium fonts-wqy-zenhei (.ci/run does)")
    with sync_playwright() as pw:
        contexts: list[Any] = []

        def new_context() -> Any:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / f"chromium-profile-{len(contexts)}"),
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1280, "height": 900},
                locale="zh-CN",
            )
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            contexts.append(context)
            return context

        yield new_context
        for context in contexts:
            context.close()


@pytest.fixture
def page(new_browser_context: Callable[[], Any]) -> Any:
    context = new_browser_context()
    return context.pages[0] if context.pages else context.new_page()
