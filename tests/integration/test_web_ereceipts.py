"""E-receipts end to end: a real terminal, the real acquirer host and the real web app over HTTP.

The terminal announces its facts in its journal; its relay delivers them to `tillroll web`
(uvicorn on 127.0.0.1, a free port), which stores them and fans them out; the link on the slip and
in the message opens the receipt, as HTML and as PDF, with the journal's amount, merchant and time.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest
from hostwire import host_store
from sqlalchemy import func, select
from webstack import Web

from tillroll.clock import Clock, FakeClock, SystemClock, to_merchant_local
from tillroll.crypto.backoffice import SIGNATURE_HEADER, backoffice_key, sign_fact
from tillroll.host import HostServer
from tillroll.host.store import HostStore
from tillroll.money import format_yuan
from tillroll.notify.endpoints import add_endpoint
from tillroll.notify.outbox import Channel, MessageKind, MessageState
from tillroll.notify.relay import Relay
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.sim.printer_emulator import PrinterEmulator, PrinterState
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import backoffice_facts, e_receipts
from tillroll.store.tables import outbox as outbox_tables
from tillroll.terminal import HostAddress, Outcome, ReceiptState, Terminal, TerminalConfig, TxnKind
from tillroll.terminal.backoffice import fact_body
from tillroll.terminal.journal import outbox

MID = "898310048990001"
TID = "10000001"
TMK = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
PAN = "6222021234567890123"
EXPIRY = "3012"
PIN = "123456"
CONTACT = "li.lei@example.com"
SHOP = "owner@shop.example.com"
MERCHANT = "一号便利店"
RELAY_BOUND_S = 2.0


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
    data_dir: Path,
    address: tuple[str, int],
    web_url: str,
    printer_url: str | None,
    clock: Clock | None = None,
) -> Terminal:
    config = TerminalConfig(
        tid=TID,
        mid=MID,
        tmk=TMK,
        host=HostAddress(*address),
        merchant_name=MERCHANT,
        response_timeout_s=2.0,  # a lost answer is not what most of these test: room for a loaded machine
        connect_timeout_s=1.0,
        printer_url=printer_url,
        backoffice_url=web_url,
    )
    return Terminal(config, data_dir, clock=clock)


@dataclass(frozen=True)
class Told:
    """One message the back office's outbox holds for someone (what fan-out made of a fact)."""

    kind: str
    channel: str
    recipient: str
    text: str


def told(store: HostStore) -> list[Told]:
    m = outbox_tables.messages
    with store.engine.connect() as conn:
        rows = conn.execute(select(m).order_by(m.c.id)).all()
    return [Told(r.kind, r.channel, r.recipient, json.loads(r.payload).get("text", "")) for r in rows]


def fact_payloads(store: HostStore) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in facts_stored(store)]


def link_of(web: Web, fact: Mapping[str, Any]) -> str:
    return f"{web.url}/r/{fact['receipt_token']}"


def facts_stored(store: HostStore) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(backoffice_facts).order_by(backoffice_facts.c.id)).all())


def journal_outbox(term: Terminal) -> list[Any]:
    with term.journal.begin() as conn:
        return list(conn.execute(select(outbox.messages).order_by(outbox.messages.c.id)).all())


