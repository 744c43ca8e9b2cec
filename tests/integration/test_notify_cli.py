"""`tillroll notify …` by command line: endpoints, the relay's round, dead letters listed."""

from __future__ import annotations

import json
from pathlib import Path

from notifywire import MID, back_office, cancelled_fact
from sqlalchemy import select
from typer.testing import CliRunner, Result

from tillroll.cli import app
from tillroll.clock import SystemClock
from tillroll.notify.outbox import MessageKind
from tillroll.notify.routing import fan_out
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import notify_endpoints

ENV = {"COLUMNS": "200"}


def test_endpoints_run_once_and_list(db_url: str) -> None:
    engine = back_office(db_url)
    runner = CliRunner()

    def notify(*args: str) -> Result:
        return runner.invoke(app, ["notify", *args, "--db", db_url], env=ENV)

    added = notify("add-endpoint", MID, "--email", "owner@shop.example")
    assert added.exit_code == 0, added.output
    hook = notify("add-endpoint", MID, "--webhook", "http://127.0.0.1:9/h")
    assert hook.exit_code == 0, hook.output
    [secret] = [w for w in hook.output.split() if w.startswith("whsec_")]
    with engine.connect() as conn:
        column = notify_endpoints.c.secret_enc
        stored = bytes(conn.execute(select(column).where(column.isnot(None))).scalar_one())
    assert secret.encode() not in stored and secret[6:].encode() not in stored  # sealed, not in the clear

    for bad in (["--email", "not-an-address"], ["--sms", "12"], ["--webhook", "ftp://x"], []):
        refused = notify("add-endpoint", MID, *bad)
        assert refused.exit_code == 2, refused.output
    unknown = notify("add-endpoint", "000000000000000", "--sms", "13800138000")
    assert unknown.exit_code == 2 and "not registered" in unknown.output
    again = notify("add-endpoint", MID, "--email", "owner@shop.example")
    assert again.exit_code == 2 and "already" in again.output

    with engine.begin() as conn:
        fan_out(conn, MessageKind.PAYMENT_CANCELLED, cancelled_fact(), SystemClock().now())
    engine.dispose()
    with SmtpSink() as sink:
        sink.fail_next(1, code=550)
        run = notify("run", "--smtp", f"127.0.0.1:{sink.port}", "--once")
        assert run.exit_code == 0, run.output
    # The customer's e-mail was refused for good (dead); the webhook to a closed port failed (pending).
    assert "dead 1" in run.output, run.output
    dead = notify("list", "--state", "dead", "--json")
    assert dead.exit_code == 0, dead.output
    [row] = [json.loads(line) for line in dead.output.splitlines()]
    assert row["recipient"] == "alice@example.com" and row["state"] == "dead" and "550" in row["last_error"]
    listed = notify("list")
    assert listed.exit_code == 0 and "merchant_alert" in listed.output  # the dead letter's alert

    if db_url.startswith("sqlite"):  # data at rest: the database files never hold the secret
        path = Path(db_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                data = file.read_bytes()
                assert secret.encode() not in data and secret[6:].encode() not in data

    bad_run = notify("run", "--smtp", "host:port", "--once")
    assert bad_run.exit_code == 2 and "--smtp" in bad_run.output
