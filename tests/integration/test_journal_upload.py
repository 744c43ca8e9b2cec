"""The journal upload end to end: a real terminal engine, the real acquirer host over TCP and the
real web intake over HTTP (uvicorn on 127.0.0.1), on SQLite and PostgreSQL.

A sale is uploaded right after it; with the back office down (refused, or a line that swallows
the request) the sale is unaffected and its entry goes up later; a replayed or older upload
changes nothing; one bad entry refuses the whole delivery; a full card number is refused; the
back office's commands (reprint, retry refunds) are handed over, run by the engine and
acknowledged, each acknowledgement with its audit row.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostwire import host_store
from sqlalchemy import func, insert, select
from typer.testing import CliRunner
from webstack import Web

from tillroll.clock import SystemClock
from tillroll.crypto.backoffice import JOURNAL_PREFIX, SIGNATURE_HEADER, backoffice_key, sign_fact
from tillroll.crypto.keystore import KeyStore
from tillroll.host import HostServer
from tillroll.host.store import HostStore
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.sim.printer_emulator import PrinterEmulator
from tillroll.store.tables import audit_log, journal_entries, terminal_commands, terminal_status
from tillroll.terminal import (
    HostAddress,
    Outcome,
    RefundState,
    Result,
    Terminal,
    TerminalConfig,
    save_config,
)
from tillroll.terminal.cli import app as pos_app
from tillroll.terminal.journal import Journal, txns
from tillroll.terminal.journal_upload import ENTRIES_MAX, JournalUploader, UploadRound
from tillroll.terminal.resident import Resident
from tillroll.web import WebConfig

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
MASKED = "622202*********0123"
EXPIRY = "3012"
PIN = "123456"


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    with host_store(db_url, mid=MID, tid=TID) as s:
        yield s


@pytest.fixture
def host(store: HostStore) -> Iterator[HostServer]:
    with HostServer(store, key_lifetime_s=3600) as server:
        yield server


@pytest.fixture
def proxy(host: HostServer) -> Iterator[FaultProxy]:
    with FaultProxy(host.address) as p:
        yield p


@pytest.fixture
def web(store: HostStore) -> Iterator[Web]:
    w = Web(store)
    w.start()
    yield w
    w.stop()


def make_terminal(
    data_dir: Path, address: tuple[str, int], backoffice: str, *, printer_url: str | None = None, **kw: Any
) -> Terminal:
    config = TerminalConfig(
        tid=TID,
        mid=MID,
        tmk=TMK,
        host=HostAddress(*address),
        merchant_name="一号便利店",
        response_timeout_s=2.0,
        connect_timeout_s=1.0,
        printer_url=printer_url,
        backoffice_url=backoffice,
        refund_retries_max=2,
        retry_backoff_s=0.01,
        **kw,
    )
    return Terminal(config, data_dir)


def key(res: Result) -> str:
    """The back office's key of a card entry: its batch and trace."""
    assert res.batch is not None and res.trace is not None
    return f"card:{res.batch}.{res.trace}"


def entries(store: HostStore) -> dict[str, dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(journal_entries).where(journal_entries.c.tid == TID)).mappings()
        return {r["entry_key"]: dict(r) for r in rows}


def status_row(store: HostStore) -> dict[str, Any] | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(terminal_status).where(terminal_status.c.tid == TID)).mappings().first()
        return dict(row) if row else None


def post(url: str, body: bytes, *, prefix: bytes = JOURNAL_PREFIX, to: str = TID) -> httpx.Response:
    sig = sign_fact(backoffice_key(TMK), TID, body, prefix=prefix)
    return httpx.post(
        f"{url}/api/v1/terminals/{to}/journal",
        content=body,
        headers={SIGNATURE_HEADER: sig, "Content-Type": "application/json"},
        timeout=10,
        trust_env=False,
    )


