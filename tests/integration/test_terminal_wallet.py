"""The terminal's wallet rail against the real wallet provider (`tillroll wallet serve`'s app, uvicorn
on 127.0.0.1) over HTTP, on SQLite and PostgreSQL. After each scenario the wallet's balances and
takings are checked against the terminal's journal: every order SUCCESS is charged once and
receipted once, every other order left the customer's money where it was, every refund approved
in the journal is the money the wallet moved back, and the customer was told what the journal says.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, WalletServer, wallet_server

from tillroll.terminal import HostAddress, Outcome, Terminal, TerminalConfig
from tillroll.terminal.config import save_config
from tillroll.terminal.journal import outbox
from tillroll.terminal.printer import MemoryPrinter
from tillroll.terminal.resident import Resident
from tillroll.terminal.states import ReceiptState, RefundState
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.terminal.wallet_gateway import HttpWalletGateway
from tillroll.terminal.wallet_states import WalletState
from tillroll.wallet.admin import add_merchant, add_user, balance_fen, issue_code, takings_fen, user_messages
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.tables import orders

TID = "10000001"
MID = "898310048990001"
TMK = bytes.fromhex("C1D0F8FB4958670DBA40AB1F3752EF0D")
START_FEN = 100_00
WAIT_S = 20.0  # every wait on a condition is bounded by this

# A short schedule: query every 0.2 s for 1 s; the wallet closes unconfirmed orders after 2.5 s.
PROVIDER = WalletConfig(userpaying_close_s=2.5, refund_settle_s=0.2, sweep_interval_s=0.05)


@dataclass
class Counter:
    server: WalletServer
    data_dir: Path
    printer: MemoryPrinter

    def settings(self, **changes: Any) -> WalletSettings:
        base: dict[str, Any] = {
            "url": self.server.base_url,
            "merchant": MCH_ID,
            "key": MCH_KEY,
            "query_interval_s": 0.2,
            "query_window_s": 1.0,
            "response_timeout_s": 2.0,
            "connect_timeout_s": 1.0,
        }
        base.update(changes)
        return WalletSettings(**base)

    def config(self, wallet: dict[str, Any] | None = None, **changes: Any) -> TerminalConfig:
        base: dict[str, Any] = {
            "tid": TID,
            "mid": MID,
            "tmk": TMK,
            "host": HostAddress("127.0.0.1", 9),  # no card host in these tests
            "merchant_name": MCH_NAME,
            "retry_backoff_s": 0.2,
            "retry_backoff_cap_s": 0.5,
            "wallet": self.settings(**(wallet or {})),
        }
        base.update(changes)
        return TerminalConfig(**base)

    def terminal(self, config: TerminalConfig | None = None, **kw: Any) -> Terminal:
        return Terminal(config or self.config(), self.data_dir, printer=self.printer, **kw)

    def user(self, name: str, behaviour: str = "ok", balance: int = START_FEN) -> str:
        add_user(self.server.engine, name, balance, behaviour=behaviour)
        return issue_code(self.server.engine, name)

    def balance(self, name: str) -> int:
        return balance_fen(self.server.engine, name)


@pytest.fixture
def counter(db_url: str, tmp_path: Path) -> Iterator[Counter]:
    with wallet_server(db_url, PROVIDER) as server:
        add_merchant(server.engine, MCH_ID, MCH_NAME, MCH_KEY)
        yield Counter(server, tmp_path / "pos", MemoryPrinter())


@pytest.fixture
def patient_counter(db_url: str, tmp_path: Path) -> Iterator[Counter]:
    """A wallet that closes an unconfirmed order only when the test says so (:func:`close_now`): a
    timed close raced the terminal's own query window and reverse try on a loaded machine."""
    with wallet_server(db_url, WalletConfig(userpaying_close_s=3600, sweep_interval_s=0.05)) as server:
        add_merchant(server.engine, MCH_ID, MCH_NAME, MCH_KEY)
        yield Counter(server, tmp_path / "pos", MemoryPrinter())


def close_now(counter: Counter, out_trade_no: str) -> None:
    """The customer never confirmed: the wallet's close of the order falls due now."""
    with counter.server.engine.begin() as conn:
        closed = conn.execute(
            orders.update()
            .where(orders.c.out_trade_no == out_trade_no, orders.c.close_at.is_not(None))
            .values(close_at=datetime(2000, 1, 1))
        )
    assert closed.rowcount == 1, out_trade_no


def announced(term: Terminal) -> list[dict[str, Any]]:
    with term.journal.begin() as conn:
        rows = conn.execute(select(outbox.messages).order_by(outbox.messages.c.id)).mappings().all()
    return [{"kind": r["kind"], "recipient": r["recipient"], **json.loads(r["payload"])} for r in rows]


