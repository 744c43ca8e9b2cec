"""Reconciliation of generated business days with faults planted at known payments: every fault is
found with its class and planned action, a clean day yields none, reruns find the same records,
the ageing window keeps late partners pending; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner

from tillroll.cli import app
from tillroll.recon.generate import DayGenerator, DaySpec, Expected, Fault, expected, load, plant
from tillroll.recon.model import ExceptionClass
from tillroll.recon.run import ReconConfig, run_day
from tillroll.recon.statement import import_statement
from tillroll.store import make_engine, migrate
from tillroll.store.tables import backoffice_facts, recon_exceptions, recon_runs, statement_problems
from tillroll.wallet.bill import HEADER

DAY = date(2026, 12, 1)
AFTER = datetime(2026, 12, 1, 18, 0)  # 02:00 on 2 December in Beijing: the day is over and aged
PAYMENTS = 600


def _store(url: str) -> Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine


@pytest.fixture
def store(db_url: str) -> Iterator[Engine]:
    engine = _store(db_url)
    yield engine
    engine.dispose()


def found(engine: Engine) -> set[Expected]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(recon_exceptions.c["class"], recon_exceptions.c.key, recon_exceptions.c.evidence)
        )
        return {Expected(ExceptionClass(c), k, tuple(json.loads(e)["planned"])) for c, k, e in rows}


def test_every_planted_fault_is_found_with_its_class_and_planned_action(store: Engine) -> None:
    engine = store
    spec = DaySpec(DAY, PAYMENTS, plant(PAYMENTS, list(Fault), seed=8))
    load(engine, spec)
    seen: list[list[int]] = []
    result = run_day(engine, "2026-12-01", now=AFTER, after=seen.append)
    want = expected(spec)
    assert found(engine) == want
    assert {c for c in ExceptionClass} == {e.cls for e in want}  # every class is planted
    assert result.found == {c.value: sum(1 for e in want if e.cls is c) for c in ExceptionClass}
    assert seen == [result.opened] and len(result.opened) == len(want)
    with engine.connect() as conn:
        rows = conn.execute(select(recon_exceptions).order_by(recon_exceptions.c.id)).mappings().all()
        summary = json.loads(conn.execute(select(recon_runs.c.summary)).scalar_one())
    assert [r["id"] for r in rows] == result.opened
    assert {r["state"] for r in rows} == {"open"} and {r["business_date"] for r in rows} == {"2026-12-01"}
    by_key = {(r["class"], r["key"]): r for r in rows}
    gen = DayGenerator(spec)
    never_saw = next(i for i, f in spec.faults.items() if f is Fault.CARD_NEVER_SAW)
    row = by_key[("charged_no_receipt", f"card:rrn:1{never_saw:011d}")]
    evidence = json.loads(row["evidence"])
    assert evidence["terminal_saw_approval"] is False and evidence["matched_by"] == "tid_batch_stan"
    assert evidence["host"]["status"] == "approved" and evidence["journal"]["state"] == "unknown"
    assert (
        row["tid"] == f"T{never_saw % spec.n_terminals:07d}"
        and row["amount_minor"] == 100 + never_saw * 7919 % 99900
    )
    assert gen.lo <= AFTER
    no_slip = next(i for i, f in spec.faults.items() if f is Fault.WALLET_NO_SLIP)
    assert json.loads(by_key[("charged_no_receipt", f"wallet:W{no_slip:011d}")]["evidence"])[
        "terminal_saw_approval"
    ]
    assert summary["sources"]["journal_card"] > 0 and summary["classes"] == result.found
    assert summary["pending"] == {"card": 0, "wallet": 0}


def test_a_clean_day_yields_no_exception(store: Engine) -> None:
    engine = store
    load(engine, DaySpec(DAY, PAYMENTS))
    result = run_day(engine, DAY, now=AFTER)
    assert (result.opened, result.found, found(engine)) == ([], {}, set())
    assert result.summary["sources"]["host"] == result.summary["sources"]["journal_card"] > 0
    assert result.summary["sources"]["statement"] == result.summary["sources"]["journal_wallet"] > 0


def test_one_connection_or_two_find_the_same_on_sqlite(tmp_path: Path) -> None:
    """On a SQLite file the wallet rail and the host's rules run on a second connection beside
    the card rail; on one connection (as on PostgreSQL) the same statements find the same."""
    engine = _store(f"sqlite:///{tmp_path / 'two.db'}")
    spec = DaySpec(DAY, PAYMENTS, plant(PAYMENTS, list(Fault), seed=9))
    load(engine, spec)
    one = run_day(engine, DAY, now=AFTER, config=ReconConfig(beside=False))
    assert found(engine) == expected(spec)
    two = run_day(engine, DAY, now=AFTER)
    assert any(step.startswith("beside:") for step in two.steps_s)
    assert not any(step.startswith("beside:") for step in one.steps_s)
    assert found(engine) == expected(spec) and two.opened == []  # the same records, found again
    assert {**one.summary, "new_exceptions": 0} == {**two.summary, "new_exceptions": 0}
    engine.dispose()


def test_a_rerun_finds_the_same_records_and_leaves_resolved_ones_alone(store: Engine) -> None:
    engine = store
    spec = DaySpec(DAY, PAYMENTS, plant(PAYMENTS, [Fault.CARD_AMOUNT, Fault.WALLET_NO_JOURNAL], seed=3))
    load(engine, spec)
    first = run_day(engine, DAY, now=AFTER)
    assert len(first.opened) == 2
    resolved = first.opened[0]
    with engine.begin() as conn:
        conn.execute(
            update(recon_exceptions).where(recon_exceptions.c.id == resolved).values(state="resolved")
        )
    second = run_day(engine, DAY, now=AFTER + timedelta(hours=1))
    assert second.opened == [] and second.found == first.found  # found again, nothing new
    with engine.connect() as conn:
        rows = {r["id"]: r for r in conn.execute(select(recon_exceptions)).mappings()}
    assert sorted(rows) == sorted(first.opened)
    assert rows[resolved]["state"] == "resolved" and rows[resolved]["run_id"] == first.run_id
    [other] = [i for i in first.opened if i != resolved]
    assert rows[other]["state"] == "open" and rows[other]["run_id"] == second.run_id


def test_a_partner_within_the_ageing_window_is_pending_not_missing(store: Engine) -> None:
    engine = store
    spec = DaySpec(DAY, PAYMENTS, plant(PAYMENTS, [Fault.CARD_NO_JOURNAL], seed=5))
    load(engine, spec)
    [i] = spec.faults
    at = DayGenerator(spec).at(i)
    early = run_day(engine, DAY, now=at + timedelta(minutes=5))  # the upload may still come
    assert early.opened == [] and early.summary["pending"]["card"] == 1
    late = run_day(engine, DAY, now=at + timedelta(minutes=16))
    assert found(engine) == expected(spec) and len(late.opened) == 1


def test_wallet_payments_are_pending_until_the_statement_is_imported(store: Engine) -> None:
    engine = store
    faults = plant(PAYMENTS, [Fault.WALLET_REFUND_NOT_ON_STATEMENT, Fault.WALLET_RECEIPT_REVOKED], seed=6)
    spec = DaySpec(DAY, PAYMENTS, faults, statements=False)
    load(engine, spec)
    refund_fault = next(i for i, f in faults.items() if f is Fault.WALLET_REFUND_NOT_ON_STATEMENT)
    before = run_day(engine, DAY, now=AFTER)
    # the statement rows are there but not marked imported: the refund missing from it waits;
    # the REVOKED row is on the statement already, so that one is found
    assert {e.key for e in found(engine)} == {e.key for e in expected(spec)} - {
        f"wallet:R{refund_fault:011d}"
    }
    assert before.summary["pending"]["wallet"] >= 1 and before.summary["statement"]["imported"] is False
    header = ",".join(HEADER)
    import_statement(engine, header + "\n", mch_id="OTHER", bill_date="20261201", now=AFTER)
    import_statement(engine, header + "\n", mch_id="OTHER", bill_date="20261202", now=AFTER)
    run_day(engine, DAY, now=AFTER)
    assert found(engine) == expected(spec)


def test_a_wallet_payment_near_midnight_waits_for_the_next_days_statement(store: Engine) -> None:
    engine = store
    spec = DaySpec(DAY, 2000, plant(2000, [Fault.WALLET_REFUND_NOT_ON_STATEMENT], seed=2))
    load(engine, spec)
    gen = DayGenerator(spec)
    last = max(i for i in range(2000) if i % 10 < 3)
    assert gen.at(last) >= gen.hi - timedelta(minutes=15)
    with engine.begin() as conn:  # the last wallet payment's row is not on the day's statement
        conn.exec_driver_sql(f"DELETE FROM wallet_statement_rows WHERE out_trade_no = 'W{last:011d}'")
        conn.exec_driver_sql("DELETE FROM wallet_statement_imports WHERE bill_date = '20261202'")
    result = run_day(engine, DAY, now=AFTER)
    assert found(engine) == expected(spec) and result.summary["pending"]["wallet"] == 1
    header = ",".join(HEADER)
    import_statement(engine, header + "\n", mch_id="1900000109", bill_date="20261202", now=AFTER)
    run_day(engine, DAY, now=AFTER)
    late = {e.key for e in found(engine)} - {e.key for e in expected(spec)}
    assert late == {f"wallet:W{last:011d}"}  # now it is missing from both statements


def test_cli_recon_run_prints_what_it_found(store: Engine, db_url: str) -> None:
    engine = store
    load(engine, DaySpec(DAY, PAYMENTS, plant(PAYMENTS, [Fault.CARD_NEVER_SAW, Fault.SIGNIN_ALERT], seed=1)))
    with engine.begin() as conn:
        conn.execute(
            statement_problems.insert().values(
                mch_id="1900000109",
                bill_date="20261201",
                line_no=7,
                reason="bad amount",
                line_text="x",
                imported_at=AFTER,
            )
        )
    engine.dispose()
    # without the automatic actions: what the matcher found, twice alike (the actions' effects
    # are the exception service's tests)
    out = CliRunner().invoke(app, ["recon", "run", "--date", "2026-12-01", "--db", db_url, "--no-actions"])
    assert out.exit_code == 0, out.output
    assert "charged_no_receipt: 1" in out.output and "signin_failures: 1" in out.output
    assert "opened 2 new exception(s)" in out.output
    assert "statement lines that could not be read: 1" in out.output
    again = CliRunner().invoke(
        app, ["recon", "run", "--date", "2026-12-01", "--db", db_url, "--json", "--no-actions"]
    )
    doc = json.loads(again.stdout)
    assert doc["opened"] == [] and doc["classes"] == {"charged_no_receipt": 1, "signin_failures": 1}
    bad = CliRunner().invoke(app, ["recon", "run", "--date", "1 Dec", "--db", db_url])
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output


@settings(max_examples=8, deadline=None)
@given(st.sets(st.sampled_from(list(Fault))), st.integers(0, 2**16))
def test_a_random_subset_of_faults_gives_exactly_its_exceptions(faults: set[Fault], seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = _store(f"sqlite:///{Path(tmp) / 'day.db'}")
        spec = DaySpec(DAY, 300, plant(300, sorted(faults), seed=seed), terminals=5)
        load(engine, spec)
        run_day(engine, DAY, now=AFTER, config=ReconConfig())
        assert found(engine) == expected(spec)
        engine.dispose()


def test_the_business_day_is_the_merchants_own(store: Engine) -> None:
    """Merchants in Berlin: their day is 23:00 to 23:00 UTC, not Beijing's 16:00 to 16:00. (A
    payment only on the statement has no merchant: it belongs to the statement's Beijing day,
    so that fault is left out here.)"""
    faults = plant(PAYMENTS, [f for f in Fault if f is not Fault.WALLET_NO_JOURNAL], seed=11)
    spec = DaySpec(DAY, PAYMENTS, faults, tz="Europe/Berlin")
    load(store, spec)
    gen = DayGenerator(spec)
    assert (gen.lo, gen.hi) == (datetime(2026, 11, 30, 23, 0), datetime(2026, 12, 1, 23, 0))
    run_day(store, DAY, now=gen.hi + timedelta(hours=2))
    assert found(store) == expected(spec)
    assert run_day(store, date(2026, 11, 30), now=gen.hi + timedelta(hours=2)).opened == []  # the day before


def test_an_e_receipt_kept_for_the_merchant_told_the_customer_nothing(store: Engine) -> None:
    """Rule N is about a customer told "paid": an e-receipt fact with no customer contact (the
    slip kept for the merchant) of a sale that was then reversed is no missing notice."""
    engine = store
    spec = DaySpec(
        DAY, PAYMENTS, plant(PAYMENTS, [Fault.CARD_TOLD_REVERSED, Fault.WALLET_TOLD_REVOKED], seed=3)
    )
    load(engine, spec)
    with engine.begin() as conn:
        conn.execute(
            update(backoffice_facts)
            .where(backoffice_facts.c.kind == "e_receipt")
            .values(recipient="merchant")
        )
    run_day(engine, DAY, now=AFTER)
    told = {e for e in found(engine) if e.cls is ExceptionClass.NOTIFIED_NOT_FINAL}
    assert told == set()
    assert {e.cls for e in expected(spec)} >= {
        ExceptionClass.NOTIFIED_NOT_FINAL
    }  # planted, with a contact it is found


def test_two_runs_of_one_day_racing_open_each_exception_once(store: Engine) -> None:
    """The web schedule and a CLI run (or two web processes) reconcile the same day at once: each
    exception is opened by exactly one of them, so its automatic actions are taken once."""
    engine = store
    spec = DaySpec(DAY, PAYMENTS, plant(PAYMENTS, list(Fault), seed=8))
    load(engine, spec)
    start = threading.Barrier(2, timeout=30)
    opened: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            opened.append(run_day(engine, DAY, now=AFTER).opened)
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == 2
    first, second = opened
    assert set(first).isdisjoint(second)
    with engine.connect() as conn:
        every = sorted(conn.execute(select(recon_exceptions.c.id)).scalars())
    assert sorted(first + second) == every
    assert found(engine) == expected(spec)
