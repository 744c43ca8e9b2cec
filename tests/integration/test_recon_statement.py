"""The wallet statement import: exact yuan, every unreadable line reported, a day replaced whole;
fetched from a real running provider (signed GET /v1/bill)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner
from walletserver import MCH_ID, MCH_KEY, MCH_NAME, wallet_server

from tillroll.cli import app
from tillroll.clock import FakeClock
from tillroll.money import format_yuan
from tillroll.recon.statement import fetch_statement, import_statement, parse_statement, yuan_to_fen
from tillroll.store import make_engine, migrate
from tillroll.store.tables import statement_problems, wallet_statement_imports, wallet_statement_rows
from tillroll.wallet.admin import add_merchant, add_user, issue_code
from tillroll.wallet.bill import HEADER
from tillroll.wallet.config import WalletConfig

HEADER_LINE = ",".join(HEADER)
NOW = datetime(2026, 12, 2, 2, 0)
GOOD = "20261201120000,M1,A-1,4200001,SUCCESS,wx,12.50,,,,"


@given(st.integers(min_value=0, max_value=999_999_999_999))
def test_yuan_to_fen_is_exact(fen: int) -> None:
    assert yuan_to_fen(format_yuan(fen)) == fen


@pytest.mark.parametrize("text", ["12.5", "12", "1.234", "-1.00", "+1.00", "1e3", "12.50 ", "", "１２.５０"])
def test_yuan_to_fen_refuses_anything_but_two_decimals(text: str) -> None:
    with pytest.raises(ValueError, match="two decimals"):
        yuan_to_fen(text)


def test_every_unreadable_line_is_a_problem_with_its_line_and_reason() -> None:
    lines = [
        HEADER_LINE,
        GOOD,  # 2
        "20261201120001,M1,A-2,4200002,SUCCESS,wx,12.50,,,",  # 3 one column short
        "20261301120000,M1,A-3,4200003,SUCCESS,wx,1.00,,,,",  # 4 month 13
        "2026120112,M1,A-4,4200004,SUCCESS,wx,1.00,,,,",  # 5 short time
        "20261201120000,M1,A-5,4200005,SUCCESS,wx,1.5,,,,",  # 6 one decimal
        "20261201120000,M1,A-6,4200006,CLOSED,wx,1.00,,,,",  # 7 unknown state
        "20261201120000,M1,A-1,4200001,REFUND,wx,12.50,,,,",  # 8 refund without its columns
        "20261201120000,M1,A-1,4200001,REFUND,wx,12.50,AR-1,5000001,20.00,SUCCESS",  # 9 refund > total
        "20261201120000,M1,A-1,4200001,REFUND,wx,12.50,AR-2,5000002,2.00,DONE",  # 10 unknown status
        GOOD,  # 11 duplicate of line 2
        "",  # 12 empty
        "20261201120000,M2,A-7,4200007,SUCCESS,wx,1.00,,,,",  # 13 another merchant
        "20261201120000,M1,A-8,4200008,SUCCESS,xx,1.00,,,,",  # 14 unknown brand
        "20261201120000,M1,A-9,4200009,SUCCESS,wx,1.00,AR-3,,,",  # 15 a payment with refund columns
        "20261201120000,M1,A-10,6222021234567890123,SUCCESS,wx,-1.00,,,,",  # 16 negative; digits masked
        "20261201120500,M1,A-1,4200001,REFUND,wx,12.50,AR-4,5000004,2.00,PROCESSING",  # 17 good refund
    ]
    parsed = parse_statement("\n".join(lines) + "\n", mch_id="M1")
    reasons = {p.line_no: p.reason for p in parsed.problems}
    assert [r.line_no for r in parsed.rows] == [2, 11, 17]  # a duplicate is kept and reported
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert "10 columns" in reasons[3]
    assert "real date" in reasons[4] and "yyyyMMddHHmmss" in reasons[5]
    assert "total_fee" in reasons[6] and "two decimals" in reasons[6]
    assert "unknown trade_state 'CLOSED'" in reasons[7]
    assert "without its refund columns" in reasons[8]
    assert "more than the order's total_fee" in reasons[9]
    assert "unknown refund_status 'DONE'" in reasons[10]
    assert reasons[11] == "duplicate of line 2 (A-1)"
    assert reasons[12] == "empty line"
    assert "not this statement's merchant" in reasons[13]
    assert "unknown brand" in reasons[14]
    assert "refund columns filled" in reasons[15]
    bad16 = next(p for p in parsed.problems if p.line_no == 16)
    assert "6222021234567890123" not in bad16.line_text and "622202*********0123" in bad16.line_text
    assert parsed.rows[0].total_minor == 1250 and parsed.rows[0].trade_time == datetime(2026, 12, 1, 4, 0)
    assert parsed.rows[2].refund_minor == 200 and parsed.rows[2].refund_status == "PROCESSING"
    assert len(parsed.rows) + len(parsed.problems) == len(lines) - 1 + 1  # every line, plus line 11 twice


def test_a_bad_header_makes_every_line_a_problem() -> None:
    parsed = parse_statement("trade_time,mch_id,out_trade_no\n" + GOOD + "\n", mch_id="M1")
    assert parsed.rows == []
    assert [(p.line_no, p.reason.split(":")[0]) for p in parsed.problems] == [
        (1, "bad header"),
        (2, "not read"),
    ]


def test_import_replaces_the_day_in_one_transaction(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    first = "\n".join([HEADER_LINE, GOOD, "20261201120001,M1,A-2,4200002,SUCCESS,wx,3.00,,,", ""])
    other_day = "\n".join([HEADER_LINE, "20261202120000,M1,B-1,4200009,SUCCESS,ali,7.00,,,,", ""])
    import_statement(engine, first, mch_id="M1", bill_date="20261201", now=NOW)
    import_statement(engine, other_day, mch_id="M1", bill_date="20261202", now=NOW)
    second = "\n".join([HEADER_LINE, "20261201130000,M1,A-3,4200003,REVOKED,wx,9.99,,,,", ""])
    result = import_statement(engine, second, mch_id="M1", bill_date="20261201", now=NOW)
    assert (result.rows, result.problems) == (1, [])
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                wallet_statement_rows.c.bill_date,
                wallet_statement_rows.c.out_trade_no,
                wallet_statement_rows.c.total_minor,
            ).order_by(wallet_statement_rows.c.id)
        ).all()
        problems = conn.execute(select(statement_problems.c.line_no)).all()
        imports = conn.execute(
            select(wallet_statement_imports.c.bill_date, wallet_statement_imports.c.rows).order_by(
                wallet_statement_imports.c.bill_date
            )
        ).all()
    assert rows == [("20261202", "B-1", 700), ("20261201", "A-3", 999)]
    assert problems == []  # the first import's problem (line 3) went with its day
    assert imports == [("20261201", 1), ("20261202", 1)]
    engine.dispose()


def test_fetched_from_a_running_provider_and_imported(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 12, 1, 4, 0))  # 12:00 in Beijing
    with wallet_server(db_url, WalletConfig(refund_settle_s=0), clock) as wallet:
        add_merchant(wallet.engine, MCH_ID, MCH_NAME, MCH_KEY)
        add_user(wallet.engine, "ada", 1000_00)
        paid = wallet.call(
            "/v1/pay", auth_code=issue_code(wallet.engine, "ada", clock), out_trade_no="F-1", total_fee=1234
        )
        clock.advance(60)
        wallet.call("/v1/refund", out_trade_no="F-1", out_refund_no="FR-1", total_fee=1234, refund_fee=34)
        text = fetch_statement(wallet.base_url, mch_id=MCH_ID, key=MCH_KEY, bill_date="20261201")
    engine = make_engine(f"sqlite:///{tmp_path / 'backoffice.db'}")  # the back office's own store
    migrate(engine)
    result = import_statement(engine, text, mch_id=MCH_ID, bill_date="20261201", now=NOW)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                wallet_statement_rows.c.line_no,
                wallet_statement_rows.c.out_trade_no,
                wallet_statement_rows.c.trade_state,
                wallet_statement_rows.c.total_minor,
                wallet_statement_rows.c.refund_minor,
                wallet_statement_rows.c.transaction_id,
                wallet_statement_rows.c.trade_time,
            ).order_by(wallet_statement_rows.c.line_no)
        ).all()
    engine.dispose()
    assert result.problems == []
    assert rows == [
        (2, "F-1", "SUCCESS", 1234, None, paid["transaction_id"], datetime(2026, 12, 1, 4, 0)),
        (3, "F-1", "REFUND", 1234, 34, paid["transaction_id"], datetime(2026, 12, 1, 4, 1)),
    ]


def test_cli_import_statement_lists_the_lines_it_could_not_read(db_url: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "bill.csv"
    csv_file.write_text(
        "\n".join([HEADER_LINE, GOOD, "20261201120000,M1,A-5,4200005,SUCCESS,wx,1.5,,,,", ""])
    )
    out = CliRunner().invoke(
        app,
        [
            "recon",
            "import-statement",
            str(csv_file),
            "--mch-id",
            "M1",
            "--date",
            "2026-12-01",
            "--db",
            db_url,
        ],
    )
    assert out.exit_code == 0, out.output
    assert "imported 1 row(s) of M1 20261201" in out.output
    assert "line 3: total_fee: amount '1.5' is not yuan with exactly two decimals" in out.output
    bad = CliRunner().invoke(
        app,
        [
            "recon",
            "import-statement",
            str(csv_file),
            "--mch-id",
            "M1",
            "--date",
            "2026-13-01",
            "--db",
            db_url,
        ],
    )
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