def check_money(counter: Counter, term: Terminal, users: dict[str, str]) -> None:
    """The journal against the wallet: takings, each customer's balance, receipts, messages.
    ``users`` maps a user to the order number their payment got."""
    orders = {o.out_trade_no: o for o in term.wallet_orders()}
    refunds = term.wallet_refund_list()
    paid = sum(o.amount_minor for o in orders.values() if o.state is WalletState.SUCCESS)
    back = sum(r.amount_minor for r in refunds if r.state is RefundState.APPROVED)
    assert takings_fen(counter.server.engine, MCH_ID) == paid - back
    for name, order_no in users.items():
        order = orders[order_no]
        refunded = sum(
            r.amount_minor for r in refunds if r.order_id == order.id and r.state is RefundState.APPROVED
        )
        charged = order.amount_minor - refunded if order.state is WalletState.SUCCESS else 0
        assert counter.balance(name) == START_FEN - charged, (name, order.state)
    for order in orders.values():
        assert order.state not in (WalletState.CREATED, WalletState.UNKNOWN), order
        if order.state is WalletState.SUCCESS:
            assert order.receipt is not ReceiptState.NONE and order.prints <= 1
        else:
            assert order.receipt is ReceiptState.NONE
    cancelled = {m["order_no"] for m in announced(term) if m["kind"] == "payment_cancelled"}
    assert cancelled <= {n for n, o in orders.items() if o.state in (WalletState.CLOSED, WalletState.REVOKED)}


def test_success(counter: Counter) -> None:
    code = counter.user("alice")
    with counter.terminal() as term:
        r = term.qr(12_50, code, contact="13800138000")
        assert r.outcome is Outcome.APPROVED and r.order_no and r.receipt is ReceiptState.PRINTED, r.text
        assert counter.balance("alice") == START_FEN - 12_50
        assert any("付款12.50元" in m for m in user_messages(counter.server.engine, "alice"))
        slip = counter.printer.printed[0].slip
        assert "微信支付" in slip.issuer and code not in (slip.reference or "")
        (receipt,) = announced(term)
        assert receipt["kind"] == "e_receipt" and receipt["amount_minor"] == 12_50
        check_money(counter, term, {"alice": r.order_no})


def test_userpaying_resolved_by_polling(counter: Counter) -> None:
    code = counter.user("bob", "confirm:0.5")
    # A window far past the confirmation: a 1 s window lost to a 0.5 s confirm on a loaded CI
    # machine (reversed, WALLET_CANCELLED). Polling stops at the answer, so the test is no slower.
    with counter.terminal(counter.config(wallet={"query_window_s": 30.0})) as term:
        r = term.qr(8_00, code)
        assert r.outcome is Outcome.APPROVED, r.text
        assert r.order_no
        order = term.wallet_orders()[0]
        assert order.queries >= 1 and order.reverse_attempts == 0
        check_money(counter, term, {"bob": r.order_no})


def test_userpaying_never_resolving_is_reversed_and_the_customer_told_only_then(
    patient_counter: Counter,
) -> None:
    counter = patient_counter
    code = counter.user("carol", "never")
    # one reverse try per command: the wallet refuses it (USERPAYING) until it closes the order
    with counter.terminal(counter.config(reversal_retries_max=1)) as term:
        r = term.qr(6_00, code, contact="carol@example.com")
        assert r.outcome is Outcome.WALLET_PENDING, r.text
        assert announced(term) == []  # nothing told while the outcome is unknown
        assert term.wallet_orders()[0].state is WalletState.REVERSING
        assert r.order_no
    close_now(counter, r.order_no)
    with counter.terminal() as term:  # the next run: recover finishes it
        for _ in range(20):
            done = term.recover()
            if term.wallet_orders()[0].state is WalletState.REVOKED:
                break
        order = term.wallet_orders()[0]
        assert order.state is WalletState.REVOKED, done.text
        (told,) = announced(term)
        assert told["kind"] == "payment_cancelled" and told["recipient"] == "carol@example.com"
        assert told["amount_minor"] == 6_00 and told["card_masked"] == order.code_masked
        check_money(counter, term, {"carol": order.out_trade_no})


def test_systemerror_then_success_on_query_is_charged_once(counter: Counter) -> None:
    code = counter.user("dave", "error-once")
    # The query that finds the payment must not be cut off by the file's 1 s window under load.
    with counter.terminal(counter.config(wallet={"query_window_s": 30.0})) as term:
        r = term.qr(5_00, code)
        assert r.outcome is Outcome.APPROVED and r.order_no, r.text
        assert term.wallet_orders()[0].queries >= 1
        assert counter.balance("dave") == START_FEN - 5_00
        check_money(counter, term, {"dave": r.order_no})


