"""`tillroll pos …` against the real host over TCP: outcomes, exit codes, bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.store import HostStore, open_store
from tillroll.terminal import Terminal, TxnKind
from tillroll.terminal.cli import app

MID = "898310048990002"
TID = "10000002"
TMK_HEX = "70F2A84CCBC2AE8625CBB0F2C22AB923"
PAN = "6222021234567890123"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostStore]:
    monkeypatch.setenv("TILLROLL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    s = open_store(f"sqlite:///{tmp_path / 'host.db'}")
    add_merchant(s, MID, "二号便利店")
    add_terminal(s, TID, MID, bytes.fromhex(TMK_HEX))
    add_card(s, PAN, "3012", "123456", 100_000)
    yield s
    s.engine.dispose()


@pytest.fixture
def host(store: HostStore) -> Iterator[HostServer]:
    with HostServer(store) as server:
        yield server


@pytest.fixture
def pos(tmp_path: Path) -> Iterator[tuple[CliRunner, list[str]]]:
    yield CliRunner(), ["--dir", str(tmp_path / "pos")]


def run(pos: tuple[CliRunner, list[str]], *args: str) -> tuple[int, str]:
    runner, base = pos
    result = runner.invoke(app, [*base, *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def init(pos: tuple[CliRunner, list[str]], host: HostServer) -> None:
    code, out = run(
        pos, "init", "--tid", TID, "--mid", MID, "--tmk", TMK_HEX, "--host", "{}:{}".format(*host.address)
    )
    assert code == 0, out
    assert TMK_HEX not in out


def test_a_day_at_the_counter(pos: tuple[CliRunner, list[str]], host: HostServer, store: HostStore) -> None:
    init(pos, host)
    code, out = run(pos, "sign-in")
    assert code == 0 and "signed in" in out
    code, out = run(pos, "sale", "12.50", "--card", PAN, "--expiry", "3012", "--pin", "123456")
    assert code == 0 and "交易成功 / approved" in out, out
    trace = re.search(r"TRACE (\d{6})", out)
    assert trace is not None
    assert "e-receipt" in out.lower() or "E-RECEIPT" in out
    code, out = run(pos, "sale", "5000.00", "--card", PAN, "--expiry", "3012")
    assert code == 1 and "余额不足" in out and "insufficient funds" in out
    code, out = run(pos, "balance", "--card", PAN, "--expiry", "3012", "--pin", "123456")
    assert code == 0 and "BALANCE RMB 987.50" in out
    code, out = run(pos, "journal")
    assert code == 0 and "622202*********0123" in out and PAN not in out
    code, out = run(pos, "void", trace.group(1))
    assert code == 0 and "approved" in out
    assert card_balance(store, PAN) == 100_000
    code, out = run(pos, "void", trace.group(1))
    assert code == 1 and "already voided" in out
    code, out = run(pos, "reprint")
    assert code == 1 and "no printer" in out  # no printer configured: the receipt stays owed
    code, out = run(pos, "recover")
    assert code == 0 and "no pending reversals" in out
    code, out = run(pos, "sign-out")
    assert code == 0


def test_refund_and_settle(pos: tuple[CliRunner, list[str]], host: HostServer, store: HostStore) -> None:
    init(pos, host)
    code, out = run(pos, "sale", "20.00", "--card", PAN, "--expiry", "3012")
    assert code == 0, out
    rrn = re.search(r"RRN (\w{12})", out)
    assert rrn is not None
    with Terminal.open(pos[1][1]) as t:  # the slip's date: the host's field 13, kept in the journal
        (entry,) = [e for e in t.entries() if e.kind is TxnKind.SALE]
        date = entry.host_date or ""
    code, out = run(pos, "refund", "5.00", "--rrn", rrn.group(1), "--date", date)
    assert code == 0 and "approved" in out, out
    code, out = run(pos, "refund", "15.01", "--rrn", rrn.group(1), "--date", date)
    assert code == 1 and "61" in out and "exceeds what is left to refund" in out, out
    code, out = run(pos, "refund", "1.00", "--rrn", "000000009999", "--date", date)
    assert code == 2 and "--trace" in out, out
    assert card_balance(store, PAN) == 100_000 - 1_500
    code, out = run(pos, "settle")
    assert code == 0 and "balanced" in out and "NEXT BATCH 000002" in out, out
    code, out = run(pos, "journal")
    assert code == 0 and "refund" in out and "000001 balanced" in out, out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["refund", "1.00", "--rrn", "12", "--date", "1129"], "RRN"),
        (["refund", "1.00", "--rrn", "000000000001", "--date", "1340"], "MMDD"),
        (["sale", "12.505", "--card", PAN, "--expiry", "3012"], "12.50"),
        (["sale", "1e3", "--card", PAN, "--expiry", "3012"], "amount"),
        (["sale", "0", "--card", PAN, "--expiry", "3012"], "more than 0.00"),
        (["sale", "1.00", "--card", "1234", "--expiry", "3012"], "card number"),
        (["sale", "1.00", "--card", PAN, "--expiry", "3013"], "YYMM"),
        (["sale", "1.00", "--card", PAN, "--expiry", "3012", "--pin", "12"], "PIN"),
        (["balance", "--card", PAN, "--expiry", "3012", "--pin", "abcd"], "PIN"),
        (["void", "abc"], "voucher number"),
        (["reprint", "0"], "voucher number"),
    ],
)
def test_bad_input_exits_2_saying_what_to_fix(
    pos: tuple[CliRunner, list[str]], host: HostServer, args: list[str], says: str
) -> None:
    init(pos, host)
    code, out = run(pos, *args)
    assert code == 2, out
    assert "bad input" in out and says in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tmk", "XYZ"], "32 hex digits"),
        (["--host", "localhost"], "HOST:PORT"),
        (["--host", "localhost:99999"], "HOST:PORT"),
        (["--tid", "123"], "terminal id"),
        (["--backup-host", "nope"], "HOST:PORT"),
        (["--printer", "lpt1"], "tcp://"),
    ],
)
def test_bad_init_exits_2(pos: tuple[CliRunner, list[str]], args: list[str], says: str) -> None:
    base = {"--tid": TID, "--mid": MID, "--tmk": TMK_HEX, "--host": "127.0.0.1:5000"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    code, out = run(pos, "init", *[x for kv in base.items() for x in kv])
    assert code == 2 and says in out, out


def test_commands_before_init_say_how_to_set_up(pos: tuple[CliRunner, list[str]]) -> None:
    code, out = run(pos, "sign-in")
    assert code == 2 and "pos init" in out
