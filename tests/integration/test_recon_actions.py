"""The exception service against the real parts, on SQLite and PostgreSQL: a real host over TCP
(card reversals), the real wallet provider over HTTP (reverse, refund retry), the notify outbox
relayed to a real SMTP sink (messages), terminal commands; every action with its recon_actions
and audit rows in the same transaction."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostwire import MID, PAN, TID, WireClient, host_store
from moneycheck import over_returned
from reconkit import T0, deliver, journal_entry
from sqlalchemy import func, insert, select
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, wallet_server

from tillroll import ledger
from tillroll.clock import FakeClock
from tillroll.console import audit
from tillroll.host import HostServer
from tillroll.host.admin import card_balance, card_messages
from tillroll.host.store import HostStore
from tillroll.notify.endpoints import add_endpoint
from tillroll.notify.outbox import Channel, MessageKind
from tillroll.recon.actions import ActionContext, act, act_many, apply_automatic
from tillroll.recon.model import ActionKind, ActionOutcome, ExceptionClass, ExceptionState
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import (
    audit_log,
    e_receipts,
    journal_entries,
    outbox,
    recon_actions,
    recon_exceptions,
    terminal_commands,
    transactions,
    wallet_statement_rows,
)
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.wallet.admin import add_merchant as wallet_merchant
from tillroll.wallet.admin import add_user, issue_code


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    with host_store(db_url) as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def host(store: HostStore, clock: FakeClock) -> Iterator[HostServer]:
    with HostServer(store, clock=clock, key_lifetime_s=3600) as server:
        yield server


@pytest.fixture
def client(host: HostServer) -> Iterator[WireClient]:
    c = WireClient(host.address)
    yield c
    c.close()


@pytest.fixture
def ctx(store: HostStore, clock: FakeClock) -> ActionContext:
    return ActionContext(store=store, clock=clock, base_url="http://shop.example:8080")


def open_exception(store: HostStore, klass: ExceptionClass, key: str, **values: Any) -> int:
    """An exception row the way the matcher upserts it."""
    evidence = values.pop("evidence", {})
    row = {
        "class": klass.value,
        "key": key,
        "business_date": "2026-12-02",
        "state": ExceptionState.OPEN.value,
        "mid": MID,
        "tid": TID,
        "evidence": json.dumps(evidence),
        "created_at": T0,
        "updated_at": T0,
        **values,
    }
    with store.engine.begin() as conn:
        return int(
            conn.execute(insert(recon_exceptions).values(**row).returning(recon_exceptions.c.id)).scalar_one()
        )


def exception_row(store: HostStore, exception_id: int) -> Any:
    with store.engine.connect() as conn:
        return (
            conn.execute(select(recon_exceptions).where(recon_exceptions.c.id == exception_id))
            .mappings()
            .one()
        )


def actions_of(store: HostStore, exception_id: int) -> list[tuple[str, str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(recon_actions.c.action, recon_actions.c.outcome, recon_actions.c.actor)
            .where(recon_actions.c.exception_id == exception_id)
            .order_by(recon_actions.c.id)
        )
        return [(r.action, r.outcome, r.actor) for r in rows]


def audit_actions(store: HostStore) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        report = audit.verify(conn)
        assert report.ok, report.reason
        return [(r.action, r.target) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))]


def sale(client: WireClient, amount: int) -> tuple[Any, Any]:
    msg = client.sale_message(amount)
    answer = client.send(msg)
    assert answer.code == "00"
    return msg, answer.message


def test_reverse_a_charge_the_terminal_never_saw_and_its_own_0400_later_changes_nothing(
    client: WireClient, store: HostStore, ctx: ActionContext
) -> None:
    client.sign_in()
    msg, answer = sale(client, 1250)
    rrn = answer["37"]
    assert card_balance(store, PAN) == 100_000 - 1250
    # the terminal never saw the approval: its journal copy says unknown
    journal_entry(store, entry_key="card:1", state="unknown", stan=msg["11"], amount_minor=1250)
    exc = open_exception(
        store,
        ExceptionClass.CHARGED_NO_RECEIPT,
        f"card:rrn:{rrn}",
        rail="card",
        rrn=rrn,
        batch="000001",
        stan=msg["11"],
        amount_minor=1250,
        evidence={"planned": ["reverse"], "terminal_saw_approval": False},
    )

    results = apply_automatic(ctx, [exc])

    assert [(r.action, r.outcome) for r in results] == [(ActionKind.REVERSE, ActionOutcome.DONE)]
    assert "reversed the ¥12.50 sale" in results[0].detail_en and "冲正" in results[0].detail_zh
    assert card_balance(store, PAN) == 100_000
    assert len(card_messages(store, PAN)) == 2  # the cardholder is told of the credit by the bank
    with store.engine.connect() as conn:
        kinds = conn.execute(
            select(transactions.c.kind, transactions.c.status).order_by(transactions.c.id)
        ).all()
        assert [tuple(k) for k in kinds] == [("sale", "reversed"), ("reversal", "approved")]
        assert not any(ledger.imbalance(conn).values()) and over_returned(conn) == []
    assert exception_row(store, exc)["state"] == "resolved"
    assert actions_of(store, exc) == [("reverse", "done", "auto")]
    assert audit_actions(store) == [("recon.reverse", f"recon_exception:{exc}")]

    # the terminal comes back and sends its own reversal: answered 00, and nothing moves again
    assert client.send(client.reversal_of(msg)).code == "00"
    assert card_balance(store, PAN) == 100_000
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).where(transactions.c.kind == "reversal")).scalar_one() == 1
        assert not any(ledger.imbalance(conn).values())
    # a rerun of the day finds it resolved and does nothing
    assert apply_automatic(ctx, [exc]) == []
    refused = act(ctx, exc, ActionKind.REVERSE, actor="wang")
    assert refused.outcome is ActionOutcome.FAILED and "already resolved" in refused.detail_en


def test_a_charge_the_terminal_reversed_first_is_not_reversed_again(
    client: WireClient, store: HostStore, ctx: ActionContext
) -> None:
    client.sign_in()
    msg, answer = sale(client, 700)
    assert client.send(client.reversal_of(msg)).code == "00"
    exc = open_exception(
        store, ExceptionClass.CHARGED_NO_RECEIPT, "card:rrn:y", rail="card", rrn=answer["37"],
        amount_minor=700, evidence={"planned": ["reverse"]},
    )  # fmt: skip
    (result,) = apply_automatic(ctx, [exc])
    assert (result.outcome, result.state) == (ActionOutcome.SKIPPED, ExceptionState.RESOLVED)
    assert "nothing left to undo" in result.detail_en
    assert card_balance(store, PAN) == 100_000
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).where(transactions.c.kind == "reversal")).scalar_one() == 1


def test_reversing_a_sale_of_a_settled_batch_refunds_it_from_the_merchant(
    client: WireClient, store: HostStore, ctx: ActionContext
) -> None:
    client.sign_in()
    _, answer = sale(client, 3000)
    assert client.send(client.settle_message(3000, 1, 0, 0)).code == "00"
    exc = open_exception(
        store,
        ExceptionClass.CHARGED_NO_RECEIPT,
        "card:rrn:x",
        rail="card",
        rrn=answer["37"],
        amount_minor=3000,
    )
    result = act(ctx, exc, ActionKind.REVERSE, actor="auto")
    assert result.outcome is ActionOutcome.DONE and "from the merchant's account" in result.detail_en
    assert card_balance(store, PAN) == 100_000
    with store.engine.connect() as conn:
        assert not any(ledger.imbalance(conn).values()) and over_returned(conn) == []
    # a second reverse (by hand) has nothing left to undo
    again = act(ctx, exc, ActionKind.REVERSE, actor="wang")
    assert again.outcome is ActionOutcome.FAILED  # the exception is resolved already
    assert card_balance(store, PAN) == 100_000


def test_approval_the_terminal_saw_is_reprinted_and_its_e_receipt_mailed(
    store: HostStore, ctx: ActionContext, clock: FakeClock
) -> None:
    journal_entry(
        store,
        entry_key="card:7",
        state="approved",
        stan="000007",
        rrn="000000000042",
        amount_minor=880,
        receipt="owed",
        contact="li@example.com",
        approved_at=T0,
    )
    with store.engine.begin() as conn:
        conn.execute(
            insert(e_receipts).values(
                tid=TID, reference="000001.000007", message_id="e_receipt:x", mid=MID,
                merchant_name="一号便利店",
                rail="card", trans_type="sale", amount_minor=880, currency="156",
                card_masked="622202*********0123", at_utc=T0, at_local="2026-12-02T19:02:00", slip="{}",
                created_at=T0,
            )
        )  # fmt: skip
    exc = open_exception(
        store,
        ExceptionClass.CHARGED_NO_RECEIPT,
        "card:rrn:000000000042",
        rail="card",
        rrn="000000000042",
        batch="000001",
        stan="000007",
        amount_minor=880,
        evidence={"planned": ["reprint", "send_e_receipt"], "terminal_saw_approval": True},
    )
    results = apply_automatic(ctx, [exc])
    assert [(r.action, r.outcome) for r in results] == [
        (ActionKind.REPRINT, ActionOutcome.QUEUED),
        (ActionKind.SEND_E_RECEIPT, ActionOutcome.QUEUED),
    ]
    assert "l***@example.com" in results[1].detail_en
    with store.engine.connect() as conn:
        (cmd,) = conn.execute(select(terminal_commands)).mappings().all()
    assert (cmd["tid"], cmd["command"], cmd["reference"], cmd["state"], cmd["exception_id"]) == (
        TID, "reprint", "000001.000007", "pending", exc,
    )  # fmt: skip
    assert exception_row(store, exc)["state"] == "in_progress"
    assert exception_row(store, exc)["owner"] == "auto"
    # a rerun of the day asks nothing twice
    assert apply_automatic(ctx, [exc]) == []
    again = act(ctx, exc, ActionKind.REPRINT, actor="wang")
    assert again.outcome is ActionOutcome.SKIPPED and "already asked" in again.detail_en

    with SmtpSink() as sink:
        deliver(store, sink, clock)
        (mail,) = sink.wait_for(1)
    assert mail.rcpt_tos == ("li@example.com",)
    assert "¥8.80" in mail.text and "http://shop.example:8080/r/" in mail.text
    link = mail.text.split("http://shop.example:8080/r/")[1].split()[0]
    from tillroll.crypto.backoffice import read_token

    claims = read_token(link)
    assert claims is not None and (claims.tid, claims.reference) == (TID, "000001.000007")


def test_follow_up_without_a_contact_fails_in_words_and_with_one_reaches_the_customer(
    store: HostStore, ctx: ActionContext, clock: FakeClock
) -> None:
    journal_entry(
        store, entry_key="card:9", state="approved", stan="000009", amount_minor=4200, receipt="printed"
    )
    exc = open_exception(
        store, ExceptionClass.RECEIPT_NO_PAYMENT, "card:tbs:9", rail="card", batch="000001", stan="000009",
        amount_minor=4200,
    )  # fmt: skip
    (failed,) = apply_automatic(ctx, [exc])
    assert failed.action is ActionKind.CONTACT_CUSTOMER and failed.outcome is ActionOutcome.FAILED
    assert "no contact is known" in failed.detail_en and "联系方式" in failed.detail_zh
    assert exception_row(store, exc)["state"] == "open"  # a failed action moves nothing
    with store.engine.begin() as conn:
        conn.execute(journal_entries.update().values(contact="zhao@example.com"))
    done = act(ctx, exc, ActionKind.CONTACT_CUSTOMER, actor="wang")
    assert done.outcome is ActionOutcome.QUEUED and exception_row(store, exc)["owner"] == "wang"
    with SmtpSink() as sink:
        deliver(store, sink, clock)
        (mail,) = sink.wait_for(1)
    assert "¥42.00" in mail.text and "contact the merchant" in mail.text and "请联系商户" in mail.text
    assert actions_of(store, exc) == [
        ("contact_customer", "failed", "auto"),
        ("contact_customer", "queued", "wang"),
    ]
    assert [a for a, _ in audit_actions(store)] == ["recon.contact_customer"] * 2


def test_sign_in_alert_needs_a_merchant_address(store: HostStore, ctx: ActionContext) -> None:
    exc = open_exception(
        store, ExceptionClass.SIGNIN_FAILURES, "terminal:signin", rail="terminal", evidence={"failures": 4}
    )
    (first,) = apply_automatic(ctx, [exc])
    assert first.outcome is ActionOutcome.FAILED and "notification address" in first.detail_en
    with store.engine.begin() as conn:
        add_endpoint(conn, store.keystore, mid=MID, channel=Channel.EMAIL, address="boss@example.com", now=T0)
    (second,) = apply_automatic(ctx, [exc])
    assert second.outcome is ActionOutcome.QUEUED
    with store.engine.connect() as conn:
        (payload,) = conn.execute(
            select(outbox.messages.c.payload).where(
                outbox.messages.c.kind == MessageKind.MERCHANT_ALERT.value
            )
        ).scalars()
    assert "4次签到失败" in json.loads(payload)["text"]
    # no count of failures (a key session expired in business hours): said as what it is
    expired = open_exception(
        store,
        ExceptionClass.SIGNIN_FAILURES,
        "terminal:expired",
        rail="terminal",
        evidence={"sessions_expired": 1},
    )
    (third,) = apply_automatic(ctx, [expired])
    assert third.outcome is ActionOutcome.QUEUED
    with store.engine.connect() as conn:
        texts = [json.loads(p)["text"] for p in conn.execute(select(outbox.messages.c.payload)).scalars()]
    assert any("key session expired in business hours" in t and "reconciliation found" in t for t in texts)


def test_state_changes_bulk_and_their_own_failures(store: HostStore, ctx: ActionContext) -> None:
    a = open_exception(store, ExceptionClass.AMOUNT_MISMATCH, "card:rrn:1", rail="card")
    b = open_exception(store, ExceptionClass.DUPLICATE, "card:rrn:2", rail="card")
    assert apply_automatic(ctx, [a, b]) == []  # these classes: the record is the action
    taken = act(ctx, a, "assign", actor="wang", note="li")
    assert (taken.outcome, taken.state) == (ActionOutcome.DONE, ExceptionState.IN_PROGRESS)
    assert exception_row(store, a)["owner"] == "li"
    results = act_many(ctx, [a, b, 999_999, a], ActionKind.WRITE_OFF, actor="wang", note="below 1 yuan")
    assert [(r.exception_id, r.outcome) for r in results] == [
        (a, ActionOutcome.DONE), (b, ActionOutcome.DONE), (999_999, ActionOutcome.FAILED),
    ]  # fmt: skip
    assert results[2].state is None and "no exception 999999" in results[2].detail_en
    assert exception_row(store, b)["state"] == "written_off"
    note = act(ctx, b, ActionKind.NOTE, actor="wang", note="customer agreed")
    assert note.outcome is ActionOutcome.DONE and note.state is ExceptionState.WRITTEN_OFF
    resolved = act(ctx, b, ActionKind.RESOLVE, actor="wang")
    assert resolved.outcome is ActionOutcome.FAILED
    assert [x for x, _ in audit_actions(store)] == [
        "recon.assign", "recon.write_off", "recon.write_off", "recon.note", "recon.resolve",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not an action"):
        act(ctx, a, "shrug", actor="wang")


def _pay(wallet: Any, order: str, amount: int) -> None:
    paid = wallet.call(
        "/v1/pay",
        auth_code=issue_code(wallet.engine, "alice"),
        out_trade_no=order,
        total_fee=amount,
        body="x",
    )
    assert paid["result_code"] == "SUCCESS", paid


def test_wallet_reverse_and_refund_retry_against_the_real_provider(
    store: HostStore, clock: FakeClock, tmp_path: Path
) -> None:
    with wallet_server(f"sqlite:///{tmp_path / 'wallet.db'}", background=False) as wallet:
        wallet_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(wallet.engine, "alice", 100_00)
        settings = WalletSettings(url=wallet.base_url, merchant=MCH_ID, key=MCH_KEY)
        ctx = ActionContext(store=store, clock=clock, wallets={MID: settings}, retry_limit=2)
        no_wallet = ActionContext(store=store, clock=clock)

        _pay(wallet, "ORD0001", 1250)
        charged = open_exception(
            store, ExceptionClass.CHARGED_NO_RECEIPT, "wallet:ORD0001", rail="wallet", order_no="ORD0001",
            amount_minor=1250, evidence={"planned": ["reverse"]},
        )  # fmt: skip
        missing = act(no_wallet, charged, ActionKind.REVERSE, actor="auto")
        assert missing.outcome is ActionOutcome.FAILED and "no wallet settings" in missing.detail_en
        (reversed_,) = apply_automatic(ctx, [charged])
        assert reversed_.outcome is ActionOutcome.DONE and reversed_.state is ExceptionState.RESOLVED
        assert wallet.call("/v1/query", out_trade_no="ORD0001")["trade_state"] == "REVOKED"

        _pay(wallet, "ORD0002", 1000)
        journal_entry(
            store, entry_key="wallet:2", rail="wallet", kind="qr_pay", state="success", stan="000002",
            order_no="ORD0002", amount_minor=1000,
        )  # fmt: skip
        journal_entry(
            store, entry_key="wallet_refund:1", rail="wallet", kind="qr_refund", state="unknown",
            stan="000003",
            order_no="RF0002", original_key="wallet:2", amount_minor=400,
        )  # fmt: skip
        stuck = open_exception(
            store,
            ExceptionClass.REFUND_STUCK,
            "wallet:RF0002",
            rail="wallet",
            order_no="RF0002",
            amount_minor=400,
        )
        first = apply_automatic(ctx, [stuck])
        assert [(r.action, r.outcome) for r in first] == [(ActionKind.RETRY_REFUND, ActionOutcome.DONE)]
        second = act(ctx, stuck, ActionKind.RETRY_REFUND, actor="auto")  # the same refund, again
        assert second.outcome is ActionOutcome.DONE
        answer = wallet.call("/v1/refund/query", out_refund_no="RF0002")
        assert answer["result_code"] == "SUCCESS" and int(answer["refund_fee"]) == 400
        query = wallet.call("/v1/query", out_trade_no="ORD0002")
        assert query["trade_state"] in ("SUCCESS", "REFUND")  # one refund of 400, never two
        third = apply_automatic(ctx, [stuck])  # past the limit (2): escalated, once
        assert [(r.action, r.outcome) for r in third] == [(ActionKind.ESCALATE, ActionOutcome.DONE)]
        assert "passed to a person" in third[0].detail_en
        row = exception_row(store, stuck)
        assert (row["state"], row["owner"]) == ("open", None)
        assert apply_automatic(ctx, [stuck]) == []
        assert [a for a, _, _ in actions_of(store, stuck)] == ["retry_refund", "retry_refund", "escalate"]

        # a refund known only from the statement (the wallet reported it failed: CHANGE)
        _pay(wallet, "ORD0003", 800)
        with store.engine.begin() as conn:
            conn.execute(
                insert(wallet_statement_rows).values(
                    mch_id=MCH_ID, bill_date="20261202", line_no=9, trade_time=T0, out_trade_no="ORD0003",
                    transaction_id="4200000003", trade_state="REFUND", brand="WX", total_minor=800,
                    out_refund_no="RF0003", refund_id="50000003", refund_minor=300, refund_status="CHANGE",
                    imported_at=T0,
                )
            )  # fmt: skip
        failed = open_exception(
            store,
            ExceptionClass.REFUND_STUCK,
            "wallet:RF0003",
            rail="wallet",
            order_no="RF0003",
            amount_minor=300,
        )
        (retried,) = apply_automatic(ctx, [failed])
        assert retried.outcome is ActionOutcome.DONE, retried.detail_en
        answer = wallet.call("/v1/refund/query", out_refund_no="RF0003")
        assert answer["result_code"] == "SUCCESS" and int(answer["refund_fee"]) == 300


def test_commands_the_terminal_reports_close_or_escalate_their_exception(
    store: HostStore, ctx: ActionContext
) -> None:
    from tillroll.recon.actions import follow_commands

    printed = open_exception(
        store, ExceptionClass.CHARGED_NO_RECEIPT, "card:rrn:p", rail="card", rrn="000000000051",
        batch="000001", stan="000051", evidence={"planned": ["reprint"]},
    )  # fmt: skip
    jammed = open_exception(
        store, ExceptionClass.CHARGED_NO_RECEIPT, "card:rrn:q", rail="card", rrn="000000000052",
        batch="000001", stan="000052", evidence={"planned": ["reprint"]},
    )  # fmt: skip
    assert [r.outcome for r in apply_automatic(ctx, [printed, jammed])] == [ActionOutcome.QUEUED] * 2
    assert follow_commands(ctx) == []  # nothing reported yet: both wait
    # the terminal's next upload acknowledges them (what the journal intake writes)
    with store.engine.begin() as conn:
        for exc, state, outcome in ((printed, "done", "reprinted"), (jammed, "failed", "printer jammed")):
            conn.execute(
                terminal_commands.update()
                .where(terminal_commands.c.exception_id == exc)
                .values(state=state, outcome=outcome)
            )
    results = follow_commands(ctx)
    assert [(r.exception_id, r.action, r.outcome) for r in results] == [
        (printed, ActionKind.RESOLVE, ActionOutcome.DONE),
        (jammed, ActionKind.ESCALATE, ActionOutcome.DONE),
    ]
    assert exception_row(store, printed)["state"] == "resolved"
    assert (exception_row(store, jammed)["state"], exception_row(store, jammed)["owner"]) == ("open", None)
    assert follow_commands(ctx) == []  # nothing in progress any more
    with store.engine.connect() as conn:
        note = conn.execute(
            select(recon_actions.c.detail).where(recon_actions.c.action == "escalate")
        ).scalar_one()
    assert "printer jammed" in json.loads(note)["note"]


_STATE_ONLY = [
    ActionKind.ASSIGN,
    ActionKind.RESOLVE,
    ActionKind.WRITE_OFF,
    ActionKind.NOTE,
    ActionKind.ESCALATE,
]


def test_any_sequence_of_state_actions_follows_the_transition_table(
    store: HostStore, ctx: ActionContext
) -> None:
    """Hypothesis: whatever people do, in whatever order, an exception only moves along
    EXCEPTION_TRANSITIONS, a final one never moves again (a note is still taken), every attempt
    leaves exactly one recon_actions row and one audit row, and the audit chain holds."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tillroll.recon.model import EXCEPTION_FINAL, EXCEPTION_TRANSITIONS

    counter = iter(range(1, 10**6))

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.sampled_from(_STATE_ONLY), min_size=1, max_size=8))
    def run(steps: list[ActionKind]) -> None:
        exc = open_exception(store, ExceptionClass.AMOUNT_MISMATCH, f"card:rrn:h{next(counter)}", rail="card")
        state = ExceptionState.OPEN
        for step in steps:
            result = act(ctx, exc, step, actor="wang", note="li" if step is ActionKind.ASSIGN else "x")
            after = ExceptionState(exception_row(store, exc)["state"])
            assert result.state is after
            if state in EXCEPTION_FINAL:
                assert after is state
                assert (result.outcome is ActionOutcome.DONE) == (step is ActionKind.NOTE)
            else:
                assert after is state or after in EXCEPTION_TRANSITIONS[state]
            state = after
        assert len(actions_of(store, exc)) == len(steps)

    run()
    with store.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
        assert rows == conn.execute(select(func.count()).select_from(recon_actions)).scalar_one()
        assert audit.verify(conn).ok
