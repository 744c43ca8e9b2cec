"""The demo's day passes its closing check, and the check catches a payment nobody receipted and
an earlier answer replayed to a replaced terminal."""

from __future__ import annotations

import re
import shutil
import socket
import threading
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from tillroll.crypto import unwrap_working_keys
from tillroll.host.admin import card_messages
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack
from tillroll.sim.demo import (
    CARDS,
    FLOOD_FAULT,
    JOURNAL_LOSS_FAULT,
    MID,
    OPENING_CARD,
    OPENING_MINOR,
    WALLET_DAY,
    Demo,
    run_demo,
)
from tillroll.sim.demo_wallet import CUSTOMERS, wallet_check
from tillroll.terminal import Outcome, Terminal


@pytest.mark.slow
def test_the_demo_day_passes_its_closing_check_and_serves_the_console_on_its_day(tmp_path: Path) -> None:
    """One day (``tillroll demo --serve``) for both: what it prints before it serves is what a day
    without ``--serve`` prints, so its closing check and reconciliation are read from that."""
    console = Console(record=True, width=600)
    stop, serving = threading.Event(), threading.Event()
    login: list[str] = []
    passed: list[bool] = []

    def on_serving(url: str, user: str, password: str) -> None:
        login.extend([url, user, password])
        serving.set()

    day = threading.Thread(
        target=lambda: passed.append(
            run_demo(tmp_path, operations=40, console=console, serve=True, stop=stop, on_serving=on_serving)
        )
    )
    day.start()
    try:
        assert serving.wait(300), "the demo never started serving"
        url, user, password = login
        assert password in console.export_text(clear=False)  # the log-in is printed for the person
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as web:
            form = web.get("/console/login")
            assert form.status_code == 200
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert csrf is not None
            answer = web.post(
                "/console/login",
                data={"username": user, "password": password, "csrf_token": csrf.group(1)},
            )
            assert answer.status_code == 303, answer.text
            terminals = web.get("/console/terminals")
            assert terminals.status_code == 200
            assert "10000001" in terminals.text and "10000002" in terminals.text  # their uploaded status
    finally:
        stop.set()
        day.join(60)
    assert passed == [True]
    out = console.export_text()
    assert "closing check passed" in out
    assert out.count("✔") == 6 + JOURNAL_LOSS_FAULT + FLOOD_FAULT + WALLET_DAY and "✘" not in out
    assert "Settlement report" in out
    assert ("closed by: host" in out) is JOURNAL_LOSS_FAULT
    assert ("0 lost or failed because of it" in out) is FLOOD_FAULT
    # It ends by reconciling its day: the statement imported, the journals uploaded, the run's
    # findings listed with what the automatic actions did.
    recon = out[out.index("Reconciliation of") :]
    assert "wallet statement:" in recon and "0 line(s) that could not be read" in recon
    assert re.search(r"sources: journal_card [1-9]", recon)  # the terminals' uploaded journals
    assert re.search(r"opened \d+ exception\(s\), \d+ automatic action\(s\) taken", recon)


def test_the_closing_check_catches_an_approval_the_terminal_never_saw(tmp_path: Path) -> None:
    demo = Demo(tmp_path, Console(record=True), operations=20)
    demo.start()
    try:
        counter = demo.counters[0]
        assert counter.terminal.sign_in().outcome is Outcome.DONE
        demo.end_of_day()
        assert demo.check() == []
        # Someone else's device, with terminal 1's keys, takes money: the F1 failure.
        assert demo.host is not None
        tmk = counter.terminal.config.tmk
        with socket.create_connection(demo.host.address, timeout=5) as sock:

            def exchange(body: bytes) -> bytes:
                sock.sendall(framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, body).encode())
                return framing.parse_payload(framing.recv_payload(sock)).message

            sign_in = Message(
                "0800", {"11": "900001", "41": counter.tid, "42": MID, "60": "00000001003", "63": "001"}
            )
            signed_in = unpack(exchange(pack(sign_in)))
            keys = unwrap_working_keys(tmk, bytes.fromhex(signed_in["62"]))
            batch = signed_in["60"][2:8]
            pan = next(iter(CARDS))
            sale = Message(
                "0200",
                {"2": pan, "3": "000000", "4": "000000001234", "11": "900002", "14": CARDS[pan][0],
                 "22": "012", "25": "00", "41": counter.tid, "42": MID, "49": "156",
                 "53": "2600000000000000", "60": f"22{batch}000"},
            )  # fmt: skip
            raw = exchange(sign(sale, keys.mak))
            assert unpack(raw)["39"] == "00" and mac_matches(raw, keys.mak)
        assert demo.store is not None
        assert "消费12.34元" in card_messages(demo.store, pan)[-1]
        problems = demo.check()
        assert any("no receipt" in p and "900002" in p for p in problems)
    finally:
        demo.stop()


def test_the_closing_check_catches_an_earlier_answer_replayed_to_a_restored_journal(tmp_path: Path) -> None:
    """A journal restored from a backup taken after the sign-in keeps a session the host still
    honours, so no sign-in tells the host the STANs went back (PROFILE §6): the first sale repeats
    the old device's first sale exactly, and the host answers it as the repeat it looks like."""
    demo = Demo(tmp_path, Console(record=True), operations=20)
    demo.start()
    try:
        counter = demo.counters[0]
        assert counter.terminal.sign_in().outcome is Outcome.DONE
        config, data_dir = counter.terminal.config, counter.terminal.data_dir
        counter.terminal.close()
        backup = tmp_path / "pos-1-backup"
        shutil.copytree(data_dir, backup)
        counter.terminal = Terminal(config, data_dir)
        first = demo._sale(counter, amount_minor=OPENING_MINOR, pan=OPENING_CARD, with_pin=False)
        assert first.approved
        demo.replace_terminal(counter, backup)
        again = demo._sale(counter, amount_minor=OPENING_MINOR, pan=OPENING_CARD, with_pin=False)
        assert again.approved and again.trace == first.trace and again.rrn == first.rrn
        problems = demo.check()
        assert any(f"RRN {first.rrn} answers two payments" in p for p in problems), problems
        assert any("0011" in p and "journals give" in p for p in problems), problems
        assert any(f"trace {first.trace}: used by two devices" in p for p in problems), problems
    finally:
        demo.stop()


@pytest.mark.slow
def test_the_closing_check_catches_a_message_that_is_not_true(tmp_path: Path) -> None:
    """The wallet customers' day, then a false "you paid" to a customer whose payment was
    cancelled, and a second cancellation notice: the check names both."""
    demo = Demo(tmp_path, Console(record=True), operations=20)
    demo.start()
    try:
        day = demo.wallet_day
        assert day is not None
        terminal = demo.counters[1].terminal
        day.pay_all(terminal)
        day.finish([terminal], [terminal])
        assert list(wallet_check(day, [terminal])) == []
        never = next(c for c in CUSTOMERS if c.behaviour == "never")
        assert never.contact.startswith("+")  # told by SMS
        gateway = demo.wallet_day.sms_url
        lie = f"【{MID}】电子小票：您付款¥{never.amount_minor // 100}.{never.amount_minor % 100:02d}。"
        for n, text in enumerate([lie, "已撤销 again"]):
            answer = httpx.post(
                gateway + "/messages", json={"id": f"forged-{n}", "to": never.contact, "text": text}
            )
            assert answer.status_code == 201
        problems = list(wallet_check(day, [terminal]))
        assert any("told 'paid'" in p and never.name in p for p in problems), problems
        assert any("want one cancellation notice" in p for p in problems), problems
    finally:
        demo.stop()
