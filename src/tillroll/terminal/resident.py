"""`tillroll pos run`: the terminal kept alive the way a POS application keeps itself alive.

Each turn of the loop opens the terminal (taking the device lock), does at most one step, and
closes it again, so `pos sale` from another shell gets in between steps; what that command did
is seen next turn through the journal. The steps, in order of precedence:

1. a pending reversal whose backoff has run out is sent (``Terminal.reverse_step``; the backoff
   schedule outlives the turn, so it stays exponential across turns);
1b. an open wallet order that is due: queried before its deadline, reversed after it, the
   reverse retried with backoff until answered (``Terminal.wallet_step``, ``wallet.py``);
2. a reversal pending longer than ``reversal_alert_s`` raises one alert in the journal (per
   reversal: the journal's alerts are the memory, so a restart does not repeat it);
3. no session, or one near the end of its key lifetime → sign in (failures back off too);
4. the configured daily settlement time (merchant-local) has passed and today is not settled;
5. the line was idle for ``echo_interval_s`` → echo test (0820).

Before the steps, every turn relays the facts that are due and uploads the journal when there is
something to upload (entries changed, command outcomes to report) or every
:data:`UPLOAD_HEARTBEAT_S` (the status: the back office's "last seen"), unless a failed upload's
backoff runs; the back office's commands it answers with are run in that upload's round.

:func:`plan` decides (pure, seconds in, action out); :class:`Resident` does the IO. The wait
between turns is an ``Event.wait`` so a stop request wakes it at once, and it is at most
``LOOK_S`` so that work left by another command is picked up promptly.
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from tillroll.clock import Clock, SystemClock, merchant_zone, to_merchant_local
from tillroll.iso8583 import builders
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.device import TerminalError
from tillroll.terminal.engine import Terminal
from tillroll.terminal.retry import RetrySchedule
from tillroll.terminal.states import AlertKind, Outcome
from tillroll.terminal.wallet import WalletSchedule

LOOK_S = 1.0  # longest wait before the journal is read again (another command may have written)
BUSY_WAIT_S = 0.2  # the device lock was held by another command: try again this soon
LOCK_WAIT_S = 2.0  # how long one turn waits for the device lock
STOP_GRACE_S = 0.4  # after a stop request, how long a turn in progress may run to its end
ABORT_GRACE_S = 0.3  # then, after its exchange is aborted, how long it has to wind down
SIGN_IN_ALERT_AFTER = 3  # sign-in failures in a row that raise the merchant's alert
ALERTS_READ = 1000  # alerts read back to know which reversals were already alerted on
_SIGN_IN_KEY = "sign-in"
UPLOAD_HEARTBEAT_S = 30.0  # the status goes up at least this often, entries or not


class Action(enum.Enum):
    REVERSE = "reverse"
    SIGN_IN = "sign-in"
    SETTLE = "settle"
    ECHO = "echo"
    WALLET = "wallet"


@dataclass(frozen=True)
class Facts:
    """What the loop knows at one instant, all in seconds of ``clock.monotonic()``."""

    now_s: float
    reversal_due_s: float | None  # the next pending reversal's try; None when none pending
    session_age_s: float | None  # None: not signed in
    sign_in_due_s: float | None  # after a failed sign-in: not before this; None: any time
    idle_s: float  # since this loop last exchanged with the host
    settle_due: bool
    wallet_due_s: float | None = None  # the next open wallet order's query/reverse; None: none open


@dataclass(frozen=True)
class Plan:
    action: Action | None
    wait_s: float  # when no action: how long to wait before the next turn


def plan(facts: Facts, config: TerminalConfig) -> Plan:
    """The next step (pure). Reversals first: they are the customer's money."""
    now = facts.now_s
    if facts.reversal_due_s is not None and facts.reversal_due_s <= now:
        return Plan(Action.REVERSE, 0.0)
    if facts.wallet_due_s is not None and facts.wallet_due_s <= now:  # a customer's money too
        return Plan(Action.WALLET, 0.0)
    sign_in_allowed = facts.sign_in_due_s is None or facts.sign_in_due_s <= now
    session_due = facts.session_age_s is None or facts.session_age_s >= config.refresh_after_s
    if session_due and sign_in_allowed:
        return Plan(Action.SIGN_IN, 0.0)
    if facts.settle_due and facts.session_age_s is not None and facts.reversal_due_s is None:
        return Plan(Action.SETTLE, 0.0)
    if facts.idle_s >= config.echo_interval_s and facts.session_age_s is not None:
        return Plan(Action.ECHO, 0.0)
    waits = [LOOK_S, config.echo_interval_s - facts.idle_s]
    if facts.reversal_due_s is not None:
        waits.append(facts.reversal_due_s - now)
    if facts.wallet_due_s is not None:
        waits.append(facts.wallet_due_s - now)
    if facts.session_age_s is not None:
        waits.append(config.refresh_after_s - facts.session_age_s)
    elif facts.sign_in_due_s is not None:
        waits.append(facts.sign_in_due_s - now)
    return Plan(None, max(0.0, min(waits)))


