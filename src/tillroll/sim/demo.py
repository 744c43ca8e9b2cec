"""`tillroll demo`: a scripted day at two counters, with the faults people meet, then a check.

One process runs the acquirer host (SQLite in a temporary folder), a receipt-printer emulator,
two fault-injecting lines (primary and backup) per terminal, and two terminals. About a hundred
sales, voids and balance inquiries go through; on the way a response is lost, a response's MAC is
damaged, the printer jams, the host's sign-in expires and a primary line goes down. The closing
check then proves that every host-approved payment is receipted (printed or owed) or reversed,
that every reversed payment's "you paid" message is followed by its reversal message, that the
terminals, the host, the bank and the ledger agree, and that nothing is left unknown.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from tillroll.clock import DEFAULT_MERCHANT_TZ, SystemClock, merchant_now, merchant_zone
from tillroll.host import HostServer, InjectedStoreFailure
from tillroll.host.admin import add_card, add_merchant, add_terminal, card_balance, card_messages
from tillroll.host.report import ledger_problems, report_table, settlement_report
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.messages import Message
from tillroll.money import format_yuan
from tillroll.pan import mask_pan
from tillroll.screen import wide_console
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.sim.printer_emulator import PrinterEmulator, PrinterState
from tillroll.store.tables import transactions
from tillroll.terminal import (
    Entry,
    Outcome,
    ReceiptState,
    Result,
    Terminal,
    TerminalConfig,
    TxnKind,
    TxnState,
)
from tillroll.terminal.config import HostAddress
from tillroll.terminal.states import RefundState, SettlementState

MID = "898100012345678"
MERCHANT = "一号便利店 No.1 Store"
KEY_LIFETIME_S = 3_600
FAULT_CARD = "6222021234567890123"
CARDS: dict[str, tuple[str, str, int]] = {  # pan: (expiry, pin, opening fen)
    "6222021234567890123": ("3012", "123456", 500_000),
    "6222020000000000011": ("2912", "111111", 300_000),
    "6222020000000000029": ("2806", "222222", 200_000),
    "6222020000000000037": ("3103", "333333", 150_000),
    "6222020000000000045": ("2911", "444444", 30_000),  # runs out of money during the day
}


class ShiftedClock(SystemClock):
    """Real time, plus an offset the demo moves forward (the host's clock only)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> datetime:
        return super().now() + timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return super().monotonic() + self.offset_s


class StoreFaults:
    """The host's fault hook: makes the store fail once, mid-request, for the next refund."""

    def __init__(self) -> None:
        self.refund_failures_armed = 0
        self.injected = 0

    def __call__(self, point: str, msg: Message) -> None:
        if point == "before_commit" and msg.mti == "0220" and self.refund_failures_armed:
            self.refund_failures_armed -= 1
            self.injected += 1
            raise InjectedStoreFailure("injected: the host's store fails while booking a refund")


@dataclass
class FaultRecord:
    name: str
    injected: str
    observed: str = ""
    followed: str = ""
    ok: bool = False


@dataclass
class Counter:
    terminal: Terminal
    primary: FaultProxy
    backup: FaultProxy
    tid: str


@dataclass
class DayLog:
    results: list[tuple[str, Result]] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for _, r in self.results if r.outcome is outcome)


