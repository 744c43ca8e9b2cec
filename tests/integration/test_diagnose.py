"""Diagnosis and the payment story from real evidence, on SQLite and PostgreSQL: a real host over
TCP (the sale, the terminal's reversal), the notify outbox relayed to a real SMTP sink, journal
copies as the upload stores them; `tillroll diagnose` prints it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

import pytest
from hostwire import MID, PAN, TID, WireClient, host_store
from reconkit import T0, deliver, journal_entry
from sqlalchemy import insert
from typer.testing import CliRunner

from tillroll.cli import app
from tillroll.clock import FakeClock
from tillroll.host import HostServer
from tillroll.host.store import HostStore
from tillroll.notify.facts import full_card_numbers
from tillroll.notify.outbox import MessageKind
from tillroll.notify.routing import fan_out
from tillroll.recon.diagnose import diagnose
from tillroll.recon.story import payment_story
from tillroll.sim.smtp_sink import SmtpSink
from tillroll.store.tables import backoffice_facts, wallet_statement_rows


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    with host_store(db_url) as s:
        yield s


@pytest.fixture
def timed_out_sale(store: HostStore) -> Iterator[dict[str, str]]:
    """The issue's example: line 1 timed out at 19:02 (the third failure today on the terminal),
    the host had charged the customer, the terminal's reversal refunded it at 19:03, and the
    customer was told by e-mail."""
    clock = FakeClock(T0)
    with HostServer(store, clock=clock, key_lifetime_s=3600) as host:
        client = WireClient(host.address)
        try:
            client.sign_in()
            # two failures earlier the same evening
            for n, minute in ((1, 10), (2, 40)):
                at = datetime(2026, 12, 2, 10, minute)
                journal_entry(
                    store, entry_key=f"card:{n}", state="not_processed", stan=f"00009{n}", amount_minor=500,
                    note="line 1 timed out", created_at=at, updated_at=at,
                )  # fmt: skip
            sale = client.sale_message(1250)
            answer = client.send(sale)
            assert answer.code == "00"
            clock.advance(60)
            assert client.send(client.reversal_of(sale)).code == "00"
        finally:
            client.close()
    stan, rrn = sale["11"], answer.message["37"]
    journal_entry(store, entry_key="card:3", state="reversed", stan=stan, amount_minor=1250,
                  note="line 1 timed out", updated_at=clock.now())  # fmt: skip
    reference = f"000001.{stan}"
    fact_id = f"payment_cancelled:{TID}:{reference}"
    with store.engine.begin() as conn:
        conn.execute(
            insert(backoffice_facts).values(
                message_id=fact_id, tid=TID, kind="payment_cancelled", reference=reference,
                recipient="li@example.com", payload="{}", received_at=clock.now(),
            )
        )  # fmt: skip
        fan_out(
            conn,
            MessageKind.PAYMENT_CANCELLED,
            {"id": fact_id, "at": clock.now().isoformat(), "mid": MID, "tid": TID, "amount_minor": 1250,
             "contact": "li@example.com", "pan_masked": "622202*********0123"},
            clock.now(),
        )  # fmt: skip
    with SmtpSink() as sink:
        deliver(store, sink, clock)
        sink.wait_for(1)
    yield {"rrn": rrn, "stan": stan, "reference": reference}


def test_diagnosis_of_a_timed_out_sale_in_both_languages(
    store: HostStore, timed_out_sale: dict[str, str]
) -> None:
    with store.engine.connect() as conn:
        by_rrn = diagnose(conn, timed_out_sale["rrn"])
        by_trace = diagnose(conn, timed_out_sale["reference"])
        by_stan = diagnose(conn, str(int(timed_out_sale["stan"])))
    en = by_rrn.text("en")
    assert by_rrn.found
    assert f"At 19:02 {TID} sent the ¥12.50 sale and got no usable answer (line 1 timed out)." in en
    assert "The terminal reversed it at 19:03." in en
    assert "That is the third failure today on 12345678." in en
    assert "The customer was charged ¥12.50 at 19:02 and automatically refunded at 19:03." in en
    assert "Told by e-mail (l***@example.com) at 19:03." in en
    zh = by_rrn.text("zh")
    assert "这是12345678今天第3笔失败的交易。" in zh and "自动退回" in zh and "通过邮件告知" in zh
    assert by_trace.sentences == by_rrn.sentences == by_stan.sentences
    assert by_rrn.facts["rrn"] == timed_out_sale["rrn"] and by_rrn.facts["amount_minor"] == 1250


def test_payment_story_is_complete_in_time_order_and_plain_json(
    store: HostStore, timed_out_sale: dict[str, str]
) -> None:
    with store.engine.connect() as conn:
        story = payment_story(conn, timed_out_sale["rrn"])
    assert story.found
    assert [r.fields["kind"] for r in story.host] == ["sale", "reversal"]
    assert story.host[0].fields["pan_masked"] == "622202*********0123"
    assert len(story.ledger) == 4  # the sale's two legs and the reversal's two
    assert len(story.issuer) == 2  # the bank told the cardholder of the charge and of the credit
    (note,) = story.notifications
    assert (note.channel, note.state, note.recipient) == ("email", "delivered", "l***@example.com")
    assert [a["outcome"] for a in note.attempts] == ["delivered"]
    times = [r.at for r in story.timeline if r.at is not None]
    assert times == sorted(times) and len(story.timeline) >= 10
    text = story.to_json()
    doc = json.loads(text)
    assert full_card_numbers(doc) == [] and PAN not in text
    assert "li@example.com" not in text  # contacts only masked


def test_wallet_order_and_nothing_found(store: HostStore) -> None:
    journal_entry(store, entry_key="wallet:1", rail="wallet", kind="qr_pay", state="success", stan="000004",
                  order_no="T1202190200001", amount_minor=3300, card_masked="134567********1234")  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(
            insert(wallet_statement_rows).values(
                mch_id="1900000109", bill_date="20261202", line_no=2, trade_time=T0,
                out_trade_no="T1202190200001", transaction_id="42000000001", trade_state="SUCCESS",
                brand="WX", total_minor=3300, imported_at=T0,
            )
        )  # fmt: skip
    with store.engine.connect() as conn:
        found = diagnose(conn, "T1202190200001")
        missing = diagnose(conn, "NO-SUCH-ORDER")
    assert "(order T1202190200001) was paid." in found.text("en")
    assert "The wallet's statement of 20261202 shows SUCCESS ¥33.00." in found.text("en")
    assert not missing.found and "check the trace, RRN or order number" in missing.text("en")


def test_the_command_prints_it(store: HostStore, timed_out_sale: dict[str, str]) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["diagnose", timed_out_sale["rrn"], "--db", store.url, "--lang", "en"])
    assert result.exit_code == 0, result.output
    assert "automatically refunded at 19:03" in result.output and "自动" not in result.output
    both = runner.invoke(app, ["diagnose", timed_out_sale["reference"], "--db", store.url])
    assert both.exit_code == 0 and "自动退回" in both.output and "automatically refunded" in both.output
    none = runner.invoke(app, ["diagnose", "999999999999", "--db", store.url])
    assert none.exit_code == 1 and "Nothing in the records" in none.output