def test_the_lost_response_of_pay_is_found_by_query_and_charged_once(counter: Counter) -> None:
    code = counter.user("erin", "slow:1.5")
    # The answer is lost (0.5 s) and the payment lands at 1.5 s: the queries must outlast it, on
    # a loaded machine too (with the file's 1 s window a CI run cancelled it: a timing, not a bug).
    config = counter.config(wallet={"response_timeout_s": 0.5, "query_window_s": 30.0})
    with counter.terminal(config) as term:
        r = term.qr(7_77, code)
        assert r.outcome is Outcome.APPROVED and r.order_no, r.text
        order = term.wallet_orders()[0]
        assert order.queries >= 1
        assert counter.balance("erin") == START_FEN - 7_77
        check_money(counter, term, {"erin": r.order_no})


def test_the_query_reverse_race_ends_revoked_and_refunded(counter: Counter) -> None:
    code = counter.user("fay", "confirm:1.2")  # just past the terminal's 1 s deadline
    with counter.terminal() as term:
        r = term.qr(19_99, code, contact="13900139000")
        assert r.outcome is Outcome.WALLET_CANCELLED, r.text
        order = term.wallet_orders()[0]
        assert order.state is WalletState.REVOKED
        assert counter.balance("fay") == START_FEN
        stream = user_messages(counter.server.engine, "fay")
        assert any("付款19.99元" in m for m in stream) and any("已撤销" in m for m in stream), stream
        assert [m["kind"] for m in announced(term)] == ["payment_cancelled"]
        check_money(counter, term, {"fay": order.out_trade_no})


def test_reverse_refused_while_userpaying_is_retried(counter: Counter) -> None:
    code = counter.user("gus", "confirm:2.2")  # confirmed 1.2 s after the terminal gave up
    with counter.terminal(counter.config(reversal_retries_max=10)) as term:
        r = term.qr(3_00, code)
        assert r.outcome is Outcome.WALLET_CANCELLED, r.text
        order = term.wallet_orders()[0]
        assert order.state is WalletState.REVOKED and order.reverse_attempts >= 2
        assert counter.balance("gus") == START_FEN
        check_money(counter, term, {"gus": order.out_trade_no})


def test_refunds_partial_repeated_and_over_the_limit(counter: Counter) -> None:
    code = counter.user("hal")
    with counter.terminal() as term:
        paid = term.qr(10_00, code)
        assert paid.order_no
        first = term.refund_order(3_00, paid.order_no, contact="hal@example.com")
        second = term.refund_order(5_00, paid.order_no)
        assert first.outcome is Outcome.APPROVED and second.outcome is Outcome.APPROVED, (
            first.text,
            second.text,
        )
        over = term.refund_order(2_01, paid.order_no)
        assert over.outcome is Outcome.DECLINED and "REFUND_FEE_INVALID" in over.text
        assert counter.balance("hal") == START_FEN - 2_00
        # the same refund sent again (a lost answer, a crash) moves no more money
        refund = term.wallet_refund_list()[0]
        gw = HttpWalletGateway(
            counter.server.base_url, MCH_ID, MCH_KEY, connect_timeout_s=1.0, response_timeout_s=2.0
        )
        try:
            again = gw.refund(
                out_trade_no=paid.order_no,
                out_refund_no=refund.out_refund_no,
                total_fee=10_00,
                refund_fee=3_00,
            )
        finally:
            gw.close()
        assert again.refund_id == refund.refund_id and counter.balance("hal") == START_FEN - 2_00
        kinds = [m["kind"] for m in announced(term)]
        assert kinds == ["e_receipt", "refund_approved", "refund_approved"]
        assert announced(term)[1]["recipient"] == "hal@example.com"
        check_money(counter, term, {"hal": paid.order_no})


def test_a_bad_wallet_key_is_a_clear_error_and_charges_nothing(counter: Counter) -> None:
    code = counter.user("ivy")
    with counter.terminal(counter.config(wallet={"key": "not-the-merchant-key-0123456789"})) as term:
        r = term.qr(4_00, code)
        assert r.outcome is Outcome.DECLINED and "RETURN_FAIL" in r.text and "wallet key" in r.text
        order = term.wallet_orders()[0]
        assert order.state is WalletState.REFUSED
    assert counter.balance("ivy") == START_FEN
    assert counter.server.call("/v1/query", out_trade_no=order.out_trade_no)["err_code"] == "ORDERNOTEXIST"


class CrashAfterJournal(BaseException):
    """The process dies after the order was journalled, before pay left."""


class CrashingGateway(HttpWalletGateway):
    def pay(self, **_: Any) -> Any:
        raise CrashAfterJournal


