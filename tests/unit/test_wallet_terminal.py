"""The terminal's wallet rail on a fake clock with the fake wallet of fakewallet.py (why a fake:
see there). The same scenarios run against the real `tillroll wallet serve` over HTTP in
tests/integration/test_terminal_wallet.py; here are the orders of events only a script gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakewallet import FakeWallet
from sqlalchemy import select

from tillroll.clock import FakeClock
from tillroll.notify.outbox import MessageKind
from tillroll.terminal import HostAddress, IllegalTransition, InputError, Outcome, Terminal, TerminalConfig
from tillroll.terminal.config import CONFIG_FILE, load_config, save_config
from tillroll.terminal.journal import outbox
from tillroll.terminal.printer import MemoryPrinter, PrinterStatus
from tillroll.terminal.receipt import TransType
from tillroll.terminal.states import ReceiptState, RefundState, check
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.terminal.wallet_journal import wallet_orders
from tillroll.terminal.wallet_states import (
    WALLET_TRANSITIONS,
    Brand,
    PaymentCodeError,
    WalletState,
    mask_code,
    parse_payment_code,
)

TID = "10000001"
MID = "898310048990001"
TMK = bytes.fromhex("C1D0F8FB4958670DBA40AB1F3752EF0D")
WX_CODE = "134567890123456789"  # 18 digits, 13...: 微信支付
ALI_CODE = "28763443825664394"  # 17 digits, 28...: 支付宝
KEY = "wallet-test-key-0123456789abcdef"


def wallet_settings(**changes: object) -> WalletSettings:
    base: dict[str, object] = {"url": "http://127.0.0.1:9", "merchant": "1900000109", "key": KEY}
    base.update(changes)
    return WalletSettings(**base)  # type: ignore[arg-type]


def config(**wallet: object) -> TerminalConfig:
    return TerminalConfig(
        tid=TID,
        mid=MID,
        tmk=TMK,
        host=HostAddress("127.0.0.1", 1),
        merchant_name="测试便利店",
        wallet=wallet_settings(**wallet),
    )


class EReceipts:
    def __init__(self) -> None:
        self.slips: list[object] = []

    def __call__(self, slip: object, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{len(self.slips)}.html"
        path.write_text("receipt")
        self.slips.append(slip)
        return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wallet() -> FakeWallet:
    return FakeWallet()


@pytest.fixture
def printer() -> MemoryPrinter:
    return MemoryPrinter()


def open_term(tmp_path: Path, clock: FakeClock, wallet: FakeWallet, printer: MemoryPrinter) -> Terminal:
    return Terminal(
        config(),
        tmp_path / "pos",
        clock=clock,
        printer=printer,
        wallet_gateway=wallet,
        e_receipt_writer=EReceipts(),
    )


@pytest.fixture
def term(tmp_path: Path, clock: FakeClock, wallet: FakeWallet, printer: MemoryPrinter) -> Iterator[Terminal]:
    t = open_term(tmp_path, clock, wallet, printer)
    yield t
    t.close()


def messages(term: Terminal) -> list[dict[str, object]]:
    with term.journal.begin() as conn:
        rows = conn.execute(select(outbox.messages).order_by(outbox.messages.c.id)).mappings().all()
    return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]


def kinds(term: Terminal) -> list[str]:
    return [str(m["kind"]) for m in messages(term)]


# --- pure: codes, states ----------------------------------------------------------------------


def test_brand_comes_from_the_prefix_and_bad_codes_are_refused_masked() -> None:
    assert parse_payment_code(WX_CODE).brand is Brand.WX
    assert parse_payment_code(ALI_CODE).brand is Brand.ALI
    assert parse_payment_code("300000000000000000000000").brand is Brand.ALI  # 24 digits, 30
    for bad in ("164567890123456789", "13456789012345678", "2476344382566439", "31" + "0" * 16, "abc"):
        with pytest.raises(PaymentCodeError) as exc:
            parse_payment_code(bad)
        assert bad not in str(exc.value) or len(bad) <= 10
    assert mask_code(WX_CODE) == "134567********6789"
    assert WX_CODE not in repr(parse_payment_code(WX_CODE))


def test_the_transition_table_refuses_what_it_does_not_list() -> None:
    with pytest.raises(IllegalTransition):
        check(WALLET_TRANSITIONS, WalletState.REVERSING, WalletState.SUCCESS)  # gave up: never paid again
    with pytest.raises(IllegalTransition):
        check(WALLET_TRANSITIONS, WalletState.SUCCESS, WalletState.REVOKED)
    for final in (WalletState.SUCCESS, WalletState.REFUSED, WalletState.CLOSED, WalletState.REVOKED):
        assert not WALLET_TRANSITIONS[final]
    # every state reachable from CREATED
    seen, todo = {WalletState.CREATED}, [WalletState.CREATED]
    while todo:
        for nxt in WALLET_TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(WalletState)


def test_the_wallet_key_is_sealed_in_the_config_file(tmp_path: Path) -> None:
    save_config(tmp_path, config())
    text = (tmp_path / CONFIG_FILE).read_text()
    assert KEY not in text and "key_sealed" in text
    loaded = load_config(tmp_path)
    assert loaded.wallet is not None and loaded.wallet.key == KEY
    assert KEY not in repr(loaded) and KEY not in repr(loaded.wallet)


# --- payments ---------------------------------------------------------------------------------


def test_success_prints_a_qr_pay_slip_and_keeps_the_code_masked(
    term: Terminal, wallet: FakeWallet, printer: MemoryPrinter, tmp_path: Path
) -> None:
    r = term.qr(1250, WX_CODE, contact="13800138000")
    assert r.outcome is Outcome.APPROVED and r.order_no and r.receipt is ReceiptState.PRINTED
    assert wallet.codes_seen == [WX_CODE] and wallet.charged_minor() == 1250
    slip = printer.printed[0].slip
    assert (
        slip.trans_type is TransType.QR_PAY
        and "微信支付" in slip.issuer
        and "134567****" in (slip.reference or "")
    )
    assert [m["kind"] for m in messages(term)] == ["e_receipt"]
    fact = messages(term)[0]["payload"]
    assert isinstance(fact, dict)
    assert fact["amount_minor"] == 1250 and fact["rail"] == "wallet"
    assert fact["card_masked"] == mask_code(WX_CODE) and fact["order_no"] == r.order_no
    assert fact["at_local"].startswith("2026-11-29T17:30")
    assert messages(term)[0]["recipient"] == "+8613800138000"  # normalised as the back office takes it
    term.close()
    for f in (tmp_path / "pos").rglob("*"):
        if f.is_file():
            assert WX_CODE.encode() not in f.read_bytes(), f


def test_userpaying_is_resolved_by_polling(term: Terminal, wallet: FakeWallet, clock: FakeClock) -> None:
    wallet.behaviour, wallet.confirm_after_queries = "userpaying", 3
    start = clock.monotonic()
    r = term.qr(800, ALI_CODE)
    assert r.outcome is Outcome.APPROVED
    assert wallet.calls == ["pay", "query", "query", "query"]
    assert clock.monotonic() - start == pytest.approx(15.0)  # every 5 s
    assert kinds(term) == ["e_receipt"]  # from the SUCCESS, nothing from USERPAYING
    assert messages(term)[0]["recipient"] == "merchant"  # no contact given: the back office only


def test_userpaying_never_resolving_is_reversed_at_the_deadline_and_the_customer_told(
    term: Terminal, wallet: FakeWallet, clock: FakeClock
) -> None:
    wallet.behaviour = "never"
    start = clock.monotonic()
    r = term.qr(800, WX_CODE, contact="a@example.com")
    assert r.outcome is Outcome.WALLET_CANCELLED
    assert wallet.calls.count("query") == 9 and wallet.calls[-1] == "reverse"
    assert clock.monotonic() - start == pytest.approx(45.0)
    order = term.wallet_orders()[0]
    assert order.state is WalletState.REVOKED
    msgs = messages(term)
    assert [m["kind"] for m in msgs] == ["payment_cancelled"] and msgs[0]["recipient"] == "a@example.com"
    assert wallet.charged_minor() == 0


def test_systemerror_after_paying_is_found_by_query_and_charged_once(
    term: Terminal, wallet: FakeWallet, printer: MemoryPrinter
) -> None:
    wallet.behaviour = "systemerror-paid"
    r = term.qr(500, WX_CODE)
    assert r.outcome is Outcome.APPROVED and wallet.calls == ["pay", "query"]
    assert wallet.charged_minor() == 500 and len(printer.printed) == 2  # two copies, one receipt


def test_a_refusal_is_final_and_announces_nothing(term: Terminal, wallet: FakeWallet) -> None:
    wallet.behaviour = "refuse:NOTENOUGH"
    r = term.qr(500, WX_CODE, contact="13800138000")
    assert r.outcome is Outcome.DECLINED and "余额不足" in r.text and "NOTENOUGH" in r.text
    assert wallet.calls == ["pay"] and kinds(term) == []
    assert term.wallet_orders()[0].state is WalletState.REFUSED


def test_a_connection_never_made_sends_nothing(term: Terminal, wallet: FakeWallet) -> None:
    wallet.behaviour = "not-sent"
    r = term.qr(500, WX_CODE)
    assert r.outcome is Outcome.WALLET_NOT_SENT and wallet.calls == ["pay"]


def test_the_race_paid_after_the_last_query_ends_revoked_and_refunded(
    term: Terminal, wallet: FakeWallet
) -> None:
    wallet.behaviour = "never"
    wallet.on_reverse = wallet.confirm  # the customer confirms just as the terminal gives up
    r = term.qr(1999, WX_CODE, contact="13800138000")
    assert r.outcome is Outcome.WALLET_CANCELLED
    fake = next(iter(wallet.orders.values()))
    assert fake.charged and fake.reversed_back and wallet.charged_minor() == 0
    assert kinds(term) == ["payment_cancelled"]


def test_reverse_refused_is_retried_then_finished_in_the_background(
    term: Terminal, wallet: FakeWallet, clock: FakeClock
) -> None:
    wallet.behaviour, wallet.reverse_again = "never", 100
    r = term.qr(300, WX_CODE, contact="13800138000")
    assert r.outcome is Outcome.WALLET_PENDING and "do not hand over" in r.text
    assert kinds(term) == []  # nothing announced while unknown
    assert any(a.kind == "wallet_reverse_pending" for a in term.alerts())
    wallet.reverse_again = 0
    step = term.wallet_step()
    if step.finished == 0:  # not yet due: the backoff says when
        assert step.next_due_s is not None
        clock.advance(step.next_due_s - clock.monotonic())
        step = term.wallet_step()
    assert step.finished == 1 and step.pending == 0
    assert term.wallet_orders()[0].state is WalletState.REVOKED and kinds(term) == ["payment_cancelled"]


def test_a_crash_between_journalling_and_sending_is_queried_then_reversed(
    tmp_path: Path, clock: FakeClock, wallet: FakeWallet, printer: MemoryPrinter
) -> None:
    class Crash(BaseException):
        pass

    def crash(**_: object) -> None:
        raise Crash

    t = open_term(tmp_path, clock, wallet, printer)
    wallet_pay = wallet.pay
    wallet.pay = crash  # type: ignore[assignment,method-assign]
    with pytest.raises(Crash):
        t.qr(700, WX_CODE)
    t.close()
    wallet.pay = wallet_pay  # type: ignore[method-assign]
    t = open_term(tmp_path, clock, wallet, printer)
    try:
        (order,) = t.wallet_orders()
        assert order.state is WalletState.CREATED
        r = t.recover()
        assert t.wallet_orders()[0].state is WalletState.REVOKED, r
        assert "query" in wallet.calls and wallet.calls[-1] == "reverse"
        assert order.out_trade_no in wallet.tombstones  # a late pay of it would now fail
        assert any(a.kind == "interrupted" for a in t.alerts())
    finally:
        t.close()


def test_lost_answer_then_query_down_until_the_deadline_reverses(term: Terminal, wallet: FakeWallet) -> None:
    wallet.behaviour, wallet.query_down = "lost-paid", True
    r = term.qr(450, WX_CODE)
    assert r.outcome is Outcome.WALLET_CANCELLED and wallet.charged_minor() == 0


def test_printer_failure_owes_the_receipt_and_reprint_clears_it(
    term: Terminal, wallet: FakeWallet, printer: MemoryPrinter
) -> None:
    printer.set_status(PrinterStatus.PAPER_OUT)
    r = term.qr(1000, WX_CODE)
    assert r.outcome is Outcome.APPROVED and r.receipt is ReceiptState.OWED and r.e_receipt is not None
    printer.set_status(PrinterStatus.READY)
    rp = term.reprint(r.trace)
    assert rp.outcome is Outcome.DONE and printer.printed[0].reprint
    assert term.wallet_orders()[0].receipt is ReceiptState.PRINTED


def test_bad_input_is_refused_before_anything_is_journalled(term: Terminal, wallet: FakeWallet) -> None:
    for args in ((0, WX_CODE, None), (100, "12345", None), (100, WX_CODE, "not a contact")):
        with pytest.raises(InputError):
            term.qr(*args)
    assert term.wallet_orders() == [] and wallet.calls == []


# --- refunds ----------------------------------------------------------------------------------


def test_refunds_partial_repeated_and_over_the_limit(term: Terminal, wallet: FakeWallet) -> None:
    paid = term.qr(1000, WX_CODE, contact="13800138000")
    assert paid.order_no
    a = term.refund_order(300, paid.order_no)
    b = term.refund_order(500, paid.order_no)
    assert a.outcome is Outcome.APPROVED and b.outcome is Outcome.APPROVED and a.order_no == paid.order_no
    assert a.detail != b.detail  # each its own refund number
    over = term.refund_order(300, paid.order_no)
    assert over.outcome is Outcome.DECLINED and "REFUND_FEE_INVALID" in over.text
    assert wallet.charged_minor() == 200
    assert kinds(term) == ["e_receipt", "refund_approved", "refund_approved"]
    refunds = term.wallet_refund_list()
    assert [r.state for r in refunds] == [RefundState.APPROVED, RefundState.APPROVED, RefundState.DECLINED]


def test_a_refund_with_no_answer_is_sent_again_as_the_same_refund(term: Terminal, wallet: FakeWallet) -> None:
    paid = term.qr(1000, WX_CODE)
    assert paid.order_no
    wallet.refund_down = 100
    r = term.refund_order(400, paid.order_no, contact="b@example.com")
    assert r.outcome is Outcome.REFUND_UNKNOWN and kinds(term) == ["e_receipt"]  # the payment's only
    blocked = term.refund_order(100, paid.order_no)  # the open one is finished first
    assert blocked.outcome is Outcome.REFUND_BLOCKED
    wallet.refund_down, wallet.refund_processing_queries = 0, 2
    done = term.recover()
    assert done.outcome is Outcome.DONE, done
    (refund,) = term.wallet_refund_list()
    assert refund.state is RefundState.APPROVED and wallet.charged_minor() == 600
    assert len(wallet.refunds) == 1  # one out_refund_no, however many sends
    assert messages(term)[-1]["recipient"] == "b@example.com"


def test_refunding_an_order_that_was_not_paid_is_declined(term: Terminal, wallet: FakeWallet) -> None:
    wallet.behaviour = "refuse:NOTENOUGH"
    r = term.qr(100, WX_CODE)
    assert r.order_no
    assert term.refund_order(100, r.order_no).outcome is Outcome.DECLINED
    with pytest.raises(InputError):
        term.refund_order(100, "NOSUCHORDER")


def test_the_journal_row_holds_no_full_code(term: Terminal) -> None:
    term.qr(100, ALI_CODE)
    with term.journal.begin() as conn:
        row = conn.execute(select(wallet_orders)).mappings().one()
    assert ALI_CODE not in json.dumps({k: str(v) for k, v in row.items()})
    assert row["code_masked"] == mask_code(ALI_CODE) and row["brand"] == "ali"


def test_the_background_queries_on_schedule_then_reverses_after_the_deadline(
    term: Terminal, wallet: FakeWallet, clock: FakeClock
) -> None:
    """What `pos run` does with an order a dead process left unknown: one step at a time."""
    wallet.behaviour = "lost-unpaid"
    wallet.reverse_down = True  # the cashier's command cannot reverse it either
    wallet.query_down = True
    r = term.qr(650, WX_CODE, contact="13800138000")
    assert r.outcome is Outcome.WALLET_PENDING and kinds(term) == []
    wallet.query_down = wallet.reverse_down = False
    calls_before = len(wallet.calls)
    for _ in range(50):
        step = term.wallet_step()
        if step.pending == 0:
            break
        assert step.next_due_s is not None
        clock.advance(max(0.0, step.next_due_s - clock.monotonic()))
    assert wallet.calls[calls_before:] == ["reverse"]  # past its deadline: no query, the reverse
    assert term.wallet_orders()[0].state is WalletState.REVOKED and kinds(term) == ["payment_cancelled"]
    assert term.wallet.next_due_s(clock.monotonic()) is None  # type: ignore[union-attr]


def test_every_announced_fact_is_one_the_back_office_accepts(term: Terminal, wallet: FakeWallet) -> None:
    """The back office's intake check (``facts.check_fact``, the card rail's format) accepts every
    wallet fact; receipt links are signed for this terminal and this fact; no full code anywhere."""
    from tillroll.crypto.backoffice import backoffice_key, verify_token
    from tillroll.terminal.facts import check_fact

    paid = term.qr(1000, WX_CODE, contact="13800138000")
    assert paid.order_no
    term.refund_order(100, paid.order_no)
    wallet.behaviour = "never"
    term.qr(200, ALI_CODE, contact="c@example.com")
    msgs = messages(term)
    assert [str(m["kind"]) for m in msgs] == ["e_receipt", "refund_approved", "payment_cancelled"]
    for m in msgs:
        payload = dict(m["payload"])  # type: ignore[call-overload]
        kind = MessageKind(str(m["kind"]))
        fact = check_fact(kind, TID, payload)
        assert m["message_id"] == f"{kind.value}:{TID}:{fact.reference}"
        assert (
            payload["amount_minor"] in (1000, 100, 200)
            and payload["mid"] == MID
            and payload["rail"] == "wallet"
        )
        if "receipt_token" in payload:
            claims = verify_token(
                backoffice_key(TMK), payload["receipt_token"], today_day=20_786, ttl_days=365
            )
            assert getattr(claims, "reference", None) == fact.reference, claims
        assert WX_CODE not in json.dumps(payload) and ALI_CODE not in json.dumps(payload)
    assert msgs[2]["payload"]["reason"] == "reversed"  # type: ignore[index]
