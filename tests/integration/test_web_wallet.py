"""Wallet payments' facts at the back office: a real wallet service, a real terminal paying with a
payment code, the real web app. The e-mail carries the link; the link opens the QR PAY receipt."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest
from sqlalchemy import select
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, wallet_server

from tillroll.host.admin import add_merchant as add_acquirer_merchant
from tillroll.host.admin import add_terminal
from tillroll.host.store import HostStore, open_store
from tillroll.store.tables import backoffice_facts
from tillroll.store.tables import outbox as bo_outbox
from tillroll.terminal import HostAddress, Outcome, Terminal, TerminalConfig
from tillroll.terminal.printer import MemoryPrinter
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.wallet.admin import add_merchant, add_user, issue_code
from tillroll.wallet.config import WalletConfig
from tillroll.web import WebConfig, WebServer, create_app

TID = "10000001"
MID = "898310048990001"
TMK = bytes.fromhex("C1D0F8FB4958670DBA40AB1F3752EF0D")
CONTACT = "han.meimei@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostStore]:
    monkeypatch.setenv("TILLROLL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    s = open_store(f"sqlite:///{tmp_path / 'backoffice.db'}")
    add_acquirer_merchant(s, MID, MCH_NAME)
    add_terminal(s, TID, MID, TMK)
    yield s
    s.engine.dispose()


def stored(store: HostStore) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(backoffice_facts).order_by(backoffice_facts.c.id)).all())


def told(store: HostStore) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(bo_outbox.messages).order_by(bo_outbox.messages.c.id)).all())


def test_a_wallet_payment_and_its_refund_reach_the_customer_with_a_receipt_link(
    db_url: str, tmp_path: Path, store: HostStore
) -> None:
    port = free_port()
    config = WebConfig(port=port)
    with (
        wallet_server(db_url, WalletConfig(refund_settle_s=0.2, sweep_interval_s=0.05)) as wallet,
        WebServer(create_app(config, store), port=port),
    ):
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(wallet.engine, "alice", 100_00)
        code = issue_code(wallet.engine, "alice")
        settings = WalletSettings(
            url=wallet.base_url,
            merchant=MCH_ID,
            key=MCH_KEY,
            query_interval_s=0.2,
            query_window_s=1.0,
            response_timeout_s=2.0,
            connect_timeout_s=1.0,
        )
        term_config = TerminalConfig(
            tid=TID,
            mid=MID,
            tmk=TMK,
            host=HostAddress("127.0.0.1", 9),
            merchant_name=MCH_NAME,
            wallet=settings,
            backoffice_url=config.base_url,
        )
        printer = MemoryPrinter()
        with Terminal(term_config, tmp_path / "pos", printer=printer) as term:
            paid = term.qr(1250, code, CONTACT)
            assert paid.outcome is Outcome.APPROVED, paid.text
            sent = term.send_facts()
            assert sent is not None and (sent.delivered, sent.dead, sent.pending) == (1, 0, 0)
            assert paid.order_no is not None
            refund = term.refund_order(500, paid.order_no, "13800138000")
            assert refund.outcome is Outcome.APPROVED, refund.text
            again = term.send_facts()
            assert again is not None and (again.delivered, again.dead) == (1, 0)
        rows = stored(store)
        assert [(r.kind, r.recipient) for r in rows] == [
            ("e_receipt", CONTACT),
            ("refund_approved", "+8613800138000"),
        ]
        messages = told(store)
        assert [(m.kind, m.channel, m.recipient) for m in messages] == [
            ("e_receipt", "email", CONTACT),
            ("refund_approved", "sms", "+8613800138000"),
        ]
        text = json.loads(messages[0].payload)["text"]
        link = next(word for word in text.split() if word.startswith(f"{config.base_url}/r/"))
        link = link.rstrip("。.")
        # the slip printed at the counter carries the same link as a QR code
        assert printer.printed[0].slip.e_receipt_url == link
        page = httpx.get(link, timeout=5)
        assert page.status_code == 200, page.text
        assert "扫码支付 QR PAY" in page.text and "RMB 12.50" in page.text and MCH_NAME in page.text
        assert code not in page.text  # the payment code only masked
        pdf = httpx.get(link + ".pdf", timeout=5)
        pdf_text = pypdf.PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
        assert "RMB 12.50" in pdf_text and "扫码支付" in pdf_text
        for r in rows:
            assert code not in r.payload
