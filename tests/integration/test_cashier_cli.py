"""`tillroll web --terminal DIR --refund-limit YUAN` as a process: the cashier screen of the
served console runs a sale on the terminal of that data dir against the live host (HTTP from a
client logged in through the form, the CSRF token from the page)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from cashier_stack import EXPIRY, MID, PAN, PIN, TID, WAIT_S, cashier_stack, free_port

from tillroll.clock import SystemClock
from tillroll.console.users import Role, add_user


def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{what} within {WAIT_S} s")


def test_web_serves_the_cashier_screen_of_a_terminal(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'host.db'}"
    with cashier_stack(db_url, tmp_path) as stack:
        add_user(stack.store.engine, "till1", "till-password-1", Role.CASHIER, MID, now=SystemClock().now())
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "TILLROLL_DB": db_url}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tillroll", "web", "--listen", f"127.0.0.1:{port}",
             "--terminal", str(stack.data_dir), "--refund-limit", "100.00"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:

            def up() -> bool:
                try:
                    return httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200
                except httpx.HTTPError:
                    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                    return False

            _until(up, "the web process did not answer")
            with httpx.Client(base_url=base, timeout=5.0) as client:
                form = client.get("/console/login").text
                token = re.search(r'name="csrf_token" value="([^"]+)"', form)
                assert token is not None
                logged = client.post(
                    "/console/login",
                    data={"username": "till1", "password": "till-password-1", "csrf_token": token.group(1)},
                )
                assert logged.status_code in (200, 303), logged.text
                screen = client.get("/console/cashier").text
                assert TID in screen and 'id="form-sale"' in screen
                csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', screen)
                assert csrf is not None
                panel = client.post(
                    "/console/cashier/sale",
                    data={"amount": "9.99", "pan": PAN, "expiry": EXPIRY, "pin": PIN},
                    headers={"X-CSRF-Token": csrf.group(1), "HX-Request": "true"},
                ).text
                job = re.search(r'id="job-([^"]+)"', panel)
                assert job is not None and 'data-state="in_doubt"' in panel

                def ended() -> bool:
                    state = re.search(
                        r'data-state="(\w+)"', client.get(f"/console/cashier/jobs/{job.group(1)}").text
                    )
                    assert state is not None
                    return state.group(1) != "in_doubt"

                _until(ended, "the sale did not end")
                final = client.get(f"/console/cashier/jobs/{job.group(1)}").text
                assert 'data-state="succeeded"' in final, final
                assert PAN not in final and PAN not in screen
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        assert any("CARDHOLDER COPY" in d for d in stack.printer.documents())
