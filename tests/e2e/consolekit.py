"""What the console's browser tests share besides fixtures (tests/e2e/conftest.py has those):
the stack's merchants, terminals and card, chromium's launch settings, and helpers to add a
user, log in through the form and keep a screenshot. Import it as ``from consolekit import ...``
(tests/e2e is on the test modules' path)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

from tillroll.clock import SystemClock
from tillroll.console.users import Role, add_user
from tillroll.host.store import HostStore

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # walletserver, hostwire: shared helpers

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 10_000  # every wait of a page (a selector, a navigation) is bounded

MID_A = "898310048990001"
MID_B = "898310048990002"
MERCHANT_A = "一号便利店"
MERCHANT_B = "二号面包房"
TID_A1 = "10000001"
TID_A2 = "10000002"
TID_B1 = "20000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
EXPIRY = "3012"
PIN = "123456"
CARD_BALANCE_MINOR = 1_000_000
WALLET_MCH = "1900000109"
WALLET_KEY = "192006250b4c09247ec02edce69f6a2d"


def add_console_user(store: HostStore, username: str, role: Role, mid: str | None) -> str:
    """A console user with a fresh random password, which is returned."""
    password = secrets.token_urlsafe(12)
    add_user(store.engine, username, password, role, mid, now=SystemClock().now())
    return password


def console_login(page: Any, base_url: str, username: str, password: str) -> None:
    """Log in through the form; returns once the page after the log-in has loaded."""
    page.goto(f"{base_url}/console/login")
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#login-submit")


def screenshot(page: Any, name: str) -> Path:
    """The whole page as test-artifacts/screenshots/NAME.png (kept for people to look at)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