def test_a_crash_between_journalling_and_sending_is_queried_and_reversed(counter: Counter) -> None:
    code = counter.user("jay")
    s = counter.settings()
    gw = CrashingGateway(s.url, s.merchant, s.key, connect_timeout_s=1.0, response_timeout_s=1.0)
    term = counter.terminal(wallet_gateway=gw)
    with pytest.raises(CrashAfterJournal):
        term.qr(9_00, code)
    term.close()
    with counter.terminal() as term:
        (order,) = term.wallet_orders()
        assert order.state is WalletState.CREATED
        term.recover()
        order = term.wallet_orders()[0]
        assert order.state is WalletState.REVOKED and order.queries >= 1
        check_money(counter, term, {"jay": order.out_trade_no})
    late = counter.server.call("/v1/pay", auth_code=code, out_trade_no=order.out_trade_no, total_fee=9_00)
    assert late["result_code"] == "FAIL" and late["err_code"] == "ORDERREVERSED"
    assert counter.balance("jay") == START_FEN


def test_pos_run_reverses_in_the_background_with_no_command_typed(patient_counter: Counter) -> None:
    counter = patient_counter
    code = counter.user("kim", "never")
    config = counter.config(reversal_retries_max=1)
    save_config(counter.data_dir, config)
    with Terminal.open(counter.data_dir, printer=counter.printer) as term:
        r = term.qr(2_50, code, contact="13700137000")
        assert r.outcome is Outcome.WALLET_PENDING, r.text
        order_no = r.order_no
        assert order_no
    close_now(counter, order_no)
    stop, done = threading.Event(), threading.Event()
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if line.startswith("wallet:") and ", 0 open" in line:
            done.set()

    resident = Resident(counter.data_dir, stop=stop, out=out)
    worker = threading.Thread(target=resident.run, daemon=True)
    worker.start()
    try:
        assert done.wait(WAIT_S), lines
    finally:
        stop.set()
        worker.join(WAIT_S)
    assert not worker.is_alive()
    with Terminal.open(counter.data_dir, printer=counter.printer) as term:
        order = term.wallet_orders()[0]
        assert order.state is WalletState.REVOKED
        messages = announced(term)
        assert [m["kind"] for m in messages if m["kind"] != "merchant_alert"] == ["payment_cancelled"]
        # This terminal has no card host to sign in to: `pos run` may tell the merchant so.
        assert {m["alert"] for m in messages if m["kind"] == "merchant_alert"} <= {"sign_in_failures"}
        check_money(counter, term, {"kim": order_no})


def test_pos_qr_and_refund_by_hand(counter: Counter) -> None:
    """The fixed CLI contract: `pos init … --wallet … --wallet-key -`, `pos qr AMOUNT --code C
    [--notify]`, `pos refund AMOUNT --order NO`, and `pos journal`/`pos status` showing them."""
    from typer.testing import CliRunner

    from tillroll.terminal.cli import app

    runner, base = CliRunner(), ["--dir", str(counter.data_dir)]

    def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
        r = runner.invoke(app, [*base, *args], input=stdin, env={"COLUMNS": "220"})
        return r.exit_code, r.output

    code = counter.user("lee")
    rc, out = run(
        "init", "--tid", TID, "--mid", MID, "--tmk", TMK.hex(), "--host", "127.0.0.1:9",
        "--merchant-name", MCH_NAME, "--wallet", counter.server.base_url, "--wallet-merchant", MCH_ID,
        "--wallet-key", "-", "--wallet-query-interval-s", "0.2", "--wallet-query-window-s", "1",
        stdin=MCH_KEY + "\n",
    )  # fmt: skip
    assert rc == 0 and MCH_KEY not in out, out
    assert MCH_KEY not in (counter.data_dir / "terminal.json").read_text()
    rc, out = run("qr", "12.50", "--code", code, "--notify", "13800138000")
    assert rc == 0 and "approved" in out and code not in out, out
    found = re.search(r"ORDER (\w+)", out)
    assert found is not None
    rc, out = run("refund", "2.50", "--order", found.group(1), "--notify", "lee@example.com")
    assert rc == 0 and "approved" in out, out
    rc, out = run("refund", "20.00", "--order", found.group(1))
    assert rc == 1 and "REFUND_FEE_INVALID" in out, out
    rc, out = run("qr", "1.00", "--code", "99" + code[2:])
    assert rc == 2 and "payment code" in out
    rc, out = run("qr", "1.00", "--code", code)  # the code was used: the wallet refuses it
    assert rc == 1, out
    rc, out = run("journal")
    assert rc == 0 and code[:6] in out and code not in out and "qr refund" in out, out
    rc, out = run("status")
    assert rc == 0, out
    assert counter.balance("lee") == START_FEN - 10_00
    with Terminal.open(counter.data_dir) as term:
        check_money(counter, term, {"lee": found.group(1)})
    for f in counter.data_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert code.encode() not in data and MCH_KEY.encode() not in data, f
