"""`tillroll demo`: a scripted day at two counters, with the faults people meet, then a check.

One process runs the acquirer host (SQLite in a temporary folder), a receipt-printer emulator,
two fault-injecting lines (primary and backup) per terminal, and two terminals. About a hundred
sales, voids and balance inquiries go through; on the way a response is lost, a response's MAC is
damaged, the printer jams, the host's sign-in expires, a primary line goes down, a refund meets
a store failure, a foreign client floods the host's port with another dialect's traffic, one
counter's terminal is replaced mid-day (its journal lost: PROFILE §6), and seven customers pay by
wallet payment code with their phones' faults, giving an e-mail or a phone for their receipts
(:mod:`tillroll.sim.demo_wallet`: the wallet provider, the back office, a local SMTP server and SMS
gateway run beside the host). The closing check then
proves that every host-approved payment is receipted (printed or owed) or reversed, that every
reversed payment's "you paid" message is followed by its reversal message, that no earlier answer
was replayed to a new payment, that the terminals (old and new devices), the host, the bank and
the ledger agree batch by batch, that the flood cost no legitimate request, and that nothing is
left unknown (:mod:`tillroll.sim.demo_check`), and that every message each customer received —
the bank's SMS, the wallet app's stream, our e-mails and SMS — is true of the final state of their
payment, every e-receipt link opening the receipt (:func:`tillroll.sim.demo_wallet.wallet_check`).
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from tillroll.clock import DEFAULT_MERCHANT_TZ, SystemClock, merchant_now, merchant_zone
from tillroll.host import HostServer, InjectedStoreFailure
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.report import report_table, settlement_report
from tillroll.host.store import HostStore, open_store
from tillroll.iso8583.messages import Message
from tillroll.money import format_yuan
from tillroll.owner_only import private_file
from tillroll.pan import mask_pan
from tillroll.screen import wide_console
from tillroll.sim.demo_check import closing_check, report
from tillroll.sim.demo_recon import (
    ReconDay,
    Serving,
    make_demo_user,
    print_recon,
    reconcile_day,
    serve_until_stopped,
)
from tillroll.sim.demo_wallet import CARD_CONTACT, WalletDay, wallet_check
from tillroll.sim.fault_proxy import Fault, FaultProxy
from tillroll.sim.foreign_client import FloodLimits, ForeignClient
from tillroll.sim.printer_emulator import PrinterEmulator, PrinterState
from tillroll.store.tables import settlements, transactions
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
from tillroll.terminal.config import CONFIG_FILE, HostAddress, save_config

MID = "898100012345678"
MERCHANT = "一号便利店 No.1 Store"
KEY_LIFETIME_S = 3_600
FAULT_CARD = "6222021234567890123"
OPENING_CARD = "6222020000000000011"
OPENING_MINOR = 2_000
# Issue 6's two faults go into the day once the host handles them (a replaced terminal's
# sign-in: PROFILE §6; foreign traffic contained: §7); until then the day would fail its check.
JOURNAL_LOSS_FAULT = True
FLOOD_FAULT = True
WALLET_DAY = True  # issue 7: QR payments with the phone's faults, e-receipts, customers' messages
HOST_LOG_FLOOD_MAX_BYTES = 1_000_000  # issue 6: a flood must not fill the disk
# What a legitimate request must never meet because of someone else's traffic: no answer, a
# reversal, a format error, a malfunction, a MAC failure (its session replaced), a duplicate.
LEGIT_FAILURE_OUTCOMES = frozenset({
    Outcome.REVERSED, Outcome.REVERSAL_PENDING, Outcome.NO_ANSWER, Outcome.HOST_UNREACHABLE,
    Outcome.SIGN_IN_FAILED, Outcome.BLOCKED_BY_REVERSAL, Outcome.REFUND_UNKNOWN, Outcome.REFUND_BLOCKED,
})  # fmt: skip
LEGIT_FAILURE_CODES = frozenset({"30", "94", "96", "A0", "77"})
CARDS: dict[str, tuple[str, str, int]] = {  # pan: (expiry, pin, opening fen)
    "6222021234567890123": ("3012", "123456", 500_000),
    "6222020000000000011": ("2912", "111111", 300_000),
    "6222020000000000029": ("2806", "222222", 200_000),
    "6222020000000000037": ("3103", "333333", 150_000),
    "6222020000000000045": ("2911", "444444", 30_000),  # runs out of money during the day
}


def legit_failure(res: Result) -> bool:
    """An ordinary operation that ended as no ordinary card rule (funds, PIN) would end it."""
    return res.outcome in LEGIT_FAILURE_OUTCOMES or (res.raw_code or "") in LEGIT_FAILURE_CODES


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
    # Devices this counter had before the current one: their journals are read by the closing
    # check only (an auditor recovers them from the dead device); nothing is sent from them.
    retired: list[Terminal] = field(default_factory=list)

    @property
    def devices(self) -> list[Terminal]:
        return [*self.retired, self.terminal]


@dataclass
class DayLog:
    results: list[tuple[str, Result]] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for _, r in self.results if r.outcome is outcome)


class Demo:
    def __init__(
        self,
        work_dir: Path,
        console: Console,
        *,
        operations: int = 100,
        seed: int = 2026,
        journal_loss: bool = JOURNAL_LOSS_FAULT,
        flood: bool = FLOOD_FAULT,
        wallet: bool = WALLET_DAY,
    ) -> None:
        self.with_wallet = wallet
        self.wallet_day: WalletDay | None = None
        self.journal_loss = journal_loss
        self.with_flood = flood
        self.work_dir = work_dir
        self.console = console
        self.operations = operations
        self.rng = random.Random(seed)
        self.host_clock = ShiftedClock()
        # The business day the demo opens on; its host clock moves an hour on (the sign-in
        # fault), so late in a Beijing evening its day ends on the next one.
        self.first_day = merchant_now(self.host_clock, merchant_zone(DEFAULT_MERCHANT_TZ)).date()
        self.log = DayLog()
        self.store: HostStore | None = None
        self.host: HostServer | None = None
        self.printer: PrinterEmulator | None = None
        self.counters: list[Counter] = []
        self.store_faults = StoreFaults()
        self.cards = CARDS
        self.openings: dict[str, Result] = {}  # each counter's first sale of the day
        self.flood: ForeignClient | None = None
        self.flood_record: FaultRecord | None = None
        self.flood_from = 0  # index into log.results where the flood began
        self.flood_problems: list[str] = []
        self._host_log: logging.FileHandler | None = None
        self._host_log_size_at_flood = 0

    # --- set-up and tear-down ------------------------------------------------------------------

    def start(self) -> None:
        # The host's log goes to the day's folder, as a deployed host's would (and not to the
        # console: a flood must not fill it); removed again in stop().
        self._host_log = logging.FileHandler(private_file(self.work_dir / "host.log"), encoding="utf-8")
        self._host_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logging.getLogger("tillroll.host").addHandler(self._host_log)
        # The host's master key lands beside its SQLite file, in the day's folder.
        self.store = open_store(f"sqlite:///{self.work_dir / 'host.db'}")
        add_merchant(self.store, MID, MERCHANT)
        for pan, (expiry, pin, opening) in CARDS.items():
            add_card(self.store, pan, expiry, pin, opening)
        self.host = HostServer(
            self.store, clock=self.host_clock, key_lifetime_s=KEY_LIFETIME_S, fault_hook=self.store_faults
        ).start()
        if self.with_wallet:
            self.wallet_day = WalletDay(self.work_dir, self.store, MID, self.console)
            self.wallet_day.start()
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
                wallet=self.wallet_day.wallet_settings() if self.wallet_day else None,
                backoffice_url=self.wallet_day.web_url if self.wallet_day else None,
            )
            terminal = Terminal(config, self.work_dir / f"pos-{n}")
            self.counters.append(Counter(terminal, primary, backup, tid))

    def stop(self) -> None:
        if self.flood is not None:
            self.flood.stop()
            self.flood.join(timeout_s=5.0)
        for c in self.counters:
            for device in c.devices:
                device.close()
            c.primary.stop()
            c.backup.stop()
        if self.printer is not None:
            self.printer.stop()
        if self.wallet_day is not None:
            self.wallet_day.stop()
        if self.host is not None:
            self.host.stop()
        if self.store is not None:
            self.store.engine.dispose()
        if self._host_log is not None:
            logging.getLogger("tillroll.host").removeHandler(self._host_log)
            self._host_log.close()

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
        with_pin: bool | None = None,
        notify: str | None = None,
    ) -> Result:
        if pan is None:
            pan, expiry, pin = self._card()
        else:
            expiry, pin, _ = CARDS[pan]
        # Prices vary to the fen: a few demo cards at a few round prices made "same card, same
        # amount within two minutes" (reconciliation's duplicate rule) fire on honest sales.
        amount = amount_minor or (
            self.rng.choice([350, 1250, 1999, 4800, 8850, 12_000, 26_600, 99_900]) + self.rng.randrange(100)
        )
        use_pin = wrong_pin or (self.rng.random() < 0.5 if with_pin is None else with_pin)
        res = counter.terminal.sale(
            amount, pan, expiry, ("000000" if wrong_pin else pin) if use_pin else None, notify=notify
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
        steps: dict[int, Callable[[], None]] = {
            n * 10 // 100: self.fault_lost_response,
            n * 25 // 100: self.fault_bad_mac,
            n * 40 // 100: self.fault_printer_jam,
            n * 55 // 100: self.fault_expired_sign_in,
            n * 70 // 100: self.fault_line_down,
            n * 85 // 100: self.fault_refund_96,
        }
        if self.with_flood:
            steps |= {n * 30 // 100: self.flood_begins, n * 62 // 100: self.flood_ends}
        if self.journal_loss:
            steps[n * 48 // 100] = self.fault_replaced_terminal
        if self.wallet_day is not None:
            steps[n * 20 // 100] = self.wallet_payments
        return steps

    def wallet_payments(self) -> None:
        assert self.wallet_day is not None
        c = self.counters[1]
        rec = FaultRecord(
            "wallet payments 扫码支付",
            "seven customers pay by payment code: at once, confirmed later, never confirmed, a "
            "SYSTEMERROR, a lost answer, a refusal, a confirmation just after the deadline",
        )
        self.wallet_day.pay_all(c.terminal)
        outcomes = [f"{p.customer.name}: {p.result.outcome.value}" for p in self.wallet_day.payments]
        rec.observed = "; ".join(outcomes)
        rec.followed = "open orders are queried, then reversed, in the terminal's background steps"
        rec.ok = all(p.result.order_no is not None for p in self.wallet_day.payments)
        self.log.faults.append(rec)

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
        contact = CARD_CONTACT if self.wallet_day is not None else None
        res = self._sale(c, amount_minor=5_500, pan=FAULT_CARD, notify=contact)
        if self.wallet_day is not None:
            self.wallet_day.card_e_receipt = res
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

    def flood_begins(self) -> None:
        """A foreign client starts flooding the host's port (bounded: FloodLimits) while the
        counters go on selling; :meth:`flood_ends` collects what it did."""
        assert self.host is not None
        self.flood_record = FaultRecord(
            "foreign client flood 外来报文冲击",
            "another dialect's client floods the host's port: ASCII 0100s, undefined fields, a "
            "secondary bitmap, digits A-F, 0810/0210 as requests, noise, oversize lengths",
        )
        self.log.faults.append(self.flood_record)
        self.flood_from = len(self.log.results)
        self._host_log_size_at_flood = self._host_log_size()
        self.flood = ForeignClient(
            self.host.address,
            tids=[c.tid for c in self.counters],
            mid=MID,
            seed=self.rng.randrange(2**32),
            limits=FloodLimits(),
        ).start()
        self._ordinary(self.counters[0])

    def flood_ends(self) -> None:
        assert self.flood is not None and self.flood_record is not None
        self._ordinary(self.counters[1])
        done = self.flood.join(timeout_s=FloodLimits().duration_max_s + 5.0)
        self.flood.stop()
        during = self.log.results[self.flood_from :]
        counts = self.flood.counts
        log_bytes = self._host_log_size() - self._host_log_size_at_flood
        hurt = [
            f"{what}: {res.outcome} {res.raw_code or ''}".strip()
            for what, res in during
            if legit_failure(res)
        ]
        self.flood_problems = [f"during the flood: {h}" for h in hurt]
        if not done:
            self.flood_problems.append("the foreign client did not finish within its bound")
        if counts.sent == 0 or counts.closed + sum(counts.answered.values()) == 0:
            self.flood_problems.append(f"the flood did not reach the host: {counts.summary()}")
        if log_bytes > HOST_LOG_FLOOD_MAX_BYTES:
            self.flood_problems.append(f"the host logged {log_bytes} bytes during the flood")
        self.flood_record.observed = counts.summary()
        self.flood_record.followed = (
            f"{len(during)} legitimate operations during the flood, {len(hurt)} lost or failed "
            f"because of it; host log +{log_bytes} bytes"
        )
        self.flood_record.ok = not self.flood_problems

    def _host_log_size(self) -> int:
        if self._host_log is None:
            return 0
        self._host_log.flush()
        return (self.work_dir / "host.log").stat().st_size

    def replace_terminal(self, counter: Counter, data_dir: Path) -> Terminal:
        """The counter's device is swapped for the one in ``data_dir`` (set up there as `pos init`
        would: same TID, MID and TMK); the old one is retired, its journal kept for the check."""
        old = counter.terminal
        old.link.close()
        if not (data_dir / CONFIG_FILE).exists():
            save_config(data_dir, old.config)
        counter.retired.append(old)
        counter.terminal = Terminal.open(data_dir)
        return counter.terminal

    def fault_replaced_terminal(self) -> None:
        c = self.counters[0]
        rec = FaultRecord(
            "terminal replaced 换机（流水丢失）",
            "terminal 1's device is replaced mid-day: a new journal whose STAN counter starts again, "
            "same TID and TMK; its first sale repeats the old device's first sale (same card, amount, "
            "trace), the seed F4 trap",
        )
        self.log.faults.append(rec)
        old = c.terminal
        old.recover()  # the old device's last act: nothing in flight is lost with it
        old_batch = old.batch
        opening = self.openings[c.tid]
        new = self.replace_terminal(c, self.work_dir / "pos-1-replacement")
        signed = new.sign_in()
        first = self._sale(c, amount_minor=opening.amount_minor, pan=OPENING_CARD, with_pin=False)
        more = [self._sale(c) for _ in range(3)]
        assert self.store is not None
        with self.store.engine.connect() as conn:
            closed_by = conn.execute(
                select(settlements.c.closed_by).where(
                    settlements.c.tid == c.tid, settlements.c.batch == old_batch
                )
            ).scalar_one_or_none()
        rec.observed = (
            f"sign-in: {signed.outcome}, batch {old_batch} → {signed.batch}; first sale, trace {first.trace} "
            f"(old device's: {opening.trace}): {first.outcome}, RRN {first.rrn} (old device's: {opening.rrn})"
        )
        rec.followed = f"old batch {old_batch} closed by: {closed_by or 'nobody'}; next sales: " + ", ".join(
            f"{r.outcome} {r.raw_code or ''}".strip() for r in more
        )
        rec.ok = (
            signed.outcome is Outcome.DONE
            and signed.batch != old_batch
            and first.approved
            and first.rrn != opening.rrn
            and closed_by == "host"
            and not any(legit_failure(r) for r in more)
        )

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
                # The first customer of the day pays without a PIN (a replaced device repeats it).
                self.openings[c.tid] = self._sale(
                    c, amount_minor=OPENING_MINOR, pan=OPENING_CARD, with_pin=False
                )
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
        if self.wallet_day is not None:
            self.wallet_day.finish(
                [c.terminal for c in self.counters], [d for c in self.counters for d in c.devices]
            )
        self.end_of_day()

    # --- the closing check -----------------------------------------------------------------------

    def check(self) -> list[str]:
        """The closing check; every line it returns is a broken promise."""
        problems = closing_check(self) + self.flood_problems
        if self.wallet_day is not None:
            devices = [d for c in self.counters for d in c.devices]
            problems += list(wallet_check(self.wallet_day, devices))
        return problems

    def report(self, problems: list[str]) -> None:
        report(self, problems)

    # --- reconciliation of the day, and the console (demo_recon.py) ------------------------------

    def reconcile(self) -> list[ReconDay]:
        """Each business day the demo traded on reconciled as the nightly run would (one, or two
        when its day crossed midnight), its automatic actions taken, printed."""
        assert self.store is not None
        last_day = merchant_now(self.host_clock, merchant_zone(DEFAULT_MERCHANT_TZ)).date()
        days = [self.first_day] if last_day == self.first_day else [self.first_day, last_day]
        wallet = self.wallet_day.wallet_settings() if self.wallet_day is not None else None
        base_url = self.wallet_day.web_url if self.wallet_day is not None else "http://127.0.0.1:8080"
        done = []
        for day in days:
            reconciled = reconcile_day(
                self.store,
                day,
                clock=self.host_clock,
                base_url=base_url,
                terminals=[c.terminal for c in self.counters],
                wallet=wallet,
            )
            print_recon(self.console, self.store, reconciled)
            done.append(reconciled)
        return done

    def serve(self, *, stop: threading.Event | None = None, on_serving: Serving | None = None) -> None:
        """Keep the back office (and its console) running on the day's data until stopped."""
        assert self.store is not None
        if self.wallet_day is None:
            self.console.print("[yellow]no back office ran in this day (no wallet day): nothing to serve[/]")
            return
        user, password = make_demo_user(self.store, MID, clock=self.host_clock)
        serve_until_stopped(
            self.console, self.wallet_day.web_url, user, password, stop=stop, on_serving=on_serving
        )


def run_demo(
    work_dir: Path | None = None,
    *,
    operations: int = 100,
    seed: int = 2026,
    console: Console | None = None,
    serve: bool = False,
    stop: threading.Event | None = None,
    on_serving: Serving | None = None,
) -> bool:
    """The day, its closing check, its reconciliation; with ``serve``, then the console until
    stopped. True when the closing check passed."""
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
        demo.reconcile()
        if serve:
            demo.serve(stop=stop, on_serving=on_serving)
    finally:
        demo.stop()
    return not problems
