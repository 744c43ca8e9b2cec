"""`tillroll web add-user` and `tillroll web audit-verify` on SQLite and PostgreSQL: a user added
from a password file logs in; the command refuses what would be wrong; the verify command passes an
intact chain and names the first row of a tampered or shortened one (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from tillroll.cli import app
from tillroll.clock import SystemClock
from tillroll.console.config import ConsoleConfig
from tillroll.console.users import LoginResult, authenticate
from tillroll.host.admin import add_merchant
from tillroll.host.store import open_store
from tillroll.store.tables import audit_log, console_users

MID = "898310048990001"


@pytest.fixture
def db(db_url: str) -> str:
    store = open_store(db_url)
    add_merchant(store, MID, "一号便利店")
    store.engine.dispose()
    return db_url


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.output


def test_add_user_from_a_file_or_a_prompt_and_its_password_works(db: str, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("correct horse battery\n")
    code, out = run(
        "web",
        "add-user",
        "wang.fang",
        "--role",
        "cashier",
        "--mid",
        MID,
        "--password-file",
        str(secret),
        "--db",
        db,
    )
    assert code == 0, out
    assert "correct horse" not in out
    code, out = run(
        "web",
        "add-user",
        "ops",
        "--role",
        "operator",
        "--db",
        db,
        input="another long one\nanother long one\n",
    )
    assert code == 0, out
    store = open_store(db)
    try:
        with store.engine.begin() as conn:
            hashes = conn.execute(select(console_users.c.username, console_users.c.password_hash)).all()
            assert all(h.startswith("$argon2id$") and "horse" not in h for _, h in hashes)
            login = authenticate(
                conn, "wang.fang", "correct horse battery", now=SystemClock().now(), config=ConsoleConfig()
            )
            assert login.result is LoginResult.OK and login.user is not None and login.user.mid == MID
            ops = authenticate(
                conn, "ops", "another long one", now=SystemClock().now(), config=ConsoleConfig()
            )
            assert ops.result is LoginResult.OK
    finally:
        store.engine.dispose()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--role", "cashier"], "give --mid"),
        (["--role", "operator", "--mid", MID], "give no --mid"),
        (["--role", "boss", "--mid", MID], "is not one of"),
        (["--role", "cashier", "--mid", "898310048990999"], "not known to the host"),
    ],
)
def test_add_user_refuses_what_would_be_wrong(db: str, tmp_path: Path, args: list[str], says: str) -> None:
    secret = tmp_path / "pw"
    secret.write_text("correct horse battery\n")
    code, out = run("web", "add-user", "someone", *args, "--password-file", str(secret), "--db", db)
    assert code == 2 and says in out


def test_add_user_refuses_a_short_password_and_a_taken_name(db: str, tmp_path: Path) -> None:
    short, good = tmp_path / "short", tmp_path / "good"
    short.write_text("abc\n")
    good.write_text("correct horse battery\n")
    code, out = run(
        "web",
        "add-user",
        "li",
        "--role",
        "supervisor",
        "--mid",
        MID,
        "--password-file",
        str(short),
        "--db",
        db,
    )
    assert code == 2 and "at least 10 characters" in out
    assert (
        run(
            "web",
            "add-user",
            "li",
            "--role",
            "supervisor",
            "--mid",
            MID,
            "--password-file",
            str(good),
            "--db",
            db,
        )[0]
        == 0
    )
    code, out = run(
        "web", "add-user", "li", "--role", "cashier", "--mid", MID, "--password-file", str(good), "--db", db
    )
    assert code == 2 and "exists already" in out


def test_audit_verify_detects_a_tampered_row_and_a_removed_one(db: str, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("correct horse battery\n")
    for name in ("a.one", "b.two", "c.three"):
        assert (
            run(
                "web",
                "add-user",
                name,
                "--role",
                "cashier",
                "--mid",
                MID,
                "--password-file",
                str(secret),
                "--db",
                db,
            )[0]
            == 0
        )
    code, out = run("web", "audit-verify", "--db", db)
    assert code == 0 and "3 rows" in out
    store = open_store(db)
    try:
        with store.engine.begin() as conn:
            ids = conn.execute(select(audit_log.c.id).order_by(audit_log.c.id)).scalars().all()
            conn.execute(
                update(audit_log).where(audit_log.c.id == ids[1]).values(after='{"role":"operator"}')
            )
        code, out = run("web", "audit-verify", "--db", db)
        assert code == 1 and f"row id {ids[1]}" in out and "changed" in out
        with store.engine.begin() as conn:
            conn.execute(delete(audit_log).where(audit_log.c.id == ids[1]))
        code, out = run("web", "audit-verify", "--db", db)
        assert code == 1 and f"row id {ids[2]}" in out and "removed" in out
    finally:
        store.engine.dispose()
