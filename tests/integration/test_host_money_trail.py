"""Refunds, settlement, batch upload, the ledger and store faults at the host (issue 3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostwire import EXPIRY, MID, PAN, PIN, TID, TMK, WireClient
from sqlalchemy import select

from tillroll import ledger
from tillroll.clock import FakeClock
from tillroll.host import HostServer, InjectedCrashAfterCommit, InjectedStoreFailure
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance, card_messages
from tillroll.host.report import ledger_problems, settlement_report, write_csv
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.messages import Message
from tillroll.store.tables import batch_differences, settlements, transactions

OPENING = 100_000


@pytest.fixture
def store(db_url: str) -> Iterator[HostStore]:
    s = open_store(db_url)
    add_merchant(s, MID, "一号便利店")
    add_terminal(s, TID, MID, TMK)
    add_card(s, PAN, EXPIRY, PIN, OPENING)
    yield s
    s.engine.dispose()


class Faults:
    """Arms one injected failure at a named point of the pipeline."""

    def __init__(self) -> None:
        self.armed: dict[str, type[Exception]] = {}

    def __call__(self, point: str, msg: Message) -> None:
        exc = self.armed.pop(point, None)
        if exc is not None:
            raise exc(f"injected at {point}")


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def client(store: HostStore, faults: Faults) -> Iterator[WireClient]:
    with HostServer(store, clock=FakeClock()) as host:
        assert host._service is not None
        host._service.pipeline.fault_hook = faults
        c = WireClient(host.address)
        c.sign_in()
        yield c
        c.close()


def _sale(client: WireClient, amount: int) -> tuple[Message, Message]:
    sale = client.sale_message(amount, pin=None)
    ans = client.send(sale)
    assert ans.code == "00"
    return sale, ans.message


def _ledger_sound(store: HostStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        assert ledger_problems(conn) == []
        return ledger.balances(conn)


def test_partial_refunds_never_exceed_the_original(client: WireClient, store: HostStore) -> None:
    sale, ans = _sale(client, 10_000)
    assert client.send(client.refund_message(sale, ans, 4_000)).code == "00"
    assert client.send(client.refund_message(sale, ans, 6_001)).code == "61"
    assert client.send(client.refund_message(sale, ans, 10_001)).code == "64"
    assert client.send(client.refund_message(sale, ans, 6_000)).code == "00"
    assert client.send(client.refund_message(sale, ans, 1)).code == "61"
    assert card_balance(store, PAN) == OPENING
    assert "退货退回40.00元" in card_messages(store, PAN)[1]
    balances = _ledger_sound(store)
    assert balances[ledger.CLEARING] == 0


def test_refund_retry_replays_and_never_pays_twice(client: WireClient, store: HostStore) -> None:
    sale, ans = _sale(client, 5_000)
    refund = client.refund_message(sale, ans, 5_000)
    first = client.send(refund)
    second = client.send(refund)
    assert first.code == second.code == "00"
    assert first.message["37"] == second.message["37"]
    assert card_balance(store, PAN) == OPENING


def test_refund_of_voided_or_unknown_original(client: WireClient) -> None:
    sale, ans = _sale(client, 2_000)
    assert client.send(client.void_message(sale, ans)).code == "00"
    assert client.send(client.refund_message(sale, ans, 100)).code == "12"
    unknown = client.refund_message(sale, ans, 100).with_fields(f37="000000999999")
    assert client.send(unknown).code == "25"


def test_settlement_balanced_closes_the_batch_and_pays_the_merchant(
    client: WireClient, store: HostStore, tmp_path: Path
) -> None:
    sale1, ans1 = _sale(client, 10_000)
    sale2, ans2 = _sale(client, 5_000)
    assert client.send(client.void_message(sale2, ans2)).code == "00"
    assert client.send(client.refund_message(sale1, ans1, 1_000)).code == "00"
    ans = client.send(client.settle_message(10_000, 1, 1_000, 1))
    assert ans.code == "00" and ans.mac_ok
    assert ans.message["48"][:31] == f"{10_000:012d}001{1_000:012d}0011"
    # The batch is closed: anything but its upload now needs a new sign-in, into batch 2.
    assert client.send(client.sale_message(100, pin=None)).code == "77"
    client.sign_in()
    assert client.batch == "000002"
    balances = _ledger_sound(store)
    fee = (10_000 * 6000 + 500_000) // 1_000_000
    assert balances[ledger.merchant(MID)] == 9_000 - fee
    assert balances[ledger.FEES] == fee
    assert balances.get(ledger.CLEARING, 0) == 0
    day = FakeClock().now().date()
    with store.engine.connect() as conn:
        (row,) = settlement_report(conn, day)
        # one merchant's report is that merchant's rows, read as such; another's has none of them
        assert settlement_report(conn, day, mid=MID) == [row]
        assert settlement_report(conn, day, mid="898999999999999") == []
    assert (row.sale_count, row.gross_minor, row.refund_count, row.refunds_minor) == (1, 10_000, 1, 1_000)
    assert (row.fees_minor, row.net_minor) == (fee, 9_000 - fee)
    path = tmp_path / "report.csv"
    write_csv([row], path)
    assert path.read_text().splitlines()[1].startswith(f"{MID},一号便利店,{TID},1,1,10000,1,1000,0,0,{fee},")


def test_not_balanced_then_upload_records_each_difference(client: WireClient, store: HostStore) -> None:
    sale1, _ = _sale(client, 1_000)
    sale2, _ = _sale(client, 2_000)
    # The terminal believes in 3 sales: one the host never approved, one with another amount.
    ans = client.send(client.settle_message(1_000 + 2_500 + 700, 3, 0, 0))
    assert ans.code == "00" and ans.message["48"][30] == "2"
    items = [(sale1["11"], PAN, 1_000), (sale2["11"], PAN, 2_500), ("000099", PAN, 700)]
    assert client.send(client.upload_message(items)).code == "00"
    assert client.send(client.upload_end_message(3)).code == "00"
    with store.engine.connect() as conn:
        diffs = {
            (r.stan, r.difference)
            for r in conn.execute(select(batch_differences.c.stan, batch_differences.c.difference))
        }
        row = conn.execute(select(settlements.c.balanced, settlements.c.upload_items)).one()
    assert diffs == {(sale2["11"], "amount_differs"), ("000099", "missing_at_host")}
    assert tuple(row) == (0, 3)


def test_upload_reports_items_the_terminal_did_not_send(client: WireClient, store: HostStore) -> None:
    sale1, _ = _sale(client, 1_000)
    sale2, _ = _sale(client, 2_000)
    assert client.send(client.settle_message(1_000, 1, 0, 0)).message["48"][30] == "2"
    assert client.send(client.upload_message([(sale1["11"], PAN, 1_000)])).code == "00"
    assert client.send(client.upload_end_message(1)).code == "00"
    with store.engine.connect() as conn:
        diffs = list(conn.execute(select(batch_differences.c.stan, batch_differences.c.difference)))
    assert [tuple(d) for d in diffs] == [(sale2["11"], "missing_at_terminal")]


def test_reversal_after_settlement_becomes_an_automatic_refund(client: WireClient, store: HostStore) -> None:
    sale, _ = _sale(client, 8_800)
    assert client.send(client.settle_message(8_800, 1, 0, 0)).code == "00"
    client.sign_in()
    assert client.send(client.reversal_of(sale, "06")).code == "00"
    assert client.send(client.reversal_of(sale, "06")).code == "00"  # a repeat changes nothing
    assert card_balance(store, PAN) == OPENING
    assert "自动退款退回88.00元" in card_messages(store, PAN)[-1]
    with store.engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(transactions.c.kind).order_by(transactions.c.id))]
    assert kinds == ["sale", "auto_refund"]
    balances = _ledger_sound(store)
    fee = (8_800 * 6000 + 500_000) // 1_000_000
    assert balances[ledger.merchant(MID)] == -fee  # paid out, then clawed back
    with store.engine.connect() as conn:
        (row,) = settlement_report(conn, FakeClock().now().date())
    assert (row.auto_refund_count, row.auto_refunds_minor, row.net_minor) == (1, 8_800, -fee)


def test_store_failure_rolls_back_whole_and_the_retry_completes_once(
    client: WireClient, store: HostStore, faults: Faults
) -> None:
    sale, ans = _sale(client, 3_000)
    refund = client.refund_message(sale, ans, 3_000)
    faults.armed["before_commit"] = InjectedStoreFailure
    failed = client.send(refund)
    assert failed.code == "96" and failed.mac_ok
    assert card_balance(store, PAN) == OPENING - 3_000
    assert client.send(refund).code == "00"
    assert client.send(refund).code == "00"
    assert card_balance(store, PAN) == OPENING
    assert len(card_messages(store, PAN)) == 2
    _ledger_sound(store)


def test_crash_between_commit_and_response_is_survived_by_replay(
    client: WireClient, store: HostStore, faults: Faults
) -> None:
    sale = client.sale_message(4_000, pin=None)
    faults.armed["after_commit"] = InjectedCrashAfterCommit
    with pytest.raises(ConnectionError):
        client.send(sale)
    client.close()
    again = client.send(sale)
    assert again.code == "00"
    assert card_balance(store, PAN) == OPENING - 4_000
    assert len(card_messages(store, PAN)) == 1


def test_a_lost_settlement_answer_can_be_asked_for_again(client: WireClient) -> None:
    _sale(client, 2_500)
    settle = client.settle_message(2_500, 1, 0, 0)
    first = client.send(settle)
    assert first.code == "00" and first.message["48"][30] == "1"
    again = client.send(settle)  # the same request: the stored answer, though the batch is closed
    assert again.code == "00" and again.mac_ok
    assert again.message["48"] == first.message["48"] and again.message["37"] == first.message["37"]
    other = client.settle_message(2_500, 1, 0, 0)  # a new settlement of the closed batch
    assert client.send(other).code == "77"
