"""The demo's wallet payments, e-receipts and messages (issue 7), and their closing check.

Beside the card rail, the day now has the parties a QR payment and a message pass through: the
wallet provider (`tillroll wallet serve`, in a thread, on its own SQLite file), the back office
(`tillroll web`: the intake of the terminals' facts and the e-receipt pages, on the host's
store), the local SMTP server and SMS gateway the back office sends through, and the back
office's relay. Customers pay by payment code with the phone behaviours of WALLET.md §6, and
give an e-mail address or a phone number for their receipt:

| customer | behaviour | what happens |
|---|---|---|
| wang | ok | paid at once; e-receipt by e-mail; later refunded in part |
| zhao | confirm:2 | USERPAYING, confirmed on the phone 2 s later: found by polling |
| qian | never | USERPAYING, never confirmed: reversed at the deadline, told by SMS |
| sun | error-once | SYSTEMERROR although paid: found by query, charged once |
| zhou | slow:S | paid, but the answer comes after the terminal gave up: found by query |
| wu | fail:NOTENOUGH | refused: nothing charged, nothing to tell |
| zheng | confirm:S | confirmed just after the terminal's deadline: the race; ends reversed, refunded, told |

and one card customer leaves an e-mail address while the printer is jammed: the e-receipt goes
out at once. :func:`wallet_check` then compares every message each customer received (the wallet
app's stream, our e-mails and SMS) with the final state of their payment.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console

from tillroll.clock import SystemClock
from tillroll.host.store import HostStore
from tillroll.money import format_yuan
from tillroll.notify.deadletter import back_office_dead_letter
from tillroll.notify.endpoints import add_endpoint
from tillroll.notify.outbox import Channel, MessageKind
from tillroll.notify.relay import Relay, RelayConfig, scaled_schedules
from tillroll.notify.sms import SmsGatewaySender
from tillroll.notify.smtp import SmtpConfig, SmtpSender
from tillroll.notify.templates import SUBJECTS
from tillroll.sim.sms_gateway import GatewayState, running_gateway
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import outbox
from tillroll.terminal import Result, Terminal
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.terminal.wallet_states import WalletState
from tillroll.wallet.admin import add_merchant, add_user, balance_fen, issue_code, open_wallet, user_messages
from tillroll.wallet.app import create_app as wallet_app
from tillroll.wallet.config import WalletConfig
from tillroll.wallet.service import WalletService
from tillroll.web import WebConfig, WebServer, create_app

WALLET_MCH_ID = "1900000109"
WALLET_MERCHANT = "一号便利店"
QUERY_INTERVAL_S = 1.0  # the terminal's wallet schedule, shortened for the demo (default 5 s / 45 s)
QUERY_WINDOW_S = 5.0
RESPONSE_TIMEOUT_S = 1.5  # the terminal's wallet call; `slow` answers after it
# The wallet closes an unconfirmed order this long after pay (WALLET.md: 45 s, with the
# terminal's 45 s window); scaled with the window, so a `never` order can be reversed in the day.
USERPAYING_CLOSE_S = QUERY_WINDOW_S + 5.0
DELIVERY_BOUND_S = 15.0  # every message the day produced is delivered within this, or the check says
MERCHANT_EMAIL = "owner@no1store.example"


@dataclass(frozen=True)
class Customer:
    name: str
    brand: str  # wx | ali
    behaviour: str
    amount_minor: int
    contact: str  # an e-mail address or a phone number (E.164)


CUSTOMERS = (
    Customer("wang", "wx", "ok", 12_50, "wang@example.com"),
    Customer("zhao", "ali", "confirm:2", 8_80, "+8613800000002"),
    Customer("qian", "wx", "never", 23_00, "+8613800000003"),
    Customer("sun", "ali", "error-once", 5_60, "sun@example.com"),
    Customer("zhou", "wx", f"slow:{RESPONSE_TIMEOUT_S + 1.5:g}", 30_00, "zhou@example.com"),
    Customer("wu", "ali", "fail:NOTENOUGH", 99_00, "+8613800000006"),
    Customer("zheng", "wx", f"confirm:{QUERY_WINDOW_S + 1.0:g}", 17_20, "+8613800000007"),
)
WALLET_OPENING_MINOR = 500_00
REFUND_OF = "wang"
REFUND_MINOR = 4_00
CARD_CONTACT = "li@example.com"  # the card customer whose slip the jammed printer cannot print

_AMOUNT_RE = re.compile(r"¥(\d+\.\d{2})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Payment:
    customer: Customer
    result: Result
    order_no: str | None


@dataclass
class WalletDay:
    """The wallet provider, the back office, the mail and SMS servers, and what was paid."""

    work_dir: Any
    store: HostStore
    mid: str
    console: Console
    payments: list[Payment] = field(default_factory=list)
    card_e_receipt: Result | None = None
    refund: Result | None = None
    _stack: ExitStack = field(default_factory=ExitStack)
    wallet_url: str = ""
    web_url: str = ""
    wallet_key: str = field(default_factory=lambda: secrets.token_hex(16))

    def start(self) -> None:
        stack = self._stack
        self.wallet_engine = open_wallet(f"sqlite:///{self.work_dir / 'wallet.db'}")
        stack.callback(self.wallet_engine.dispose)
        add_merchant(self.wallet_engine, WALLET_MCH_ID, WALLET_MERCHANT, self.wallet_key)
        for c in CUSTOMERS:
            add_user(self.wallet_engine, c.name, WALLET_OPENING_MINOR, brand=c.brand, behaviour=c.behaviour)  # type: ignore[arg-type]
        service = WalletService(
            self.wallet_engine, SystemClock(), WalletConfig(userpaying_close_s=USERPAYING_CLOSE_S)
        )
        self.wallet_url = stack.enter_context(WebServer(wallet_app(service))).url
        self.smtp = stack.enter_context(SmtpSink())
        sms_url, sms_state = stack.enter_context(running_gateway())
        self.sms_url = sms_url
        self.sms: GatewayState = sms_state
        port = _free_port()
        web_config = WebConfig(port=port)
        self.web_url = web_config.base_url
        stack.enter_context(WebServer(create_app(web_config, self.store), port=port))
        with self.store.engine.begin() as conn:
            add_endpoint(
                conn,
                self.store.keystore,
                mid=self.mid,
                channel=Channel.EMAIL,
                address=MERCHANT_EMAIL,
                now=SystemClock().now(),
            )
        smtp = SmtpSender(SmtpConfig(self.smtp.host, self.smtp.port))
        sms = SmsGatewaySender(sms_url)
        stack.callback(smtp.close)
        stack.callback(sms.close)
        self.relay = Relay(
            self.store.engine,
            outbox,
            {Channel.EMAIL: smtp, Channel.SMS: sms},
            clock=SystemClock(),
            config=RelayConfig(schedules=scaled_schedules(0.01)),
            on_dead=back_office_dead_letter,
        )

    def stop(self) -> None:
        self._stack.close()

    def wallet_settings(self) -> WalletSettings:
        return WalletSettings(
            url=self.wallet_url,
            merchant=WALLET_MCH_ID,
            key=self.wallet_key,
            connect_timeout_s=1.0,
            response_timeout_s=RESPONSE_TIMEOUT_S,
            query_interval_s=QUERY_INTERVAL_S,
            query_window_s=QUERY_WINDOW_S,
        )

    # --- the day's wallet payments ------------------------------------------------------------

    def pay_all(self, terminal: Terminal) -> None:
        for c in CUSTOMERS:
            code = issue_code(self.wallet_engine, c.name)
            res = terminal.qr(c.amount_minor, code, contact=c.contact)
            self.payments.append(Payment(c, res, res.order_no))
            self.console.print(
                f"[bold]{terminal.config.tid}[/] 扫码 QR {c.name} ({c.behaviour}) "
                f"¥{format_yuan(c.amount_minor)}: {res.text}"
            )
        paid = next(p for p in self.payments if p.customer.name == REFUND_OF)
        assert paid.order_no is not None
        self.refund = terminal.refund_order(REFUND_MINOR, paid.order_no, contact=paid.customer.contact)
        self.console.print(f"[bold]{terminal.config.tid}[/] 扫码退款 QR refund: {self.refund.text}")

    def finish(self, terminals: list[Terminal], devices: list[Terminal]) -> None:
        """Let every open wallet order end (query, then reverse), then deliver every fact of
        every device (a retired one's journal still holds what it announced)."""
        deadline = time.monotonic() + USERPAYING_CLOSE_S + 10.0
        for term in terminals:
            while any(o.state in _OPEN for o in term.wallet_orders()) and time.monotonic() < deadline:
                term.wallet_step()
                time.sleep(0.2)  # the schedule's next query is QUERY_INTERVAL_S away
            term.recover()
        self.deliver(devices)

    def deliver(self, terminals: list[Terminal]) -> None:
        """Terminals' facts to the back office, then the back office's messages out."""
        deadline = time.monotonic() + DELIVERY_BOUND_S
        while time.monotonic() < deadline:
            for term in terminals:
                term.send_facts(budget_s=2.0)
            report = self.relay.run_once()
            if report.claimed == 0 and not any(_facts_waiting(t) for t in terminals):
                return
            time.sleep(0.1)

    # --- what each customer was told ----------------------------------------------------------

    def received(self, contact: str) -> list[tuple[str, str]]:
        """(kind, text) of every message our back office sent to ``contact``, duplicates once."""
        out: list[tuple[str, str]] = []
        if "@" in contact:
            seen: set[str] = set()
            for mail in self.smtp.to(contact):
                if mail.message_id in seen:
                    continue  # at least once: a repeat carries the same Message-ID
                seen.add(mail.message_id)
                out.append((_kind_of(mail.subject), mail.text))
        else:
            for sms in self.sms.messages(contact):
                out.append((_kind_of(sms.text), sms.text))
        return out


_OPEN = frozenset({WalletState.CREATED, WalletState.UNKNOWN, WalletState.REVERSING})


def _facts_waiting(term: Terminal) -> bool:
    from sqlalchemy import func, select

    from tillroll.notify.outbox import MessageState
    from tillroll.terminal.journal import outbox as journal_outbox

    with term.journal.engine.connect() as conn:
        n = conn.execute(
            select(func.count()).where(journal_outbox.messages.c.state == MessageState.PENDING.value)
        ).scalar_one()
    return bool(n)


# What tells a message's kind apart, in an e-mail's subject (notify.templates.SUBJECTS) or an
# SMS's text (notify.templates.CUSTOMER), in the order they are tried.
_MARKERS = (
    *((zh, kind.value) for kind, (zh, _en) in SUBJECTS.items()),
    ("电子小票", MessageKind.E_RECEIPT.value),
    ("已撤销", MessageKind.PAYMENT_CANCELLED.value),
    ("退款", MessageKind.REFUND_APPROVED.value),
)


def _kind_of(text: str) -> str:
    for marker, kind in _MARKERS:
        if marker in text:
            return kind
    return "other"


def _amounts(text: str) -> set[int]:
    return {int(m.replace(".", "")) for m in _AMOUNT_RE.findall(text)}


def wallet_check(day: WalletDay, terminals: list[Terminal]) -> Iterator[str]:
    """Every broken promise of the wallet rail and the messages, one line each."""
    orders = {o.out_trade_no: o for t in terminals for o in t.wallet_orders()}
    for p in day.payments:
        c = p.customer
        who = f"wallet customer {c.name} ({c.behaviour})"
        order = orders.get(p.order_no or "")
        if order is None:
            yield f"{who}: no order in any journal"
            continue
        if order.state in _OPEN:
            yield f"{who}: order {order.out_trade_no} still {order.state.value} at the end of the day"
            continue
        paid = order.state is WalletState.SUCCESS
        refunded = REFUND_MINOR if (paid and c.name == REFUND_OF) else 0
        expected = WALLET_OPENING_MINOR - (c.amount_minor if paid else 0) + refunded
        balance = balance_fen(day.wallet_engine, c.name)
        if balance != expected:
            yield f"{who}: wallet balance {format_yuan(balance)}, expected {format_yuan(expected)}"
        stream = user_messages(day.wallet_engine, c.name)
        paid_lines = [m for m in stream if "付款" in m and "撤销" not in m]
        undone_lines = [m for m in stream if "撤销" in m]
        if paid and len(paid_lines) != 1:
            yield f"{who}: paid, but the wallet app shows {len(paid_lines)} payment messages: {stream}"
        if not paid and len(paid_lines) != len(undone_lines):
            yield f"{who}: not paid in the end, but the wallet app says {stream}"
        told = day.received(c.contact)
        kinds = [k for k, _ in told]
        if paid:
            if kinds.count("e_receipt") != 1:
                yield f"{who}: paid, {kinds.count('e_receipt')} e-receipts sent to {c.contact} (want 1)"
            if "payment_cancelled" in kinds:
                yield f"{who}: paid, yet told it was cancelled"
        elif order.state in (WalletState.REVOKED, WalletState.CLOSED):
            # Asked to confirm on the phone (or charged and refunded): told once that it is off.
            if "e_receipt" in kinds:
                yield f"{who}: told 'paid' (e-receipt) for a payment that ended {order.state.value}"
            if kinds.count("payment_cancelled") != 1:
                yield f"{who}: payment {order.state.value}, told {kinds} (want one cancellation notice)"
        elif kinds:  # refused, never sent: nothing happened, nothing to tell
            yield f"{who}: payment {order.state.value}, yet was sent {kinds}"
        for kind, text in told:
            if kind == "e_receipt":
                yield from _link_problems(who, text, c.amount_minor)
            if kind in ("e_receipt", "payment_cancelled") and c.amount_minor not in _amounts(text):
                yield f"{who}: a {kind} message names another amount: {text[:80]}"
            if WALLET_MERCHANT not in text:
                yield f"{who}: a {kind} message does not name the merchant"
        if c.name == REFUND_OF and paid:
            refunds = [t for k, t in told if k == "refund_approved"]
            if len(refunds) != 1 or REFUND_MINOR not in _amounts(refunds[0]):
                yield f"{who}: refund of {format_yuan(REFUND_MINOR)} approved, told {refunds}"
    if day.card_e_receipt is not None:
        told = day.received(CARD_CONTACT)
        receipts = [t for k, t in told if k == "e_receipt"]
        if day.card_e_receipt.approved and len(receipts) != 1:
            yield f"card customer {CARD_CONTACT}: printer jammed, {len(receipts)} e-receipts arrived (want 1)"
        elif receipts and (day.card_e_receipt.amount_minor or 0) not in _amounts(receipts[0]):
            yield f"card customer {CARD_CONTACT}: the e-receipt names another amount"
        for text in receipts:
            yield from _link_problems(
                f"card customer {CARD_CONTACT}", text, day.card_e_receipt.amount_minor or 0
            )


_LINK_RE = re.compile(r"https?://\S+/r/[A-Za-z0-9_.-]+")
LINK_TIMEOUT_S = 5.0


def _link_problems(who: str, text: str, amount_minor: int) -> Iterator[str]:
    """The e-receipt link in a message opens the receipt (HTML and PDF) with the same amount."""
    links = _LINK_RE.findall(text)
    if not links:
        yield f"{who}: an e-receipt message carries no link"
        return
    page = httpx.get(links[0], timeout=LINK_TIMEOUT_S)
    if page.status_code != 200 or format_yuan(amount_minor) not in page.text:
        yield f"{who}: the e-receipt link answered {page.status_code} without ¥{format_yuan(amount_minor)}"
    pdf = httpx.get(links[0] + ".pdf", timeout=LINK_TIMEOUT_S)
    if pdf.status_code != 200 or not pdf.content.startswith(b"%PDF"):
        yield f"{who}: the e-receipt's PDF answered {pdf.status_code}"
