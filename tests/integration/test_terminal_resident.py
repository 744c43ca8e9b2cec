"""`pos run` against the real host over TCP through the fault proxy: reversals go out by
themselves after a dead line comes back; SIGTERM stops it at once with nothing lost; other `pos`
commands work meanwhile; an overdue reversal raises one alert."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import select

from tillroll.clock import FakeClock, SystemClock
from tillroll.host import HostServer
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance
from tillroll.host.store import HostStore, open_store
from tillroll.notify.outbox import MessageKind
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.terminal import HostAddress, Outcome, Terminal, TerminalConfig, save_config
from tillroll.terminal.config import JOURNAL_FILE, device_keystore
from tillroll.terminal.facts import check_fact
from tillroll.terminal.journal import Journal, outbox
from tillroll.terminal.resident import SIGN_IN_ALERT_AFTER, Resident
from tillroll.terminal.states import AlertKind

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
EXPIRY = "3012"
PIN = "123456"
START_MINOR = 100_000
LINE_DEAD_S = 10.0
BACKOFF_CAP_S = 2.0
STOP_BOUND_S = 1.0  # the bound: SIGTERM stops `pos run` within a second


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostStore]:
    monkeypatch.setenv("TILLROLL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    s = open_store(f"sqlite:///{tmp_path / 'host.db'}")
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    add_card(s, PAN, EXPIRY, PIN, START_MINOR)
    yield s
    s.engine.dispose()


@pytest.fixture
def proxy(store: HostStore) -> Iterator[FaultProxy]:
    with HostServer(store, key_lifetime_s=3600) as server, FaultProxy(server.address) as p:
        yield p


def set_up(data_dir: Path, proxy: FaultProxy, **kw: object) -> None:
    settings: dict[str, object] = {
        "response_timeout_s": 1.0,
        "connect_timeout_s": 1.0,
        "retry_backoff_s": 0.2,
        "retry_backoff_cap_s": BACKOFF_CAP_S,
        "retry_wait_total_s": 0.5,
        **kw,
    }
    config = TerminalConfig(tid=TID, mid=MID, tmk=TMK, host=HostAddress(*proxy.address), **settings)  # type: ignore[arg-type]
    save_config(data_dir, config)


def sale_with_lost_answer_and_dead_line(data_dir: Path, proxy: FaultProxy) -> None:
    """A sale whose answer is lost; the line dies before its reversal can go: it stays pending."""
    dropped = threading.Event()
    before = sum(e.fault is Fault.DROP_RESPONSE for e in proxy.events)

    def line_dies() -> None:
        deadline = time.monotonic() + 5.0
        while (
            sum(e.fault is Fault.DROP_RESPONSE for e in proxy.events) == before
            and time.monotonic() < deadline
        ):
            dropped.wait(0.01)
        proxy.down(close_existing=True)
        dropped.set()

    killer = threading.Thread(target=line_dies)
    with Terminal.open(data_dir) as term:
        assert term.sign_in().outcome is Outcome.DONE
        proxy.inject(Fault.DROP_RESPONSE)
        killer.start()
        res = term.sale(1250, PAN, EXPIRY, PIN)
    killer.join(5.0)
    assert dropped.is_set()
    assert res.outcome is Outcome.REVERSAL_PENDING, res


def journal_of(data_dir: Path) -> Journal:
    return Journal(data_dir / JOURNAL_FILE, device_keystore(data_dir))


def wait_for(cond: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    tick = threading.Event()
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        tick.wait(0.05)
    return bool(cond())  # type: ignore[operator]


def test_the_reversal_goes_out_by_itself_when_the_line_comes_back(
    tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    data_dir = tmp_path / "pos"
    set_up(data_dir, proxy)
    sale_with_lost_answer_and_dead_line(data_dir, proxy)
    assert card_balance(store, PAN) == START_MINOR - 1250  # charged: the host did the sale
    lines: list[str] = []
    stop = threading.Event()
    resident = Resident(data_dir, stop=stop, out=lines.append)
    loop = threading.Thread(target=resident.run)
    loop.start()
    try:
        restore = threading.Timer(LINE_DEAD_S, proxy.up)
        restore.start()
        journal = journal_of(data_dir)
        # while the line is dead the reversal stays pending, tried again and again
        assert not wait_for(lambda: not journal.pending_reversals(), LINE_DEAD_S - 1.0)
        restore.join()
        up_at = time.monotonic()
        # back up: it goes within one backoff wait (plus a turn and an exchange)
        assert wait_for(lambda: not journal.pending_reversals(), BACKOFF_CAP_S + 2.0), lines
        took_s = time.monotonic() - up_at
        assert card_balance(store, PAN) == START_MINOR
        journal.close()
    finally:
        stop.set()
        loop.join(5.0)
    assert not loop.is_alive()
    assert took_s <= BACKOFF_CAP_S + 2.0
    assert any("next try in" in line for line in lines)
    assert any(line.startswith("reversal: 1 sent and answered") for line in lines), lines
    print(f"reversal sent {took_s:.2f} s after the line came back")


def pos(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillroll", "pos", "--dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_stop_does_not_wait_for_an_exchange_in_flight(
    tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    """The resident is stopped while its reversal waits for an answer that will not come within
    the link's 30 s: it returns within the bound, and the reversal stays pending (nothing lost)."""
    data_dir = tmp_path / "pos"
    set_up(data_dir, proxy)
    sale_with_lost_answer_and_dead_line(data_dir, proxy)
    set_up(data_dir, proxy, response_timeout_s=30.0)
    with closing(journal_of(data_dir)) as j:
        pending_before = [e.id for e in j.pending_reversals()]
    drops_before = sum(e.fault is Fault.DROP_RESPONSE for e in proxy.events)
    proxy.inject(Fault.DROP_RESPONSE, count=100)  # the host answers the reversal; nobody hears it
    proxy.up()
    stop = threading.Event()
    lines: list[str] = []
    resident = Resident(data_dir, stop=stop, out=lines.append)
    loop = threading.Thread(target=resident.run)
    loop.start()
    try:
        in_flight = wait_for(
            lambda: sum(e.fault is Fault.DROP_RESPONSE for e in proxy.events) > drops_before, 10.0
        )
        assert in_flight, lines
        stopped_at = time.monotonic()
        stop.set()
        loop.join(5.0)
        stop_s = time.monotonic() - stopped_at
    finally:
        stop.set()
        loop.join(35.0)
    assert not loop.is_alive()
    assert stop_s < STOP_BOUND_S, f"stop took {stop_s:.2f} s with an exchange in flight"
    print(f"resident stopped {stop_s:.3f} s after the stop request, an exchange in flight")
    with closing(journal_of(data_dir)) as j:
        assert [e.id for e in j.pending_reversals()] == pending_before  # nothing lost
    proxy.clear()
    set_up(data_dir, proxy)
    with Terminal.open(data_dir) as term:
        assert term.recover().outcome is Outcome.DONE  # sent again; the host replays its answer
        assert term.pending_reversals() == []
    assert card_balance(store, PAN) == START_MINOR