def settle_due(local_now: datetime, settle_at: str | None, last_settled_local: date | None) -> bool:
    """True once the merchant-local ``settle_at`` (HH:MM) has passed today and the terminal has
    not settled today (pure)."""
    if settle_at is None:
        return False
    hh, mm = (int(x) for x in settle_at.split(":"))
    if (local_now.hour, local_now.minute) < (hh, mm):
        return False
    return last_settled_local is None or last_settled_local < local_now.date()


def overdue(
    pending: list[tuple[int, datetime]], now: datetime, deadline_s: float, alerted: set[int]
) -> list[int]:
    """Ids of reversals pending (since their entry's creation) past the deadline, not yet alerted."""
    return [i for i, since in pending if i not in alerted and (now - since).total_seconds() >= deadline_s]


class Resident:
    """The resident loop over one data dir. ``out`` gets one status line per event."""

    def __init__(
        self,
        data_dir: Path,
        *,
        stop: threading.Event,
        out: Callable[[str], None],
        clock: Clock | None = None,
        rng: random.Random | None = None,
        open_terminal: Callable[[Path], Terminal] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.stop = stop
        self.out = out
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()  # jitter only
        self._open = open_terminal or (lambda d: Terminal.open(d, clock=self.clock, rng=self.rng))
        self._reversal_schedule: RetrySchedule[int] | None = None
        self._sign_in_schedule: RetrySchedule[str] | None = None
        self._wallet_schedule: WalletSchedule | None = None
        self._last_exchange_s = self.clock.monotonic()
        self._busy = False
        self._current: Terminal | None = None  # the terminal of the turn in progress
        self._failure: BaseException | None = None
        self._uploaded_s: float | None = None  # clock.monotonic() of the last upload answered 200

    def run(self) -> None:
        """Turn until ``stop`` is set, and return within about a second of it.

        The turns run in a worker thread so that a stop request never waits for an exchange on
        a dead line to time out: a turn still running after :data:`STOP_GRACE_S` has its
        exchange aborted (the link's socket shut down, so the reversal it was sending stays
        pending in the journal: journalled before it was sent, sent again at the next start).
        A turn that still has not ended is left to die with the process; every step is
        journalled before it acts and is safe to run again (a crash at any point loses nothing).
        """
        worker = threading.Thread(target=self._loop, name="tillroll-resident", daemon=True)
        worker.start()
        while worker.is_alive() and not self.stop.wait(LOOK_S):
            pass
        worker.join(STOP_GRACE_S)
        if worker.is_alive():
            term = self._current
            if term is not None:
                term.link.abort()
            worker.join(ABORT_GRACE_S)
        if worker.is_alive():
            self.out("stopped with a turn in progress: what it was sending stays pending")
        if self._failure is not None:
            raise self._failure

    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                wait_s = self.turn()
                self.stop.wait(min(wait_s, LOOK_S))
        except BaseException as exc:  # handed to run(), in the caller's thread
            self._failure = exc
            self.stop.set()

    def turn(self) -> float:
        """Open the terminal, do at most one step, close it; seconds to wait before the next."""
        try:
            term = self._open(self.data_dir)
        except TerminalError as exc:
            if not self._busy:
                self.out(f"busy: {exc}")
            self._busy = True
            return BUSY_WAIT_S
        self._busy = False
        self._current = term
        try:
            if self.stop.is_set():
                return 0.0
            return self._step(term)
        finally:
            self._current = None
            term.close()

    def _schedules(self, config: TerminalConfig) -> tuple[RetrySchedule[int], RetrySchedule[str]]:
        if self._reversal_schedule is None or self._sign_in_schedule is None:
            self._reversal_schedule = RetrySchedule(config.backoff, self.rng)
            self._sign_in_schedule = RetrySchedule(config.backoff, self.rng)
        return self._reversal_schedule, self._sign_in_schedule

    def _step(self, term: Terminal) -> float:
        self._send_facts(term)
        self._upload(term)
        config = term.config
        reversals, sign_ins = self._schedules(config)
        term.reversals.schedule = reversals  # the backoff outlives this turn's Terminal
        if term.wallet is not None:  # so does the wallet orders' schedule
            if self._wallet_schedule is None:
                self._wallet_schedule = term.wallet.schedule
            term.wallet.schedule = self._wallet_schedule
        now_s = self.clock.monotonic()
        pending = term.pending_reversals()
        self._alert_overdue(term, [(e.id, e.created_at) for e in pending])
        session = term.sessions.current
        facts = Facts(
            now_s=now_s,
            reversal_due_s=reversals.next_due_s([e.id for e in pending], now_s) if pending else None,
            session_age_s=(self.clock.now() - session.signed_in_at).total_seconds() if session else None,
            sign_in_due_s=sign_ins.next_due_s([_SIGN_IN_KEY], now_s)
            if sign_ins.failures(_SIGN_IN_KEY)
            else None,
            idle_s=now_s - self._last_exchange_s,
            settle_due=self._settle_due(term),
            wallet_due_s=term.wallet.next_due_s(now_s) if term.wallet is not None else None,
        )
        step = plan(facts, config)
        if step.action is None:
            return step.wait_s
        self._last_exchange_s = self.clock.monotonic()
        if step.action is Action.WALLET:
            w = term.wallet_step()
            line = f"wallet: {w.finished} order(s) finished, {w.pending} open"
            if w.next_due_s is not None:
                line += f", next in {max(0.0, w.next_due_s - self.clock.monotonic()):.1f} s"
            self.out(line)
        elif step.action is Action.REVERSE:
            done = term.reverse_step()
            if done.reversed:
                self.out(f"reversal: {done.reversed} sent and answered, {done.pending} pending")
            elif done.next_due_s is not None:
                wait = done.next_due_s - self.clock.monotonic()
                self.out(f"reversal: {done.pending} pending, next try in {wait:.1f} s")
        elif step.action is Action.SIGN_IN:
            result = term.sign_in()
            if result.outcome is Outcome.DONE:
                sign_ins.succeeded(_SIGN_IN_KEY)
                self.out(f"sign-in: signed in, batch {result.batch}")
            else:
                due = sign_ins.failed(_SIGN_IN_KEY, self.clock.monotonic())
                self.out(f"sign-in: {result.text}; next try in {due - self.clock.monotonic():.1f} s")
                failures = sign_ins.failures(_SIGN_IN_KEY)
                if failures == SIGN_IN_ALERT_AFTER:  # once per streak; a success starts a new one
                    text = (
                        f"sign-in failed {failures} times in a row ({result.text}): card payments "
                        "cannot be taken; check the line to the host and the terminal's keys"
                    )
                    term.notices.sign_in_failures(failures, text, self.clock.now())
                    self.out(f"alert: {text}")
        elif step.action is Action.SETTLE:
            self.out(f"settle: {term.settle().text}")
        else:
            self.out(f"echo: {_echo(term)}")
        return 0.0

    def _send_facts(self, term: Terminal) -> None:
        """Facts in the journal's outbox that are due go to the back office (bounded time)."""
        try:
            done = term.send_facts()
        except Exception as exc:  # the loop's other duties go on; the facts wait in the journal
            self.out(f"facts: not sent ({type(exc).__name__})")
            return
        if done is not None and (done.delivered or done.dead):
            self.out(f"facts: {done.delivered} delivered, {done.dead} refused, {done.pending} pending")

    def _upload(self, term: Terminal) -> None:
        """The journal's changes, the status and command outcomes to the back office (bounded by
        the back-office timeout per request; skipped while a failure's backoff runs)."""
        now_s = self.clock.monotonic()
        heartbeat = self._uploaded_s is None or now_s - self._uploaded_s >= UPLOAD_HEARTBEAT_S
        try:
            uploader = term.uploader
            if uploader is None or not uploader.due():
                return
            if not heartbeat and not uploader.has_work():
                return
            done = term.upload_journal(budget_s=term.config.backoffice_timeout_s)
        except Exception as exc:  # the loop's other duties go on; the entries wait in the journal
            self.out(f"upload: not sent ({type(exc).__name__})")
            return
        if done is None:
            return
        if done.failed is not None:
            self.out(f"upload: {done.failed}; the entries wait in the journal")
            return
        self._uploaded_s = now_s
        if done.entries or done.commands_run:
            self.out(f"upload: {done.entries} entries sent, {done.commands_run} command(s) run")

    def _alert_overdue(self, term: Terminal, pending: list[tuple[int, datetime]]) -> None:
        if not pending:
            return
        alerted = {
            a.txn_id
            for a in term.alerts(ALERTS_READ)
            if a.kind == AlertKind.REVERSAL_OVERDUE and a.txn_id is not None
        }
        now = self.clock.now()
        for txn_id in overdue(pending, now, term.config.reversal_alert_s, alerted):
            entry = next(e for e in term.pending_reversals() if e.id == txn_id)
            text = (
                f"reversal of trace {entry.stan} (batch {entry.batch}) pending over "
                f"{term.config.reversal_alert_s:.0f} s: the card may still be charged; check the line"
            )
            term.notices.reversal_overdue(entry, text, now)  # the alert, and the merchant told
            self.out(f"alert: {text}")

    def _settle_due(self, term: Terminal) -> bool:
        if term.config.settle_at is None:
            return False
        tz = merchant_zone(term.config.merchant_tz)
        last = term.settlements(1)
        last_day = to_merchant_local(last[0].created_at, tz).date() if last else None
        return settle_due(to_merchant_local(self.clock.now(), tz), term.config.settle_at, last_day)


def _echo(term: Terminal) -> str:
    """One echo test (0820); the line's answer in a few words."""
    sessions = term.sessions
    with term.journal.begin() as conn:
        stan = term.journal.next_stan(conn)
    reply = sessions.exchange(builders.echo(sessions.station, stan, sessions.batch), mak=None)
    if reply.response is None:
        return f"no answer ({reply.status.value})"
    return f"line up, answered {reply.response.get('39')}"


@dataclass(frozen=True)
class Status:
    """What `pos status` shows (read from the journal; works while `pos run` runs)."""

    rows: list[tuple[str, str]]


def status(term: Terminal, clock: Clock) -> Status:
    now = clock.now()
    session = term.sessions.current
    rows: list[tuple[str, str]] = [("terminal", f"TID {term.config.tid} MID {term.config.mid}")]
    if session is None:
        rows.append(("session", "not signed in"))
    else:
        age_s = (now - session.signed_in_at).total_seconds()
        rows.append(("session", f"signed in, key age {age_s:.0f} s of {term.config.key_lifetime_s} s"))
    rows.append(("batch", term.batch))
    for e in term.pending_reversals():
        age_s = (now - e.created_at).total_seconds()
        rows.append(("reversal pending", f"trace {e.stan} batch {e.batch}, {age_s:.0f} s old"))
    owed = [e for e in term.entries(ALERTS_READ) if e.receipt.value == "owed"]
    rows.append(("receipts owed", ", ".join(e.stan for e in owed) or "none"))
    for o in term.wallet_journal.open_orders():
        age_s = (now - o.created_at).total_seconds()
        rows.append(("wallet order open", f"{o.out_trade_no} {o.state.value}, {age_s:.0f} s old"))
    wallet_owed = [o.stan for o in term.wallet_orders(ALERTS_READ) if o.receipt.value == "owed"]
    if wallet_owed:
        rows.append(("wallet receipts owed", ", ".join(wallet_owed)))
    for a in term.alerts(10):
        rows.append(("alert", f"{a.at:%Y-%m-%d %H:%M:%S} {a.kind}: {a.text}"))
    return Status(rows)
