"""The demo's closing check and its report.

The check reads every journal a counter ever had — a replaced device's old journal too (PROFILE
§6: an auditor recovers it from the dead device) — the host's tables, the bank and the ledger,
and names each broken promise: a host-approved payment nobody receipted, a reversed payment
without its reversal message, one RRN given to two payments (an earlier answer replayed to a new
request), a card whose balance is not what the journals say, a batch whose host totals differ
from the journal that sold in it, a host-closed batch that never reached the merchant, and
anything left unknown.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from rich.table import Table
from sqlalchemy import select

from tillroll.host.admin import card_balance, card_messages
from tillroll.host.report import ledger_problems
from tillroll.money import format_yuan
from tillroll.pan import mask_pan
from tillroll.store.tables import settlements, transactions
from tillroll.terminal import Entry, Outcome, ReceiptState, RefundState, SettlementState, TxnKind, TxnState

if TYPE_CHECKING:
    from tillroll.sim.demo import Demo

UNSETTLED_STATES = (TxnState.PENDING, TxnState.SENT, TxnState.UNKNOWN, TxnState.REVERSAL_PENDING,
                    RefundState.REQUESTED, RefundState.SUBMITTED, RefundState.UNKNOWN)  # fmt: skip
UNDONE = (TxnState.VOIDED, TxnState.REVERSED)


def journal_problems(demo: Demo) -> tuple[list[str], dict[tuple[str, str, str], Entry]]:
    """What each journal (current and retired) says on its own, and every entry by its key."""
    problems: list[str] = []
    journal: dict[tuple[str, str, str], Entry] = {}
    for c in demo.counters:
        owner: dict[tuple[str, str, str], int] = {}
        for n, device in enumerate(c.devices):
            for e in device.entries(10_000):
                key = (c.tid, e.batch, e.stan)
                if owner.setdefault(key, n) != n:  # a lost journal's keys used again (PROFILE §6)
                    problems.append(f"{c.tid} batch {e.batch} trace {e.stan}: used by two devices")
                journal.setdefault(key, e)
                if e.state in UNSETTLED_STATES:
                    problems.append(f"{c.tid} batch {e.batch} trace {e.stan}: still {e.state} after recover")
        if c.terminal.pending_reversals():
            problems.append(f"{c.tid}: reversals still pending after recover")
        if c.terminal.open_refunds():
            problems.append(f"{c.tid}: refunds still open after recover")
        settled = [st.state for st in c.terminal.settlements()]
        if not settled or settled[0] is not SettlementState.BALANCED:
            problems.append(f"{c.tid}: the end-of-day settlement is not balanced: {settled[:1]}")
    return problems, journal


def replay_problems(demo: Demo) -> list[str]:
    """No earlier answer replayed to a new request: every approved payment in every journal has
    its own RRN."""
    seen: dict[str, str] = {}
    problems = []
    for c in demo.counters:
        for n, device in enumerate(c.devices):
            for e in device.entries(10_000):
                if e.kind not in (TxnKind.SALE, TxnKind.REFUND) or e.rrn is None or e.response_code != "00":
                    continue
                where = f"{c.tid} device {n + 1} batch {e.batch} trace {e.stan}"
                if e.rrn in seen:
                    problems.append(f"RRN {e.rrn} answers two payments: {seen[e.rrn]} and {where} (replayed)")
                seen.setdefault(e.rrn, where)
    return problems


def card_problems(
    demo: Demo, host_sales: list[dict[str, object]], host_refunds: list[dict[str, object]]
) -> list[str]:
    """Each card's bank balance against the host's records and against the journals."""
    assert demo.store is not None
    problems = []
    journal_net: dict[str, int] = defaultdict(int)  # masked PAN: what the journals say it paid
    for c in demo.counters:
        for device in c.devices:
            entries = device.entries(10_000)
            by_rrn = {e.rrn: e for e in entries if e.kind is TxnKind.SALE and e.rrn}
            for e in entries:
                if e.kind is TxnKind.SALE and e.state is TxnState.APPROVED:
                    journal_net[e.pan_masked] -= e.amount_minor or 0
                elif e.kind is TxnKind.REFUND and e.state is RefundState.APPROVED:
                    # A voided or reversed sale gave back what its refunds had not (PROFILE §6).
                    orig = by_rrn.get(e.request.get("37") or "")
                    if orig is None or orig.state not in UNDONE:
                        journal_net[e.pan_masked] += e.amount_minor or 0
    reversed_by_card: dict[str, int] = defaultdict(int)
    for s in host_sales:
        if s["status"] == "reversed":
            reversed_by_card[str(s["pan_masked"])] += 1
    for pan, (_, _, opening) in demo.cards.items():
        masked = mask_pan(pan)
        reversals = [t for t in card_messages(demo.store, pan) if "冲正退回" in t]
        if len(reversals) != reversed_by_card[masked]:
            problems.append(
                f"card {masked}: {len(reversals)} reversal messages for "
                f"{reversed_by_card[masked]} reversed payments"
            )
        spent = sum(int(str(s["amount_minor"])) for s in host_sales
                    if s["pan_masked"] == masked and s["status"] == "approved")  # fmt: skip
        refunded = sum(int(str(r["amount_minor"])) for r in host_refunds if r["pan_masked"] == masked)
        balance = card_balance(demo.store, pan)
        if balance != opening - spent + refunded:
            problems.append(
                f"card {masked}: balance {balance}, the host's records give {opening - spent + refunded}"
            )
        if balance != opening + journal_net[masked]:
            problems.append(
                f"card {masked}: balance {balance}, "
                f"the terminals' journals give {opening + journal_net[masked]}"
            )
    return problems


def batch_problems(demo: Demo) -> list[str]:
    """Each batch the host closed against the journal that sold in it: the same totals, and
    every batch a journal sold in was closed (by the terminal, or by the host after the journal
    was lost, and then it shows in the settlement report as closed by the host)."""
    assert demo.store is not None
    with demo.store.engine.connect() as conn:
        closed = {(r["tid"], r["batch"]): r for r in conn.execute(select(settlements)).mappings()}
    problems = []
    for c in demo.counters:
        for n, device in enumerate(c.devices):
            retired = device is not c.terminal
            batches = {e.batch for e in device.entries(10_000) if e.kind in (TxnKind.SALE, TxnKind.REFUND)}
            for batch in sorted(batches):
                row = closed.get((c.tid, batch))
                where = f"{c.tid} device {n + 1} batch {batch}"
                if row is None:
                    problems.append(f"{where}: never closed, its sales never reach the merchant")
                    continue
                if retired and row["closed_by"] != "host":
                    problems.append(
                        f"{where}: the lost journal's batch was closed by {row['closed_by']}, not the host"
                    )
                mine = device.journal.totals(batch)
                theirs = (row["host_debit_minor"], row["host_debit_count"], row["host_credit_minor"],
                          row["host_credit_count"])  # fmt: skip
                ours = (mine.debit_minor, mine.debit_count, mine.credit_minor, mine.credit_count)
                if tuple(int(x) for x in theirs) != ours:
                    problems.append(f"{where}: host closed it with totals {theirs}, the journal says {ours}")
    return problems


def closing_check(demo: Demo) -> list[str]:
    """The closing check; every line it returns is a broken promise."""
    assert demo.store is not None
    problems, journal = journal_problems(demo)
    with demo.store.engine.connect() as conn:
        host = [dict(t) for t in conn.execute(select(transactions)).mappings()]
        problems += ledger_problems(conn)
    sales = [t for t in host if t["kind"] == "sale" and t["response_code"] == "00"]
    refunds = [t for t in host if t["kind"] == "refund" and t["status"] == "approved"]
    host_approved: dict[str, int] = defaultdict(int)
    for s in sales:
        if s["status"] == "approved":
            host_approved[str(s["tid"])] += int(s["amount_minor"])
    for t in sales + refunds:
        entry = journal.get((t["tid"], t["batch"], t["stan"]))
        if t["status"] == "reversed":
            continue
        if entry is None:
            problems.append(
                f"host approved {t['kind']} {t['tid']} trace {t['stan']} ({format_yuan(t['amount_minor'])}) "
                "but the terminal has no receipt for it and it is not reversed"
            )
        elif entry.receipt not in (ReceiptState.PRINTED, ReceiptState.OWED):
            problems.append(f"{t['kind']} {t['tid']} trace {t['stan']}: approved by the host, no receipt")
    terminal_approved: dict[str, int] = defaultdict(int)
    for c in demo.counters:
        for device in c.devices:  # old and new device alike: the host's totals cover both
            for e in device.entries(10_000):
                if e.kind is TxnKind.SALE and e.state is TxnState.APPROVED:
                    terminal_approved[c.tid] += e.amount_minor or 0
    if dict(terminal_approved) != dict(host_approved):
        problems.append(
            f"terminals' approved totals {dict(terminal_approved)} "
            f"differ from the host's {dict(host_approved)}"
        )
    problems += replay_problems(demo)
    problems += card_problems(demo, sales, refunds)
    problems += batch_problems(demo)
    return problems


def report(demo: Demo, problems: list[str]) -> None:
    console = demo.console
    table = Table(title="故障与结果 Faults and what happened", show_lines=True)
    for col in ("fault", "injected", "terminal showed", "what followed", "ok"):
        table.add_column(col)
    for f in demo.log.faults:
        table.add_row(f.name, f.injected, f.observed, f.followed, "✔" if f.ok else "✘")
    console.print(table)
    summary = Table(title="营业日汇总 The day")
    summary.add_column("outcome")
    summary.add_column("count", justify="right")
    for outcome in Outcome:
        n = demo.log.count(outcome)
        if n:
            summary.add_row(outcome.text, str(n))
    console.print(summary)
    for f in demo.log.faults:
        if not f.ok:
            problems.append(f"fault '{f.name}' did not end as it should: {f.observed} / {f.followed}")
    if problems:
        console.print("[bold red]闭店核对失败 closing check FAILED[/]")
        for p in problems:
            console.print(f"  [red]✘[/] {p}")
    else:
        console.print(
            "[bold green]闭店核对通过 closing check passed[/]: every host-approved payment is "
            "receipted (printed or owed) or reversed; every reversed payment's message is followed "
            "by its reversal message; no answer was given to two payments; terminals (old and new "
            "devices), host, bank and ledger agree, batch by batch; nothing is unknown."
        )
