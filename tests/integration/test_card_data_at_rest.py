"""Card data at rest (PROFILE §7): after a real terminal's day on the real host over TCP —
sales, a refund, a void, a reversal after a lost response, settlement — no full card number is
in any log line or in any host table but the issuer's card records, and the host's data and key
files are owner-only."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.store import HostStore, open_store
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.terminal import HostAddress, Outcome, Terminal, TerminalConfig, TxnKind

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PANS = ("6222021234567890123", "6217001234560000016")
EXPIRY = "3012"
PIN = "123456"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """Every log record of the run, at DEBUG, written to a file (as a deployed host's would be),
    with SQLAlchemy's statement log on, as someone debugging the host would turn it on."""
    path = tmp_path / "logs" / "host.log"
    path.parent.mkdir()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root, sql = logging.getLogger(), logging.getLogger("sqlalchemy.engine")
    old_levels = root.level, sql.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    sql.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_levels[0])
        sql.setLevel(old_levels[1])
        handler.close()


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    for pan in PANS:
        add_card(s, pan, EXPIRY, PIN, 100_000)
    yield s
    s.engine.dispose()


def _a_day_at_the_counter(term: Terminal, proxy: FaultProxy) -> None:
    first = term.sale(1_250, PANS[0], EXPIRY, PIN)
    assert first.approved, first.text
    assert term.sale(300, PANS[1], EXPIRY).approved
    voided = term.sale(700, PANS[1], EXPIRY, PIN)
    assert voided.trace is not None and term.void(voided.trace).approved
    proxy.inject(Fault.DROP_RESPONSE)  # the host books it, the answer is lost: reversed
    assert term.sale(900, PANS[0], EXPIRY, PIN).outcome is Outcome.REVERSED
    assert first.rrn is not None and first.txn_id is not None
    date = term.journal.get(first.txn_id).host_date
    assert date is not None
    assert term.refund(500, first.rrn, date).approved
    assert term.sale(1_000_000, PANS[0], EXPIRY, PIN).outcome is Outcome.DECLINED  # 51
    assert term.balance(PANS[0], EXPIRY, PIN).approved
    assert term.settle().outcome is Outcome.SETTLED
    assert any(e.kind is TxnKind.REFUND for e in term.entries())


def _host_rows_with_a_pan(store: HostStore) -> list[str]:
    """Every table and column of the host database (reflected, so a new table is scanned too)
    that holds a full card number, except the issuer's own card records."""
    found = []
    meta = MetaData()
    meta.reflect(store.engine)
    with store.engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)).mappings():
                for column, value in row.items():
                    if value is None or (table.name, column) == ("issuer_cards", "pan"):
                        continue
                    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    found += [f"{table.name}.{column}" for pan in PANS if pan in text]
    return found


def test_no_full_card_number_at_rest_and_owner_only_files(
    store: HostStore, tmp_path: Path, log_file: Path
) -> None:
    with HostServer(store, key_lifetime_s=3600) as host, FaultProxy(host.address) as proxy:
        config = TerminalConfig(
            tid=TID, mid=MID, tmk=TMK, host=HostAddress(*proxy.address), merchant_name="一号便利店",
            response_timeout_s=2.0, connect_timeout_s=1.0,  # slack: every statement is logged
        )  # fmt: skip
        with Terminal(config, tmp_path / "pos") as term:
            _a_day_at_the_counter(term, proxy)
    assert card_balance(store, PANS[0]) == 100_000 - 1_250 + 500
    assert card_balance(store, PANS[1]) == 100_000 - 300

    logged = log_file.read_text(encoding="utf-8")
    # The file really caught the run: the terminal's lines, and SQLAlchemy's statements, whose
    # parameters would carry card numbers unless the engines hide them.
    assert "tillroll.terminal" in logged and "sqlalchemy.engine" in logged
    assert [pan for pan in PANS if pan in logged] == []
    assert _host_rows_with_a_pan(store) == []

    key_file = tmp_path / "master.key"  # TILLROLL_MASTER_KEY_FILE of the db_url fixture
    assert mode(key_file) == 0o600
    if store.url.startswith("sqlite"):
        db = Path(store.url.removeprefix("sqlite:///"))
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if path.exists():
                assert mode(path) == 0o600, path
    journal_files = [p for p in (tmp_path / "pos").iterdir() if p.name.endswith((".db", "-wal", "-shm"))]
    assert journal_files and all(mode(p) == 0o600 for p in journal_files), journal_files


def test_a_replayed_answer_echoes_the_card_number_from_the_retry(store: HostStore) -> None:
    from hostwire import WireClient

    with HostServer(store, key_lifetime_s=3600) as host:
        client = WireClient(host.address, tid=TID, mid=MID, tmk=TMK)
        try:
            client.sign_in()
            sale = client.sale_message(1_250, pan=PANS[0], pin=PIN)
            first = client.send(sale)
            again = client.send(sale)  # the terminal's retry of the same request
        finally:
            client.close()
    assert first.code == "00" and again.mac_ok
    assert again.message.fields == first.message.fields  # same RRN, auth code and card number
    assert again.message["2"] == PANS[0]
    assert card_balance(store, PANS[0]) == 100_000 - 1_250
    assert _host_rows_with_a_pan(store) == []


def _tillroll(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillroll", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _env_without_master_key() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k not in ("TILLROLL_MASTER_KEY", "TILLROLL_MASTER_KEY_FILE")
    }


@pytest.mark.postgres
def test_a_shared_database_needs_an_explicit_master_key(pg_database: str, tmp_path: Path) -> None:
    env = _env_without_master_key()
    res = _tillroll("host", "serve", "--listen", "127.0.0.1:0", "--db", pg_database, env=env)
    assert res.returncode == 2
    assert "TILLROLL_MASTER_KEY" in res.stderr and "Traceback" not in res.stderr
    env["TILLROLL_MASTER_KEY_FILE"] = str(tmp_path / "keys" / "master.key")
    mid = "898310048990999"
    res = _tillroll("host", "add-merchant", mid, "--name", "二号店", "--db", pg_database, env=env)
    assert res.returncode == 0, res.stderr
    assert mode(tmp_path / "keys" / "master.key") == 0o600 and mode(tmp_path / "keys") == 0o700


def test_a_key_file_others_can_read_stops_the_host(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text("ab" * 32)
    key_file.chmod(0o644)
    env = {**_env_without_master_key(), "TILLROLL_MASTER_KEY_FILE": str(key_file)}
    res = _tillroll("host", "serve", "--db", f"sqlite:///{tmp_path / 'host.db'}", env=env)
    assert res.returncode == 2
    assert f"chmod 600 {key_file}" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "host.db").exists()  # refused before anything was created