def test_pos_run_as_a_process_sale_beside_it_alert_and_sigterm(
    tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    data_dir = tmp_path / "pos"
    set_up(data_dir, proxy, reversal_alert_s=1.0)
    sale_with_lost_answer_and_dead_line(data_dir, proxy)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillroll", "pos", "--dir", str(data_dir), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True)
    reader.start()
    seen: list[str] = []

    def saw(word: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
            if word in seen[-1]:
                return True
        return False

    try:
        assert saw("alert:", 15.0), seen  # overdue past 1 s, the line still dead
        st = pos(data_dir, "status")
        assert st.returncode == 0, st.stderr
        assert AlertKind.REVERSAL_OVERDUE in st.stdout and "reversal pending" in st.stdout, st.stdout
        assert AlertKind.REVERSAL_OVERDUE in pos(data_dir, "journal").stdout
        proxy.up()  # the resident sends it by itself
        with closing(journal_of(data_dir)) as j:
            assert wait_for(lambda: not j.pending_reversals(), BACKOFF_CAP_S + 3.0), seen
        assert card_balance(store, PAN) == START_MINOR
        sale = pos(data_dir, "sale", "3.00", "--card", PAN, "--expiry", EXPIRY, "--pin", PIN)
        assert sale.returncode == 0, sale.stdout + sale.stderr  # between the resident's turns
        assert card_balance(store, PAN) == START_MINOR - 300
        sale_with_lost_answer_and_dead_line(data_dir, proxy)  # another one, left pending
        with closing(journal_of(data_dir)) as j:
            pending_before = [e.id for e in j.pending_reversals()]
        assert pending_before
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5.0)
        stop_s = time.monotonic() - sent_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(2.0)
        if proc.stdout is not None:
            proc.stdout.close()
    reader.join(2.0)
    assert proc.returncode == 0
    assert stop_s < STOP_BOUND_S, f"SIGTERM took {stop_s:.2f} s"
    print(f"pos run stopped {stop_s:.3f} s after SIGTERM")
    with closing(journal_of(data_dir)) as j:  # nothing lost: still pending, and alerted once each
        assert [e.id for e in j.pending_reversals()] == pending_before
        alerted = [a.txn_id for a in j.alerts(100) if a.kind == AlertKind.REVERSAL_OVERDUE]
        assert len(alerted) == len(set(alerted))
    proxy.clear()
    proxy.up()
    with Terminal.open(data_dir) as term:
        assert term.recover().outcome is Outcome.DONE
        assert term.pending_reversals() == []
    assert card_balance(store, PAN) == START_MINOR - 300


def test_repeated_sign_in_failures_raise_one_merchant_alert(tmp_path: Path, proxy: FaultProxy) -> None:
    """The line to the host is dead and the terminal has no session: `pos run` keeps trying to sign
    in with backoff, and at the third failure in a row raises one alert, written with the
    merchant's notice in one journal transaction, in the shape the back office accepts."""
    data_dir = tmp_path / "pos"
    set_up(data_dir, proxy)
    proxy.down()
    clock = FakeClock(SystemClock().now())
    lines: list[str] = []
    resident = Resident(data_dir, stop=threading.Event(), out=lines.append, clock=clock)
    for _ in range(SIGN_IN_ALERT_AFTER + 3):
        resident.turn()
        clock.advance(BACKOFF_CAP_S + 1.0)
    with closing(journal_of(data_dir)) as j:
        alerts = [a for a in j.alerts(100) if a.kind == AlertKind.SIGN_IN_FAILURES]
        with j.engine.connect() as conn:
            rows = conn.execute(select(outbox.messages)).mappings().all()
    assert sum("sign-in:" in line for line in lines) >= SIGN_IN_ALERT_AFTER + 1, lines
    assert len(alerts) == 1, lines
    notices = [r for r in rows if r["kind"] == MessageKind.MERCHANT_ALERT.value]
    assert len(notices) == 1
    payload = json.loads(notices[0]["payload"])
    assert payload["alert"] == "sign_in_failures" and payload["count"] == SIGN_IN_ALERT_AFTER
    checked = check_fact(MessageKind.MERCHANT_ALERT, TID, payload)  # what the back office checks
    assert checked.reference.startswith("sign_in_failures.")