class Demo:
    def __init__(self, work_dir: Path, console: Console, *, operations: int = 100, seed: int = 2026) -> None:
        self.work_dir = work_dir
        self.console = console
        self.operations = operations
        self.rng = random.Random(seed)
        self.host_clock = ShiftedClock()
        self.log = DayLog()
        self.store: HostStore | None = None
        self.host: HostServer | None = None
        self.printer: PrinterEmulator | None = None
        self.counters: list[Counter] = []
        self.store_faults = StoreFaults()

    # --- set-up and tear-down ------------------------------------------------------------------

    def start(self) -> None:
        # The host's master key lands beside its SQLite file, in the day's folder.
        self.store = open_store(f"sqlite:///{self.work_dir / 'host.db'}")
        add_merchant(self.store, MID, MERCHANT)
        for pan, (expiry, pin, opening) in CARDS.items():
            add_card(self.store, pan, expiry, pin, opening)
        self.host = HostServer(
            self.store, clock=self.host_clock, key_lifetime_s=KEY_LIFETIME_S, fault_hook=self.store_faults
        ).start()
        self.printer = PrinterEmulator()
        self.printer.start()
        for n in (1, 2):
            tid = f"1000000{n}"
            tmk = add_terminal(self.store, tid, MID)
            primary = FaultProxy(self.host.address)
            backup = FaultProxy(self.host.address)
            primary.start()
            backup.start()
            config = TerminalConfig(
                tid=tid,
                mid=MID,
                tmk=tmk,
                host=HostAddress(*primary.address),
                backup_host=HostAddress(*backup.address),
                printer_url=self.printer.url,
                merchant_name=MERCHANT,
                operator=f"00{n}",
                response_timeout_s=1.5,
                connect_timeout_s=1.0,
                key_lifetime_s=KEY_LIFETIME_S,
            )
            terminal = Terminal(config, self.work_dir / f"pos-{n}")
            self.counters.append(Counter(terminal, primary, backup, tid))

    def stop(self) -> None:
        for c in self.counters:
            c.terminal.close()
            c.primary.stop()
            c.backup.stop()
        if self.printer is not None:
            self.printer.stop()
        if self.host is not None:
            self.host.stop()
        if self.store is not None:
            self.store.engine.dispose()

    # --- the day -------------------------------------------------------------------------------

    def _card(self) -> tuple[str, str, str]:
        pan = self.rng.choice(list(CARDS))
        expiry, pin, _ = CARDS[pan]
        return pan, expiry, pin

    def _sale(
        self,
        counter: Counter,
        *,
        amount_minor: int | None = None,
        wrong_pin: bool = False,
        pan: str | None = None,
    ) -> Result:
        if pan is None:
            pan, expiry, pin = self._card()
        else:
            expiry, pin, _ = CARDS[pan]
        amount = amount_minor or self.rng.choice([350, 1250, 1999, 4800, 8850, 12_000, 26_600, 99_900])
        use_pin = wrong_pin or self.rng.random() < 0.5
        res = counter.terminal.sale(
            amount, pan, expiry, ("000000" if wrong_pin else pin) if use_pin else None
        )
        self.log.results.append((f"{counter.tid} sale {format_yuan(amount)} {mask_pan(pan)}", res))
        return res

    def _void(self, counter: Counter) -> Result | None:
        approved = [
            e
            for e in counter.terminal.entries(500)
            if e.kind is TxnKind.SALE and e.state is TxnState.APPROVED and e.batch == counter.terminal.batch
        ]
        if not approved:
            return None
        res = counter.terminal.void(self.rng.choice(approved).stan)
        self.log.results.append((f"{counter.tid} void", res))
        return res

    def _balance(self, counter: Counter) -> Result:
        pan, expiry, pin = self._card()
        res = counter.terminal.balance(pan, expiry, pin)
        self.log.results.append((f"{counter.tid} balance {mask_pan(pan)}", res))
        return res

    def _refundable(self, counter: Counter) -> list[Entry]:
        return [
            e
            for e in counter.terminal.entries(1000)
            if e.kind is TxnKind.SALE and e.state is TxnState.APPROVED
        ]

    def _refund(self, counter: Counter, entry: Entry, amount_minor: int) -> Result:
        assert entry.rrn is not None and entry.host_date is not None
        res = counter.terminal.refund(amount_minor, entry.rrn, entry.host_date)
        self.log.results.append((f"{counter.tid} refund {format_yuan(amount_minor)} of RRN {entry.rrn}", res))
        return res

    def _ordinary(self, counter: Counter) -> None:
        roll = self.rng.random()
        if roll < 0.05:
            refundable = self._refundable(counter)
            if refundable:
                entry = self.rng.choice(refundable)
                self._refund(counter, entry, max(1, (entry.amount_minor or 0) // self.rng.choice([1, 2, 4])))
                return
        if roll < 0.12:
            self._balance(counter)
        elif roll < 0.22:
            self._void(counter)
        elif roll < 0.25:
            self._sale(counter, wrong_pin=True)
        else:
            self._sale(counter)

    def fault_steps(self) -> dict[int, Callable[[], None]]:
        n = self.operations
        return {
            n * 10 // 100: self.fault_lost_response,
            n * 25 // 100: self.fault_bad_mac,
            n * 40 // 100: self.fault_printer_jam,
            n * 55 // 100: self.fault_expired_sign_in,
            n * 70 // 100: self.fault_line_down,
            n * 85 // 100: self.fault_refund_96,
        }

    def fault_lost_response(self) -> None:
        c = self.counters[0]
        rec = FaultRecord("lost response 应答丢失", "the host's answer to a sale is dropped on the line")
        c.primary.inject(Fault.DROP_RESPONSE)
        res = self._sale(c, amount_minor=6_600)
        rec.observed = res.outcome.text
        follow = self._sale(c)  # the pending reversal goes out first
        pending = c.terminal.pending_reversals()
        rec.followed = (
            f"reversal 98 sent before the next sale; pending now {len(pending)}; next sale: {follow.outcome}"
        )
        rec.ok = res.outcome in (Outcome.REVERSAL_PENDING, Outcome.REVERSED) and not pending
        self.log.faults.append(rec)

    def fault_bad_mac(self) -> None:
        c = self.counters[1]
        rec = FaultRecord("bad MAC 应答MAC错", "a byte of the sale response's MAC is flipped on the line")
        c.primary.inject(Fault.CORRUPT_RESPONSE)
        res = self._sale(c, amount_minor=7_700, pan=FAULT_CARD)
        rec.observed = res.outcome.text
        follow = self._sale(c)
        pending = c.terminal.pending_reversals()
        rec.followed = f"reversal A0, signed in again; next sale: {follow.outcome}; pending {len(pending)}"
        rec.ok = res.outcome is not Outcome.APPROVED and not pending
        self.log.faults.append(rec)

    def fault_printer_jam(self) -> None:
        assert self.printer is not None
        c = self.counters[0]
        rec = FaultRecord("printer jam 打印机卡纸", "the receipt printer reports a jam during a sale")
        self.printer.state = PrinterState.JAMMED
        res = self._sale(c, amount_minor=5_500, pan=FAULT_CARD)
        rec.observed = f"{res.outcome.text}; receipt {res.receipt}; e-receipt {res.e_receipt}"
        self.printer.state = PrinterState.READY
        reprint = c.terminal.reprint(res.trace)
        rec.followed = f"printer fixed; reprint: {reprint.outcome} ({reprint.receipt})"
        rec.ok = (
            res.outcome is Outcome.APPROVED
            and res.receipt is ReceiptState.OWED
            and res.e_receipt is not None
            and Path(res.e_receipt).exists()
            and reprint.receipt is ReceiptState.PRINTED
        )
        self.log.faults.append(rec)

    def fault_expired_sign_in(self) -> None:
        c = self.counters[1]
        rec = FaultRecord("sign-in expired 签到过期", "the host's clock passes the working-key lifetime")
        self.host_clock.offset_s += KEY_LIFETIME_S + 60
        res = self._sale(c, amount_minor=3_300, pan=FAULT_CARD)
        rec.observed = res.outcome.text
        rec.followed = "answered 77: the terminal signed in again and re-sent with a new STAN"
        rec.ok = res.outcome is Outcome.APPROVED
        self.log.faults.append(rec)
        other = self._sale(self.counters[0], amount_minor=4_400, pan=FAULT_CARD)
        rec.followed += f"; the other terminal too: {other.outcome}"
        rec.ok = rec.ok and other.outcome is Outcome.APPROVED

    def fault_line_down(self) -> None:
        c = self.counters[0]
        rec = FaultRecord("primary line down 主线路中断", "terminal 1's primary line refuses connections")
        port = c.primary.address[1]
        c.primary.stop()
        results = [self._sale(c, amount_minor=1_000 + n, pan=FAULT_CARD) for n in range(3)]
        rec.observed = ", ".join(str(r.outcome) for r in results)
        assert self.host is not None
        c.primary = FaultProxy(self.host.address, port=port)
        c.primary.start()
        rec.followed = "sales went over the backup line; primary restored"
        rec.ok = all(r.outcome is Outcome.APPROVED for r in results)
        self.log.faults.append(rec)

    def fault_refund_96(self) -> None:
        c = self.counters[1]
        rec = FaultRecord("refund meets 96 退货遇系统故障", "the host's store fails while booking a refund")
        sale = self._sale(c, amount_minor=9_900, pan=FAULT_CARD)
        entry = next(e for e in c.terminal.entries(1000) if e.stan == sale.trace and e.kind is TxnKind.SALE)
        self.store_faults.refund_failures_armed = 1
        res = self._refund(c, entry, 9_900)
        rec.observed = res.outcome.text
        assert self.store is not None
        with self.store.engine.connect() as conn:
            original = select(transactions.c.id).where(transactions.c.rrn == entry.rrn).scalar_subquery()
            booked = conn.execute(
                select(func.count()).where(
                    transactions.c.kind == "refund", transactions.c.original_id == original
                )
            ).scalar_one()
        rec.followed = (
            f"host answered 96 ({self.store_faults.injected} injected), nothing booked; the terminal "
            f"repeated the same request: {booked} refund booked"
        )
        rec.ok = sale.approved and res.approved and booked == 1 and self.store_faults.injected == 1
        self.log.faults.append(rec)

    def end_of_day(self) -> None:
        for c in self.counters:
            res = c.terminal.settle()
            self.log.results.append((f"{c.tid} settle", res))
            self.console.print(f"[bold]{c.tid}[/] 结算 settlement: {res.text}")
        assert self.store is not None
        with self.store.engine.connect() as conn:
            day = merchant_now(self.host_clock, merchant_zone(DEFAULT_MERCHANT_TZ)).date()
            rows = settlement_report(conn, day)
        self.console.print(report_table(rows, day))

    def run_day(self) -> None:
        faults = self.fault_steps()
        with Progress(
            TextColumn("[bold]营业日 business day"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task("day", total=self.operations)
            for c in self.counters:
                c.terminal.sign_in()
            for step in range(self.operations):
                if step in faults:
                    faults[step]()
                else:
                    self._ordinary(self.counters[step % 2])
                progress.advance(task)
        for c in self.counters:
            c.terminal.recover()
            for e in c.terminal.entries(1000):
                if e.receipt is ReceiptState.OWED:
                    c.terminal.reprint(e.stan)
        self.end_of_day()

    # --- the closing check -----------------------------------------------------------------------

    def check(self) -> list[str]:
        """The closing check; every line it returns is a broken promise."""
        assert self.store is not None
        problems: list[str] = []
        journal: dict[tuple[str, str, str], Entry] = {}
        terminal_approved: dict[str, int] = {}
        for c in self.counters:
            for e in c.terminal.entries(10_000):
                journal[(c.tid, e.batch, e.stan)] = e
                if e.state in (TxnState.PENDING, TxnState.SENT, TxnState.UNKNOWN, RefundState.UNKNOWN):
                    problems.append(f"{c.tid} trace {e.stan}: still {e.state} after recover")
                if e.kind is TxnKind.SALE and e.state is TxnState.APPROVED:
                    terminal_approved[c.tid] = terminal_approved.get(c.tid, 0) + (e.amount_minor or 0)
            if c.terminal.pending_reversals():
                problems.append(f"{c.tid}: reversals still pending after recover")
            if c.terminal.open_refunds():
                problems.append(f"{c.tid}: refunds still open after recover")
            settled = [st.state for st in c.terminal.settlements()]
            if not settled or settled[0] is not SettlementState.BALANCED:
                problems.append(f"{c.tid}: the end-of-day settlement is not balanced: {settled[:1]}")
        with self.store.engine.connect() as conn:
            host = conn.execute(select(transactions)).mappings().all()
            problems += ledger_problems(conn)
        sales = [t for t in host if t["kind"] == "sale" and t["response_code"] == "00"]
        refunds = [t for t in host if t["kind"] == "refund" and t["status"] == "approved"]
        host_approved: dict[str, int] = {}
        reversed_by_card: dict[str, int] = {}
        for s in sales:
            if s["status"] == "reversed":
                reversed_by_card[s["pan_masked"]] = reversed_by_card.get(s["pan_masked"], 0) + 1
                continue
            if s["status"] == "approved":
                host_approved[s["tid"]] = host_approved.get(s["tid"], 0) + int(s["amount_minor"])
        for t in sales + refunds:
            entry = journal.get((t["tid"], t["batch"], t["stan"]))
            if entry is None or t["status"] == "reversed":
                if entry is None and t["status"] != "reversed":
                    problems.append(
                        f"host approved {t['kind']} {t['tid']} trace {t['stan']} "
                        f"({format_yuan(t['amount_minor'])}) but the terminal has no receipt for it "
                        "and it is not reversed"
                    )
                continue
            if entry.receipt not in (ReceiptState.PRINTED, ReceiptState.OWED):
                problems.append(f"{t['kind']} {t['tid']} trace {t['stan']}: approved by the host, no receipt")
        if terminal_approved != host_approved:
            problems.append(
                f"terminals' approved totals {terminal_approved} differ from the host's {host_approved}"
            )
        for pan, (_, _, opening) in CARDS.items():
            masked = mask_pan(pan)
            reversals = [t for t in card_messages(self.store, pan) if "冲正退回" in t]
            if len(reversals) != reversed_by_card.get(masked, 0):
                problems.append(
                    f"card {masked}: {len(reversals)} reversal messages for "
                    f"{reversed_by_card.get(masked, 0)} reversed payments"
                )
            spent = sum(
                int(s["amount_minor"])
                for s in sales
                if s["pan_masked"] == masked and s["status"] == "approved"
            )
            refunded = sum(int(r["amount_minor"]) for r in refunds if r["pan_masked"] == masked)
            expected = opening - spent + refunded
            if card_balance(self.store, pan) != expected:
                problems.append(
                    f"card {masked}: balance {card_balance(self.store, pan)}, expected {expected}"
                )
        return problems

    def report(self, problems: list[str]) -> None:
        table = Table(title="故障与结果 Faults and what happened", show_lines=True)
        for col in ("fault", "injected", "terminal showed", "what followed", "ok"):
            table.add_column(col)
        for f in self.log.faults:
            table.add_row(f.name, f.injected, f.observed, f.followed, "✔" if f.ok else "✘")
        self.console.print(table)
        summary = Table(title="营业日汇总 The day")
        summary.add_column("outcome")
        summary.add_column("count", justify="right")
        for outcome in Outcome:
            n = self.log.count(outcome)
            if n:
                summary.add_row(outcome.text, str(n))
        self.console.print(summary)
        for f in self.log.faults:
            if not f.ok:
                problems.append(f"fault '{f.name}' did not end as it should: {f.observed} / {f.followed}")
        if problems:
            self.console.print("[bold red]闭店核对失败 closing check FAILED[/]")
            for p in problems:
                self.console.print(f"  [red]✘[/] {p}")
        else:
            self.console.print(
                "[bold green]闭店核对通过 closing check passed[/]: every host-approved payment is "
                "receipted (printed or owed) or reversed; every reversed payment's message is followed "
                "by its reversal message; terminals, host, bank and ledger agree; nothing is unknown."
            )


def run_demo(
    work_dir: Path | None = None, *, operations: int = 100, seed: int = 2026, console: Console | None = None
) -> bool:
    console = console or wide_console()
    work = work_dir or Path(tempfile.mkdtemp(prefix="tillroll-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"tillroll demo — working in {work}")
    demo = Demo(work, console, operations=operations, seed=seed)
    try:
        demo.start()
        demo.run_day()
        problems = demo.check()
        demo.report(problems)
    finally:
        demo.stop()
    return not problems
