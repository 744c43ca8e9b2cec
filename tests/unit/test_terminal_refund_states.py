"""The refund and settlement state tables, the journal that enforces them, and refund input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from tillroll.crypto.keystore import KeyStore
from tillroll.iso8583.field48 import SettlementTotals
from tillroll.iso8583.messages import Message
from tillroll.terminal import (
    HostAddress,
    IllegalTransition,
    InputError,
    Outcome,
    RefundState,
    SettlementState,
    Terminal,
    TerminalConfig,
    TxnKind,
)
from tillroll.terminal.journal import SCHEMA_VERSION, Journal
from tillroll.terminal.states import (
    REFUND_OPEN,
    REFUND_TRANSITIONS,
    SETTLEMENT_TRANSITIONS,
    check,
)

NOW = datetime(2026, 11, 29, 9, 30)
CJK = re.compile(r"[\u4e00-\u9fff]")


def test_refund_table_is_the_documented_machine() -> None:
    r = RefundState
    allowed = {(a, b) for a, nexts in REFUND_TRANSITIONS.items() for b in nexts}
    assert allowed == {
        (r.REQUESTED, r.SUBMITTED),
        (r.REQUESTED, r.UNKNOWN),
        (r.SUBMITTED, r.APPROVED),
        (r.SUBMITTED, r.DECLINED),
        (r.SUBMITTED, r.UNKNOWN),
        (r.UNKNOWN, r.SUBMITTED),  # retried: the same request again
    }
    assert set(REFUND_TRANSITIONS) == set(RefundState)
    assert {r.REQUESTED, r.SUBMITTED, r.UNKNOWN} == REFUND_OPEN  # never an end


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (RefundState.APPROVED, RefundState.SUBMITTED),  # an approved refund is never sent again
        (RefundState.DECLINED, RefundState.SUBMITTED),
        (RefundState.UNKNOWN, RefundState.APPROVED),  # only an answer to a send approves
        (RefundState.REQUESTED, RefundState.APPROVED),
        (RefundState.APPROVED, RefundState.UNKNOWN),
    ],
)
def test_illegal_refund_moves_raise(current: RefundState, new: RefundState) -> None:
    with pytest.raises(IllegalTransition):
        check(REFUND_TRANSITIONS, current, new)


def test_settlement_table_ends_in_final_states() -> None:
    s = SettlementState
    assert SETTLEMENT_TRANSITIONS[s.REQUESTED] == {s.BALANCED, s.NOT_BALANCED, s.DECLINED, s.UNKNOWN}
    assert SETTLEMENT_TRANSITIONS[s.NOT_BALANCED] == {s.UPLOADED}
    for final in (s.BALANCED, s.UPLOADED, s.DECLINED, s.UNKNOWN):
        assert SETTLEMENT_TRANSITIONS[final] == frozenset()


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.REFUND_UNKNOWN,
        Outcome.REFUND_BLOCKED,
        Outcome.SETTLED,
        Outcome.SETTLED_NOT_BALANCED,
        Outcome.SETTLEMENT_UNKNOWN,
        Outcome.SETTLEMENT_BLOCKED,
    ],
)
def test_new_outcomes_speak_both_languages_and_never_say_system_error(outcome: Outcome) -> None:
    assert CJK.search(outcome.text) and re.search(r"[a-z]{4}", outcome.text)
    assert "system error" not in outcome.text.lower()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db", KeyStore(bytes(32)))
    yield j
    j.close()


def _refund_request(stan: str) -> Message:
    return Message(
        "0220",
        {
            "2": "6222021234567890123",
            "3": "200000",
            "4": "000000000400",
            "11": stan,
            "25": "00",
            "37": "000000000007",
            "60": "25000001000",
            "61": "0000010000021129",
            "63": "000",
        },
    )


def test_the_journal_walks_a_refund_through_its_table(journal: Journal) -> None:
    with journal.begin() as conn:
        txn_id = journal.record_request(
            conn,
            kind=TxnKind.REFUND,
            request=_refund_request("000003"),
            entry_mode="M",
            operator="001",
            now=NOW,
        )
    entry = journal.get(txn_id)
    assert entry.state is RefundState.REQUESTED and entry.reversal_state is None  # never reversed
    assert [e.id for e in journal.open_refunds("000000000007")] == [txn_id]
    for state in (RefundState.SUBMITTED, RefundState.UNKNOWN, RefundState.SUBMITTED, RefundState.APPROVED):
        with journal.begin() as conn:
            journal.move_refund(conn, txn_id, state, NOW)
    assert journal.open_refunds() == []
    with pytest.raises(IllegalTransition), journal.begin() as conn:
        journal.move_refund(conn, txn_id, RefundState.SUBMITTED, NOW)
    assert journal.get(txn_id).state is RefundState.APPROVED
    assert journal.totals("000001") == SettlementTotals(0, 0, 400, 1)


def test_totals_encode_as_field_48() -> None:
    digits = SettlementTotals(2_700, 2, 500, 1).field48()
    assert len(digits) == 62
    assert digits == "000000002700" + "002" + "000000000500" + "001" + "0" + "0" * 31
    assert SettlementTotals.parse(digits) == SettlementTotals(2_700, 2, 500, 1)


def test_a_version_1_journal_is_upgraded_by_opening_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path, KeyStore(bytes(32))).close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # what a version-1 journal looked like
        conn.execute(text("DROP TABLE settlements"))
        conn.execute(text("DELETE FROM counters WHERE name = 'schema'"))
    engine.dispose()
    j = Journal(path, KeyStore(bytes(32)))
    try:
        assert j.schema_version() == SCHEMA_VERSION == 3
        assert "settlements" in inspect(j.engine).get_table_names()
    finally:
        j.close()


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Terminal]:
    config = TerminalConfig(
        tid="10000001",
        mid="898310048990001",
        tmk=bytes(16),
        host=HostAddress("127.0.0.1", 1),  # nothing listens: input errors come before any IO
        connect_timeout_s=0.1,
    )
    t = Terminal(config, tmp_path / "pos")
    yield t
    t.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        ((400, "12345", "1129"), {}, "RRN"),
        ((400, "000000000007", "1332"), {}, "MMDD"),
        ((0, "000000000007", "1129"), {}, "amount"),
        ((400, "000000000007", "1129"), {}, "--trace"),  # not in this journal: trace and batch needed
        ((400, "000000000007", "1129"), {"trace": "12", "batch": "x"}, "batch"),
    ],
)
def test_refund_input_is_checked_before_anything_is_journalled(
    term: Terminal, args: tuple[int, str, str], kwargs: dict[str, str], says: str
) -> None:
    with pytest.raises(InputError, match=re.escape(says)):
        term.refund(*args, **kwargs)  # type: ignore[arg-type]
    assert term.entries() == []
