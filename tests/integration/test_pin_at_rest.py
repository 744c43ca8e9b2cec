"""PINs at rest: the card table holds IBM 3624 offsets, which without the PIN verification
key (sealed under the master key, not in the card table) say nothing about the PIN."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from tillroll.crypto.keystore import KeyStore, KeyStoreError
from tillroll.crypto.pin_offset import natural_pin, pin_matches, validation_data
from tillroll.host.admin import add_card, add_merchant
from tillroll.host.store import open_store
from tillroll.issuer import bank
from tillroll.store import make_engine
from tillroll.store.tables import issuer_cards

PAN = "6222021234567890123"
PIN = "2580"


def _four_digit_pins() -> list[str]:
    return [f"{n:04d}" for n in range(10_000)]


def test_the_card_table_keeps_only_an_offset(db_url: str) -> None:
    store = open_store(db_url)
    add_card(store, PAN, "3012", PIN, 10_000)
    columns = {c["name"] for c in inspect(store.engine).get_columns("issuer_cards")}
    assert not {"pin_hash", "pin_salt"} & columns
    with store.engine.connect() as conn:
        (offset,) = conn.execute(select(issuer_cards.c.pin_offset)).one()
        pvk = bank.pin_verification_key(conn, store.keystore)
    assert pvk is not None and len(offset) == len(PIN) and offset.isdigit()
    # With the PVK, exactly the cardholder's PIN verifies.
    data = validation_data(PAN)
    assert [p for p in _four_digit_pins() if pin_matches(pvk, data, offset, p)] == [PIN]

    # Brute force without the PVK: under any guessed key exactly one PIN "verifies", and a
    # different one for each key; nothing in the row singles out the cardholder's.
    def the_pin_under(guess: bytes) -> str:
        natural = natural_pin(guess, data, len(offset))
        return "".join(str((int(n) + int(o)) % 10) for n, o in zip(natural, offset, strict=True))

    recovered = {the_pin_under(os.urandom(16)) for _ in range(20)}
    assert all(pin_matches(g, data, offset, the_pin_under(g)) for g in (bytes(16), b"\x01" * 16))
    assert len(recovered) >= 10
    store.engine.dispose()


def test_the_same_pin_gives_unrelated_offsets(db_url: str) -> None:
    store = open_store(db_url)
    pans = [f"622202{n:012d}0" for n in range(100)]  # different accounts (not check digits)
    for pan in pans:
        add_card(store, pan, "3012", PIN, 0)
    with store.engine.connect() as conn:
        offsets = [row[0] for row in conn.execute(select(issuer_cards.c.pin_offset))]
    assert len(set(offsets)) >= 75  # 100 draws from 10,000 values: not a function of the PIN
    store.engine.dispose()


def test_a_database_copy_without_the_key_store_cannot_check_a_pin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'host.db'}"
    store = open_store(url)
    add_card(store, PAN, "3012", PIN, 10_000)
    store.engine.dispose()
    stolen = tmp_path / "stolen" / "host.db"
    stolen.parent.mkdir()
    shutil.copy(tmp_path / "host.db", stolen)
    engine = make_engine(f"sqlite:///{stolen}")
    with engine.connect() as conn, pytest.raises(KeyStoreError):
        bank.pin_verification_key(conn, KeyStore(os.urandom(32)))  # any key but the master key
    engine.dispose()


def _host_cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillroll", "host", *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_host_commands_read_a_pin_or_tmk_from_stdin(db_url: str) -> None:
    res = _host_cli("add-card", PAN, "--expiry", "3012", "--pin", "-", "--balance", "1.00", "--db", db_url,
                    stdin=f"{PIN}\n")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert PIN not in res.stdout
    store = open_store(db_url)
    with store.engine.connect() as conn:
        (offset,) = conn.execute(select(issuer_cards.c.pin_offset)).one()
        pvk = bank.pin_verification_key(conn, store.keystore)
    assert pvk is not None and pin_matches(pvk, validation_data(PAN), offset, PIN)
    add_merchant(store, "123456789012345", "一号便利店")
    store.engine.dispose()
    tmk = "70F2A84CCBC2AE8625CBB0F2C22AB923"
    res = _host_cli("add-terminal", "12345678", "--merchant", "123456789012345", "--tmk", "-", "--db", db_url,
                    stdin=f"{tmk}\n")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f'"tmk": "{tmk}"' in res.stdout