def test_a_jammed_printer_sends_the_e_receipt_at_once_and_its_link_opens_it(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    with store.engine.begin() as conn:  # the merchant is told by e-mail
        add_endpoint(
            conn, store.keystore, mid=MID, channel=Channel.EMAIL, address=SHOP, now=SystemClock().now()
        )
    with PrinterEmulator() as printer:
        printer.state = PrinterState.JAMMED
        with make_terminal(tmp_path / "pos", proxy.address, web.url, printer.url) as term:
            res = term.sale(1250, PAN, EXPIRY, PIN, notify=CONTACT)
            assert res.approved and res.receipt is ReceiptState.OWED
            started = time.monotonic()
            sent = term.send_facts()  # what `pos sale` does right after the sale
            took_s = time.monotonic() - started
            # the e-receipt, and the merchant's printer-fault alert
            assert sent is not None and (sent.delivered, sent.pending) == (2, 0)
            assert took_s < RELAY_BOUND_S
            (entry,) = [e for e in term.entries() if e.kind is TxnKind.SALE]
            assert entry.approved_at is not None
            printer.state = PrinterState.READY
            assert term.reprint().outcome is Outcome.DONE
            slip_docs = printer.documents()
    row, alert = facts_stored(store)
    assert (row.kind, row.recipient, row.tid) == ("e_receipt", CONTACT, TID)
    assert (alert.kind, alert.recipient) == ("merchant_alert", "merchant")
    assert json.loads(alert.payload)["alert"] == "printer_fault" and json.loads(alert.payload)["count"] == 1
    fact = json.loads(row.payload)
    url = link_of(web, fact)
    # The back office's outbox holds the customer's e-mail, with the link, and the merchant's
    # alert; they are delivered over SMTP by the notifications' relay.
    mail, shop_mail = told(store)
    assert (mail.kind, mail.channel, mail.recipient) == ("e_receipt", "email", CONTACT)
    assert url in mail.text and "12.50" in mail.text and MERCHANT in mail.text
    assert (shop_mail.kind, shop_mail.recipient) == (
        "merchant_alert",
        SHOP,
    ) and "pos reprint" in shop_mail.text
    with SmtpSink() as sink:
        sender = SmtpSender(SmtpConfig("127.0.0.1", sink.port, timeout_s=5.0))
        try:
            report = Relay(
                store.engine, outbox_tables, {Channel.EMAIL: sender}, clock=SystemClock()
            ).run_once()
        finally:
            sender.close()
        assert report.delivered == 2
        received = next(m for m in sink.messages if m.rcpt_tos == (CONTACT,))
    assert url in received.text
    # ... and the self-service page, for "charged but no receipt" / "my refund has not arrived".
    assert f"{web.url}/console/help" in received.text and "refund not arrived" in received.text
    # The reprinted slip's QR code is the same link.
    assert all(f"[QR] {url}" in doc for doc in slip_docs)
    local = to_merchant_local(entry.approved_at, term.config.zone)
    when = local.strftime("%Y/%m/%d %H:%M:%S")
    assert fact["amount_minor"] == 1250 and fact["merchant_name"] == MERCHANT
    assert fact["at_local"] == local.replace(microsecond=0).isoformat()
    page = httpx.get(url, timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert f"RMB {format_yuan(1250)}" in html and MERCHANT in html and when in html
    assert "622202*********0123" in html and PAN not in html
    pdf = httpx.get(url + ".pdf", timeout=5)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    text = pypdf.PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    assert "RMB 12.50" in text and MERCHANT in text and when in text and "持卡人存根" in text
    assert httpx.get(url, params={"format": "pdf"}, timeout=5).content == pdf.content


def test_the_back_office_down_keeps_the_facts_and_sends_each_once_when_it_is_back(
    tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    web = Web(store)  # not started: the back office is down
    clock = FakeClock(SystemClock().now())
    with make_terminal(tmp_path / "pos", proxy.address, web.url, None, clock=clock) as term:
        for amount in (100, 200, 300):
            assert term.sale(amount, PAN, EXPIRY, PIN, notify="13800138000").approved
            down = term.send_facts()
            assert down is not None and down.delivered == 0 and down.pending >= 1
        assert [r.state for r in journal_outbox(term)] == [MessageState.PENDING.value] * 3
        web.start()
        clock.advance(60)  # past the relay's first retry wait
        try:
            up = term.send_facts()
            assert up is not None and (up.delivered, up.pending) == (3, 0)
            again = term.send_facts()
            assert again is not None and again.delivered == 0
            # a delivery repeated after a lost acknowledgement is stored once and answered 200
            row = journal_outbox(term)[0]
            body = fact_body_of(row)
            answer = post_fact(web.url, body)
            assert answer.status_code == 200 and answer.json() == {
                "message_id": row.message_id,
                "status": "accepted",
            }
        finally:
            web.stop()
    stored = facts_stored(store)
    assert sorted(json.loads(r.payload)["amount_minor"] for r in stored) == [100, 200, 300]
    assert [(t.channel, t.recipient) for t in told(store)] == [("sms", "+8613800138000")] * 3
    assert {r.recipient for r in stored} == {"+8613800138000"}


def fact_body_of(row: Any) -> bytes:
    from tillroll.notify.outbox import Channel, StoredMessage

    return fact_body(
        StoredMessage(
            message_id=row.message_id,
            kind=MessageKind(row.kind),
            channel=Channel(row.channel),
            recipient=row.recipient,
            payload=json.loads(row.payload),
            attempt=1,
            created_at=row.created_at,
        )
    )


def post_fact(base: str, body: bytes, *, key: bytes | None = None, tid: str = TID) -> httpx.Response:
    signature = sign_fact(key or backoffice_key(TMK), tid, body)
    return httpx.post(
        f"{base}/api/v1/terminals/{tid}/facts",
        content=body,
        headers={SIGNATURE_HEADER: signature, "Content-Type": "application/json"},
        timeout=5,
    )


def test_the_intake_refuses_bad_signatures_and_bad_facts_and_keeps_the_good(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    web_down = "http://127.0.0.1:9"  # the terminal keeps its facts; the test delivers them by hand
    with make_terminal(tmp_path / "pos", proxy.address, web_down, None) as term:
        for amount in (111, 222):
            assert term.sale(amount, PAN, EXPIRY, PIN, notify=CONTACT).approved
        good = [fact_body_of(r) for r in journal_outbox(term)]
    # wrong key, wrong terminal in the path, no signature at all: 401, nothing stored
    assert post_fact(web.url, good[0], key=backoffice_key(bytes(16))).status_code == 401
    assert post_fact(web.url, good[0], tid="10000002").status_code == 401
    unsigned = httpx.post(f"{web.url}/api/v1/terminals/{TID}/facts", content=good[0], timeout=5)
    assert unsigned.status_code == 401 and unsigned.json()["error"] == "bad_signature"
    assert facts_stored(store) == []
    # bad facts among good ones (each correctly signed): the good are stored, the bad refused
    doc = json.loads(good[1])
    with_pan = json.loads(good[1])
    with_pan["payload"]["merchant_name"] = f"{MERCHANT} {PAN}"
    float_amount = json.loads(good[1])
    float_amount["payload"]["amount_minor"] = 2.22
    wrong_id = dict(doc, message_id="e_receipt:10000001:999999.999999")
    bad = [json.dumps(d, ensure_ascii=False).encode() for d in (with_pan, float_amount, wrong_id)]
    bad += [b"{not json", b"[]", json.dumps(dict(doc, extra=1)).encode()]
    answers = [post_fact(web.url, body) for body in [good[0], *bad, good[1], good[0]]]
    codes = [a.status_code for a in answers]
    assert codes == [200, 422, 422, 422, 400, 422, 422, 200, 200], [a.text for a in answers]
    assert answers[1].json()["field"] == "merchant_name"
    assert all("error" in a.json() and "detail" in a.json() for a in answers[1:7])
    stored = facts_stored(store)
    assert [json.loads(r.payload)["amount_minor"] for r in stored] == [111, 222]
    assert [(t.kind, t.recipient) for t in told(store)] == [("e_receipt", CONTACT)] * 2
    # the same message id with other content is a conflict, not an overwrite
    changed = json.loads(good[0])
    changed["recipient"] = "+8613800138000"
    assert post_fact(web.url, json.dumps(changed).encode()).status_code == 409
    # a body over the limit is refused unread
    assert post_fact(web.url, b" " * (web.config.body_max_bytes + 1)).status_code == 413
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(e_receipts)).scalar_one() == 2


def test_links_that_are_wrong_altered_or_not_arrived_get_a_clear_page(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    with make_terminal(tmp_path / "pos", proxy.address, web.url, None) as term:
        assert term.sale(500, PAN, EXPIRY, PIN).approved
        (entry,) = [e for e in term.entries() if e.kind is TxnKind.SALE]
        url = term.receipts.receipt_url(entry)
        assert url is not None
        early = httpx.get(url, timeout=5)  # not delivered yet
        assert early.status_code == 404 and "尚未送达" in early.text and "not here yet" in early.text
        assert term.send_facts() is not None
    assert httpx.get(url, timeout=5).status_code == 200
    token = url.rsplit("/", 1)[1]
    altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for bad in (altered, "nonsense", "x" * 500, token.replace(".", ""), "%00"):
        page = httpx.get(f"{web.url}/r/{bad}", timeout=5)
        assert page.status_code == 404, bad
        assert "链接无效" in page.text and "not valid" in page.text and "Traceback" not in page.text
        assert page.headers["x-content-type-options"] == "nosniff"
    missing = httpx.get(f"{web.url}/nowhere", timeout=5)
    assert missing.status_code == 404 and "Page not found" in missing.text


def test_a_reversed_sale_tells_the_customer_it_was_cancelled(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    with make_terminal(tmp_path / "pos", proxy.address, web.url, None) as term:
        assert term.sign_in().outcome is Outcome.DONE
        proxy.inject(Fault.DROP_RESPONSE)
        res = term.sale(1250, PAN, EXPIRY, PIN, notify=CONTACT)
        assert res.outcome is Outcome.REVERSED
        term.send_facts()
    (row,) = facts_stored(store)
    fact = json.loads(row.payload)
    assert (row.kind, row.recipient, fact["reason"]) == ("payment_cancelled", CONTACT, "reversed")
    assert fact["amount_minor"] == 1250 and "receipt_token" not in fact
    (mail,) = told(store)
    assert (mail.kind, mail.recipient) == ("payment_cancelled", CONTACT) and "12.50" in mail.text


def test_an_approved_refund_is_announced_with_its_own_receipt(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore
) -> None:
    with make_terminal(tmp_path / "pos", proxy.address, web.url, None) as term:
        sale = term.sale(1000, PAN, EXPIRY, PIN)
        assert sale.approved and sale.rrn
        (entry,) = [e for e in term.entries() if e.kind is TxnKind.SALE]
        refund = term.refund(400, sale.rrn, entry.host_date or "", notify="+86 138 0013 8000")
        assert refund.approved, refund.text
        term.send_facts()
    kinds = [(r.kind, r.recipient) for r in facts_stored(store)]
    assert kinds == [("e_receipt", "merchant"), ("refund_approved", "+8613800138000")]
    refund_fact = fact_payloads(store)[1]
    assert refund_fact["amount_minor"] == 400 and refund_fact["trans_type"] == "REFUND"
    (sms,) = told(store)  # the merchant has no endpoint: only the customer is told
    assert (sms.kind, sms.channel, sms.recipient) == ("refund_approved", "sms", "+8613800138000")
    assert "4.00" in sms.text
    page = httpx.get(link_of(web, refund_fact), timeout=5)
    assert page.status_code == 200 and "RMB -4.00" in page.text


def test_no_full_card_number_in_the_back_office_tables_or_the_log(
    tmp_path: Path, proxy: FaultProxy, web: Web, store: HostStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with PrinterEmulator() as printer:
        printer.state = PrinterState.PAPER_OUT
        with make_terminal(tmp_path / "pos", proxy.address, web.url, printer.url) as term:
            assert term.sale(1250, PAN, EXPIRY, PIN, notify=CONTACT).approved
            term.send_facts()
            bad = fact_body_of(journal_outbox(term)[0]).replace(b"622202*********0123", PAN.encode())
    assert post_fact(web.url, bad).status_code == 422
    with store.engine.connect() as conn:
        for table in (backoffice_facts, e_receipts):
            for row in conn.execute(select(table)).all():
                assert PAN not in json.dumps([str(v) for v in row], ensure_ascii=False)
    assert PAN not in caplog.text


def test_pos_sale_with_notify_on_the_command_line_delivers_before_it_returns(
    tmp_path: Path, host: HostServer, web: Web, store: HostStore
) -> None:
    from typer.testing import CliRunner

    from tillroll.terminal.cli import app

    runner, base = CliRunner(), ["--dir", str(tmp_path / "pos")]

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, [*base, *args], env={"COLUMNS": "200"})
        return result.exit_code, result.output

    address = "{}:{}".format(*host.address)
    code, out = run(
        "init", "--tid", TID, "--mid", MID, "--tmk", TMK.hex(), "--host", address, "--backoffice", web.url
    )
    assert code == 0, out
    code, out = run(
        "init", "--tid", TID, "--mid", MID, "--tmk", TMK.hex(), "--host", address, "--backoffice", "ftp://x"
    )
    assert code == 2 and "http://HOST:PORT" in out
    code, out = run("sale", "12.50", "--card", PAN, "--expiry", EXPIRY, "--notify", "not a contact")
    assert code == 2 and "--notify" in out
    assert facts_stored(store) == []
    started = time.monotonic()
    code, out = run("sale", "12.50", "--card", PAN, "--expiry", EXPIRY, "--notify", "13800138000")
    assert code == 0, out
    assert time.monotonic() - started < 10
    link = re.search(r"E-RECEIPT LINK (\S+)", out)
    assert link is not None
    (row,) = facts_stored(store)  # delivered by the command itself, before it returned
    assert (row.kind, row.recipient) == ("e_receipt", "+8613800138000")
    assert link_of(web, json.loads(row.payload)) == link.group(1)
    assert httpx.get(link.group(1), timeout=5).status_code == 200


def wait_for(cond: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    tick = threading.Event()
    while time.monotonic() < deadline:
        if cond():
            return True
        tick.wait(0.05)
    return bool(cond())


def test_pos_run_relays_by_itself_and_a_reversal_it_finishes_reaches_the_customer(
    tmp_path: Path, proxy: FaultProxy, store: HostStore
) -> None:
    from tillroll.terminal.config import save_config
    from tillroll.terminal.resident import Resident

    data_dir = tmp_path / "pos"
    web = Web(store)  # down for now
    config = TerminalConfig(
        tid=TID,
        mid=MID,
        tmk=TMK,
        host=HostAddress(*proxy.address),
        merchant_name=MERCHANT,
        response_timeout_s=2.0,  # a lost answer is not what most of these test: room for a loaded machine
        connect_timeout_s=1.0,
        retry_backoff_s=0.2,
        retry_backoff_cap_s=1.0,
        retry_wait_total_s=0.5,
        reversal_alert_s=1.0,
        backoffice_url=web.url,
    )
    save_config(data_dir, config)
    with Terminal.open(data_dir) as term:
        assert term.sale(300, PAN, EXPIRY, PIN, notify=CONTACT).approved
        # a second sale loses its answer and then the line: its reversal stays pending
        proxy.inject(Fault.DROP_RESPONSE)
        dropped = threading.Event()

        def line_dies() -> None:
            wait_for(lambda: any(e.fault is Fault.DROP_RESPONSE for e in proxy.events), 5.0)
            proxy.down(close_existing=True)
            dropped.set()

        killer = threading.Thread(target=line_dies)
        killer.start()
        res = term.sale(1250, PAN, EXPIRY, PIN, notify=CONTACT)
        killer.join(5.0)
        assert dropped.is_set() and res.outcome is Outcome.REVERSAL_PENDING, res
        assert [r.kind for r in journal_outbox(term)] == ["e_receipt"]  # nothing from an unknown outcome
    lines: list[str] = []
    stop = threading.Event()
    loop = threading.Thread(target=Resident(data_dir, stop=stop, out=lines.append).run)
    loop.start()
    try:
        # the reversal waits past its deadline first: the merchant is alerted (pos run's alert)
        assert wait_for(lambda: any(line.startswith("alert:") for line in lines), 15.0), lines
        proxy.up()
        web.start()
        # (a fact that failed twice while the back office was down waits up to ~36 s: the schedule)
        assert wait_for(lambda: len(facts_stored(store)) == 3, 45.0), lines
    finally:
        stop.set()
        loop.join(5.0)
        web.stop()
    assert not loop.is_alive()
    # (arrival order follows the relay's retry schedule, not the order of the facts)
    facts = sorted(facts_stored(store), key=lambda r: r.kind)
    assert [(r.kind, json.loads(r.payload)["amount_minor"], r.recipient) for r in facts] == [
        ("e_receipt", 300, CONTACT),
        ("merchant_alert", 1250, "merchant"),
        ("payment_cancelled", 1250, CONTACT),
    ]
    assert json.loads(facts[1].payload)["alert"] == "reversal_overdue"
    assert sorted((t.kind, t.recipient) for t in told(store)) == [
        ("e_receipt", CONTACT),
        ("payment_cancelled", CONTACT),
    ]