class Recorder(httpx.HTTPTransport):
    """The uploads' bodies as sent (to replay them)."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        return super().handle_request(request)


def test_a_sale_is_uploaded_right_after_it(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    with make_terminal(tmp_path / "pos", proxy.address, web.url) as term:
        res = term.sale(1250, PAN, EXPIRY, PIN, notify="li.lei@example.com")
        assert res.approved, res.text
        got = entries(store)
        sale = got[key(res)]
        assert (sale["rail"], sale["kind"], sale["state"]) == ("card", "sale", "approved")
        assert (sale["amount_minor"], sale["rrn"], sale["stan"], sale["batch"]) == (
            1250,
            res.rrn,
            res.trace,
            res.batch,
        )
        assert sale["card_masked"] == MASKED and sale["contact"] == "li.lei@example.com"
        assert sale["receipt"] == "owed"  # no printer here: owed, with an e-receipt
        status = status_row(store)
        assert status is not None and (status["batch"], status["signed_in"]) == (res.batch, 1)
        assert status["pending_reversals"] == 0 and status["printer"] == "none"
        assert json.loads(status["status"])["receipts_owed"] == 1
        # An upload answered 200 moves the watermark: the one after it sends no entry again. (The
        # after-sale upload's answer may have come later than its 1 s on a loaded machine: then the
        # first of these sends the sale again, which the back office keeps once.)
        first = term.upload_journal()
        assert first is not None and first.failed is None and first.entries <= 1
        again = term.upload_journal()
        assert again is not None and again.caught_up and again.entries == 0 and again.failed is None
        assert len(entries(store)) == 1
        # A void changes the sale (voided) and adds the void: both go up after the void.
        void = term.void(res.trace or "")
        assert void.approved, void.text
    got = entries(store)
    assert got[key(res)]["state"] == "voided"
    assert got[key(void)]["kind"] == "void"
    assert got[key(void)]["original_key"] == key(res)
    with store.engine.connect() as conn:  # no full card number anywhere in the copy
        rows = conn.execute(select(journal_entries)).mappings().all()
    assert PAN not in json.dumps([dict(r) for r in rows], default=str)


def test_with_the_back_office_down_the_sale_stands_and_its_entry_goes_up_later(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    web.stop()
    with make_terminal(tmp_path / "pos", proxy.address, web.url) as term:
        first = term.sale(1000, PAN, EXPIRY, PIN)
        assert first.approved, first.text
        assert entries(store) == {}
        assert term.uploader is not None and not term.uploader.due()  # backing off: the next sale won't wait
        second = term.sale(2000, PAN, EXPIRY, PIN)
        assert second.approved
        web.start()
        done = term.upload_journal()  # what `pos upload` and `pos run` do
        assert done is not None and done.failed is None and done.caught_up, done
    got = entries(store)
    assert {got[key(r)]["amount_minor"] for r in (first, second)} == {1000, 2000}
    assert all(got[key(r)]["state"] == "approved" for r in (first, second))


def test_a_line_that_swallows_the_upload_does_not_hold_the_sale(
    tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    # A listening socket that never answers: the request goes out, no answer ever comes.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        # 10 s per back-office delivery (facts), but the after-sale upload waits at most 1 s.
        with make_terminal(tmp_path / "pos", proxy.address, url, backoffice_timeout_s=10.0) as term:
            assert term.sign_in().outcome is Outcome.DONE
            started = time.monotonic()
            res = term.sale(1000, PAN, EXPIRY, PIN)
            took_s = time.monotonic() - started
            assert res.approved, res.text
            assert took_s < 8.0, took_s  # the sale's own exchange plus at most the short upload timeout
            assert term.uploader is not None and not term.uploader.due()
    assert entries(store) == {}


def test_a_replayed_or_older_upload_changes_nothing(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    recorder = Recorder()
    with make_terminal(tmp_path / "pos", proxy.address, web.url) as term:
        res = term.sale(1250, PAN, EXPIRY, PIN)
        assert res.approved
        with httpx.Client(transport=recorder, trust_env=False) as client:
            uploader = JournalUploader(
                term.journal, tid=TID, tmk=TMK, base_url=web.url, timeout_s=5.0, clock=SystemClock(),
                client=client,
            )  # fmt: skip
            uploader.reset()
            assert uploader.upload(budget_s=10).failed is None
        first = recorder.bodies[0]
        assert term.void(res.trace or "").approved
    sale_key = key(res)
    before_entries, before_status = entries(store), status_row(store)
    assert before_entries[sale_key]["state"] == "voided"
    # the recorded upload again, as it was signed: accepted, nothing changes
    answer = post(web.url, first)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 0 and answer.json()["unchanged"] == 1
    # an older revision, freshly signed (a delayed upload): nothing changes either
    doc = json.loads(first)
    doc["entries"][0]["updated_at"] = "2020-01-01T00:00:00.000000Z"
    doc["entries"][0]["created_at"] = "2020-01-01T00:00:00.000000Z"
    doc["status"]["reported_at"] = "2020-01-01T00:00:00.000000Z"
    doc["status"]["batch"] = "000999"
    older = post(web.url, json.dumps(doc).encode())
    assert older.status_code == 200 and older.json()["stored"] == 0
    assert entries(store) == before_entries
    assert status_row(store) == before_status


def good_entry(n: int, **over: Any) -> dict[str, Any]:
    at = "2026-12-01T06:00:00.000000Z"
    e: dict[str, Any] = {
        "entry_key": f"card:000001.{n:06d}", "rail": "card", "kind": "sale", "state": "approved",
        "batch": "000001", "stan": f"{n:06d}", "rrn": f"{n:012d}", "order_no": None,
        "original_key": None, "amount_minor": 100 * n, "currency": "156", "card_masked": MASKED,
        "response_code": "00", "receipt": "printed", "prints": 1, "contact": None, "note": None,
        "approved_at": at, "created_at": at, "updated_at": f"2026-12-01T06:00:0{n}.000000Z",
    }  # fmt: skip
    e.update(over)
    return e


def body_of(entries_: list[dict[str, Any]], **over: Any) -> bytes:
    status = {
        "batch": "000001", "signed_in": True, "signed_in_at": None, "pending_reversals": 0, "open_refunds": 0,
        "open_wallet_orders": 0, "receipts_owed": 0, "printer": "ok", "alerts": [], "closed_batches": [],
        "last_settlement": None, "reported_at": "2026-12-01T06:00:09.000000Z",
    }  # fmt: skip
    doc: dict[str, Any] = {"v": 1, "tid": TID, "entries": entries_, "status": status, "acks": []}
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"state": "paid"}, "entries.1.state"),
        ({"amount_minor": 12.5}, "entries.1.amount_minor"),
        ({"updated_at": "yesterday"}, "entries.1.updated_at"),
        ({"entry_key": "wallet:2"}, "entries.1.rail"),
        ({"batch": "1"}, "entries.1.batch"),
        ({"extra": 1}, "entries.1.extra"),
    ],
)
def test_one_bad_entry_refuses_the_whole_delivery(
    web: Web, store: HostStore, bad: dict[str, Any], field: str
) -> None:
    answer = post(web.url, body_of([good_entry(1), good_entry(2, **bad), good_entry(3)]))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert entries(store) == {} and status_row(store) is None  # nothing stored, not even the good ones
    fine = post(web.url, body_of([good_entry(1), good_entry(2), good_entry(3)]))
    assert fine.status_code == 200 and fine.json()["stored"] == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"card_masked": PAN},
        {"note": f"card {PAN} declined"},
        {"note": "6222 0212 3456 7890 123"},
        {"response_code": PAN},
    ],
)
def test_a_full_card_number_is_refused(web: Web, store: HostStore, bad: dict[str, Any]) -> None:
    answer = post(web.url, body_of([good_entry(1, **bad)]))
    assert answer.status_code == 422, answer.text
    assert PAN not in answer.text
    assert entries(store) == {}


def test_a_fact_signature_or_another_terminal_is_refused(web: Web, store: HostStore) -> None:
    body = body_of([good_entry(1)])
    assert post(web.url, body, prefix=b"tillroll-fact-v1\n").status_code == 401  # a fact's signature
    other = body.replace(TID.encode(), b"10000002")
    assert post(web.url, other, to="10000002").status_code == 401  # signed by TID, sent as another
    assert post(web.url, body, to="99999999").status_code == 401  # an unknown terminal looks the same
    assert post(web.url, body).status_code == 200
    assert set(entries(store)) == {"card:000001.000001"}


def add_command(store: HostStore, command: str, reference: str | None, tid: str = TID) -> int:
    now = SystemClock().now()
    with store.engine.begin() as conn:
        return int(
            conn.execute(
                insert(terminal_commands)
                .values(tid=tid, command=command, reference=reference, state="pending", requested_by="auto",
                        created_at=now, updated_at=now)
                .returning(terminal_commands.c.id)
            ).scalar_one()
        )  # fmt: skip


def commands(store: HostStore) -> dict[int, dict[str, Any]]:
    with store.engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(select(terminal_commands)).mappings()}


def test_commands_are_handed_over_run_and_acknowledged(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    with (
        PrinterEmulator() as printer,
        make_terminal(tmp_path / "pos", proxy.address, web.url, printer_url=printer.url) as term,
    ):
        sale = term.sale(1250, PAN, EXPIRY, PIN)
        assert sale.approved and sale.rrn is not None and sale.txn_id is not None
        printed = len(printer.documents())
        host_date = term.journal.get(sale.txn_id).host_date or ""
        proxy.inject(Fault.DROP_RESPONSE, count=-1)  # the refund's answers are lost: unknown
        refund = term.refund(500, sale.rrn, host_date)
        assert refund.outcome is Outcome.REFUND_UNKNOWN
        proxy.clear()
        reprint = add_command(store, "reprint", f"{sale.batch}.{sale.trace}")
        missing = add_command(store, "reprint", f"{sale.batch}.999999")
        other = add_command(store, "retry_refunds", f"{sale.batch}.999998")  # nothing open there
        retry = add_command(store, "retry_refunds", f"{refund.batch}.{refund.trace}")  # recon's form
        done = term.upload_journal()
        assert done is not None and done.failed is None and done.commands_run == 4, done
        reprinted = [d for d in printer.documents()[printed:] if "重打印 REPRINT" in d]
        assert len(reprinted) == 2  # the merchant's and the cardholder's copy, marked REPRINT
        assert [e.state for e in term.open_refunds()] == []
        # handed over again (as if our answer was lost): not run again, only reported again
        assert term.upload_journal() is not None
        assert term.uploader is not None
        assert [c["state"] for c in term.uploader.commands()] == ["done", "done", "failed", "done"]
    got = commands(store)
    assert got[reprint]["state"] == "done" and "reprint" in (got[reprint]["outcome"] or "")
    assert got[missing]["state"] == "failed" and "999999" in (got[missing]["outcome"] or "")
    assert got[retry]["state"] == "done" and "1 refund(s) finished" in (got[retry]["outcome"] or "")
    assert got[other]["state"] == "done" and "no open refund" in (got[other]["outcome"] or "")
    copy = entries(store)
    assert copy[key(sale)]["prints"] == 2  # the reprint's change went up in the same round
    assert copy[key(refund)]["state"] == RefundState.APPROVED.value
    with store.engine.connect() as conn:
        audited = conn.execute(
            select(audit_log.c.action, audit_log.c.target, audit_log.c.actor).order_by(audit_log.c.id)
        ).all()
    assert [(a.action, a.target) for a in audited] == [
        ("terminal_command.done", f"terminal_command:{reprint}"),
        ("terminal_command.failed", f"terminal_command:{missing}"),
        ("terminal_command.done", f"terminal_command:{other}"),
        ("terminal_command.done", f"terminal_command:{retry}"),
    ]
    assert {a.actor for a in audited} == {f"terminal:{TID}"}


def test_an_acknowledgement_of_another_terminals_command_refuses_the_upload(
    web: Web, store: HostStore
) -> None:
    theirs = add_command(store, "reprint", "000001.000001", tid="10000002")
    body = body_of([good_entry(1)], acks=[{"id": theirs, "state": "done", "outcome": "ok"}])
    answer = post(web.url, body)
    assert answer.status_code == 422 and answer.json()["field"] == f"acks.{theirs}"
    assert entries(store) == {} and commands(store)[theirs]["state"] == "pending"
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == 0


def saved_terminal(data_dir: Path, proxy: FaultProxy, web: Web, **kw: Any) -> None:
    config = TerminalConfig(
        tid=TID, mid=MID, tmk=TMK, host=HostAddress(*proxy.address), merchant_name="一号便利店",
        response_timeout_s=2.0, connect_timeout_s=1.0, backoffice_url=web.url, **kw,
    )  # fmt: skip
    save_config(data_dir, config)


def test_pos_run_uploads_on_its_turns_and_runs_the_commands(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    data_dir = tmp_path / "pos"
    with PrinterEmulator() as printer:
        saved_terminal(data_dir, proxy, web, printer_url=printer.url)
        web.stop()  # the sale's own upload fails: `pos run` sends it
        with Terminal.open(data_dir) as term:
            sale = term.sale(1250, PAN, EXPIRY, PIN)
            assert sale.approved
        web.start()
        command = add_command(store, "reprint", f"{sale.batch}.{sale.trace}")
        lines: queue.Queue[str] = queue.Queue()
        stop = threading.Event()
        resident = Resident(data_dir, stop=stop, out=lines.put)
        worker = threading.Thread(target=resident.run)
        worker.start()
        try:
            deadline = time.monotonic() + 20
            while True:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                if line.startswith("upload:") and "1 command(s) run" in line:
                    break
        finally:
            stop.set()
            worker.join(5)
        assert any("重打印 REPRINT" in d for d in printer.documents())
    assert key(sale) in entries(store)
    assert commands(store)[command]["state"] == "done"
    status = status_row(store)
    assert status is not None and status["printer"] == "ok"  # `pos run` asks the printer itself


def test_pos_upload_says_what_it_did(tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore) -> None:
    data_dir = tmp_path / "pos"
    saved_terminal(data_dir, proxy, web)
    web.stop()
    with Terminal.open(data_dir) as term:
        assert term.sale(1000, PAN, EXPIRY, PIN).approved
    runner = CliRunner()
    down = runner.invoke(pos_app, ["--dir", str(data_dir), "upload"])
    assert down.exit_code == 1 and "upload not finished" in down.output and "not reached" in down.output
    web.start()
    up = runner.invoke(pos_app, ["--dir", str(data_dir), "upload"])
    assert up.exit_code == 0, up.output
    assert "1 条流水已上送 / entries sent" in up.output
    everything = runner.invoke(pos_app, ["--dir", str(data_dir), "upload", "--all"])
    assert everything.exit_code == 0 and "1 条流水已上送" in everything.output
    assert len(entries(store)) == 1


def test_settlement_uploads_the_batch_in_its_final_state(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    with make_terminal(tmp_path / "pos", proxy.address, web.url) as term:
        web.stop()  # every upload of the day fails, and the backoff runs
        sales = [term.sale(amount, PAN, EXPIRY, PIN) for amount in (1000, 2000)]
        assert all(s.approved for s in sales)
        web.start()
        assert term.uploader is not None and not term.uploader.due()
        settled = term.settle()
        assert settled.outcome in (Outcome.SETTLED, Outcome.SETTLED_NOT_BALANCED), settled.text
        next_batch = term.batch
    got = entries(store)
    assert {got[key(s)]["state"] for s in sales} == {"approved"}
    status = status_row(store)
    assert status is not None and status["batch"] == next_batch != sales[0].batch
    last = json.loads(status["status"])["last_settlement"]
    assert last["batch"] == sales[0].batch and last["state"] in ("balanced", "uploaded")


def test_a_replaced_device_does_not_overwrite_its_predecessors_entries(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    with make_terminal(tmp_path / "old", proxy.address, web.url) as old:
        before = old.sale(1000, PAN, EXPIRY, PIN)
        assert before.approved
        assert (old.upload_journal() or UploadRound(0, 0, False, 0, "none")).failed is None  # surely up
    # The device dies; a new one (an empty journal, the same TID) takes over: the host closes the
    # lost batch at its sign-in and names the next (PROFILE §6). Its journal's rows start at 1 again.
    with make_terminal(tmp_path / "new", proxy.address, web.url) as new:
        after = new.sale(2000, PAN, EXPIRY, PIN)
        assert after.approved and after.txn_id == before.txn_id
        assert (new.upload_journal() or UploadRound(0, 0, False, 0, "none")).failed is None
    got = entries(store)
    assert key(before) != key(after)
    assert (got[key(before)]["amount_minor"], got[key(after)]["amount_minor"]) == (1000, 2000)


def test_long_notes_make_shorter_pages_never_a_refused_upload(
    tmp_path: Path, web: Web, store: HostStore
) -> None:
    journal = Journal(tmp_path / "journal.db", KeyStore(os.urandom(32)))
    start = SystemClock().now() - timedelta(minutes=10)
    note = "主机无应答冲正待发送" * 30  # 300 characters, 900 bytes: 50 such entries exceed 64 KiB
    with journal.begin() as conn:
        for n in range(1, 121):
            at = start + timedelta(milliseconds=n)
            conn.execute(
                insert(txns).values(
                    kind="sale", state="unknown", stan=f"{n:06d}", batch="000001", mti="0200",
                    request=json.dumps({"49": "156"}), pan_masked=MASKED, entry_mode="021",
                    amount_minor=100 * n, operator="001", created_at=at, updated_at=at,
                    receipt="none", prints=0, note=note[:300],
                )
            )  # fmt: skip
    recorder = Recorder()
    with httpx.Client(transport=recorder, trust_env=False) as client:
        uploader = JournalUploader(
            journal, tid=TID, tmk=TMK, base_url=web.url, timeout_s=5.0, clock=SystemClock(), client=client
        )
        done = uploader.upload(budget_s=30)
    journal.close()
    assert done.failed is None and done.caught_up and done.entries == 120, done
    assert len(recorder.bodies) > -(-120 // ENTRIES_MAX)  # more requests than full pages would need
    assert max(len(b) for b in recorder.bodies) <= WebConfig().body_max_bytes
    got = entries(store)
    assert len(got) == 120 and got["card:000001.000120"]["note"] == note[:300]


def test_wallet_payments_and_refunds_go_up_with_masked_codes(
    tmp_path: Path, web: Web, store: HostStore
) -> None:
    from walletserver import MCH_ID, MCH_KEY, MCH_NAME, wallet_server

    from tillroll.terminal.wallet_config import WalletSettings
    from tillroll.wallet.admin import add_merchant as add_wallet_merchant
    from tillroll.wallet.admin import add_user, issue_code
    from tillroll.wallet.config import WalletConfig

    provider = WalletConfig(refund_settle_s=0.2, sweep_interval_s=0.05)
    with wallet_server(f"sqlite:///{tmp_path / 'wallet.db'}", provider) as wallet:
        add_wallet_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(wallet.engine, "alice", 100_00)
        code = issue_code(wallet.engine, "alice")
        settings = WalletSettings(url=wallet.base_url, merchant=MCH_ID, key=MCH_KEY, response_timeout_s=2.0)
        config = TerminalConfig(
            tid=TID, mid=MID, tmk=TMK, host=HostAddress("127.0.0.1", 9), merchant_name=MCH_NAME,
            wallet=settings, backoffice_url=web.url,
        )  # fmt: skip
        with Terminal(config, tmp_path / "pos") as term:
            paid = term.qr(3000, code, contact="li.lei@example.com")
            assert paid.outcome is Outcome.APPROVED and paid.order_no is not None, paid.text
            refund = term.refund_order(1000, paid.order_no)
            [row] = term.wallet_refund_list()
            assert (term.upload_journal() or UploadRound(0, 0, False, 0, "none")).failed is None
    got = entries(store)
    order = got[f"wallet:{paid.order_no}"]
    assert (order["rail"], order["kind"], order["state"], order["amount_minor"]) == (
        "wallet",
        "qr_pay",
        "success",
        3000,
    )
    assert (
        order["order_no"] == paid.order_no
        and order["card_masked"] == code[:6] + "*" * (len(code) - 10) + code[-4:]
    )
    back = got[f"wallet_refund:{row.out_refund_no}"]
    assert (back["kind"], back["original_key"], back["amount_minor"]) == (
        "qr_refund",
        f"wallet:{paid.order_no}",
        1000,
    )
    assert back["state"] == row.state.value, refund.text
    assert code not in json.dumps(list(got.values()), default=str)
