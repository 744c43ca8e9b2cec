"""A generated business day's plan: the faults (``Fault``), where they are planted (``plant``),
the day's shape (``DaySpec``), how payments are numbered and named (terminal, RRN, order,
STAN), and the exceptions the planted faults must give (``expected``). The rows themselves:
``daygen``."""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from tillroll.recon.model import ExceptionClass as EC

REVERSE = ("reverse",)
REPRINT = ("reprint", "send_e_receipt")
WALLET_MCH = "1900000109"
BEIJING = timedelta(hours=8)


class Fault(enum.StrEnum):
    CARD_NEVER_SAW = "card_never_saw"  # host approved; the journal's sale stayed unknown
    CARD_NO_SLIP = "card_no_slip"  # both approved; the slip is owed
    WALLET_NEVER_SAW = "wallet_never_saw"  # the statement says paid; the journal's order unknown
    WALLET_NO_SLIP = "wallet_no_slip"
    CARD_RECEIPT_REVERSED = "card_receipt_reversed"  # slip printed; the host reversed the sale
    WALLET_RECEIPT_REVOKED = "wallet_receipt_revoked"  # slip printed; the statement says REVOKED
    CARD_REFUND_STUCK = "card_refund_stuck"  # a refund unknown on the terminal for hours
    WALLET_REFUND_FAILED = "wallet_refund_failed"  # the statement says the refund failed (CHANGE)
    CARD_TOLD_REVERSED = "card_told_reversed"  # e-receipt sent; reversed; no cancel notice
    WALLET_TOLD_REVOKED = "wallet_told_revoked"
    SIGNIN_ALERT = "signin_alert"  # the terminal announced repeated sign-in failures
    SESSION_EXPIRED = "session_expired"  # a key session expired at 14:00, no new sign-in
    CARD_AMOUNT = "card_amount"  # journal and host amounts differ
    WALLET_AMOUNT = "wallet_amount"  # journal and statement amounts differ
    LEDGER_AMOUNT = "ledger_amount"  # the ledger's clearing leg differs from the host amount
    REFUNDS_EXCEED = "refunds_exceed"  # two approved refunds together more than the sale
    CARD_NO_JOURNAL = "card_no_journal"  # host approved; no journal entry at all
    WALLET_NO_JOURNAL = "wallet_no_journal"  # on the statement only
    WALLET_REFUND_NOT_ON_STATEMENT = "wallet_refund_not_on_statement"
    LEDGER_MISSING = "ledger_missing"  # no ledger entry for an approved sale
    CARD_DOUBLE_CHARGE = "card_double_charge"  # the same card and amount approved twice in 30 s
    STATEMENT_DUPLICATE_LINE = "statement_duplicate_line"


WALLET_FAULTS = frozenset(
    f for f in Fault if f.value.startswith("wallet_") or f is Fault.STATEMENT_DUPLICATE_LINE
)


@dataclass(frozen=True)
class Expected:
    cls: EC
    key: str
    planned: tuple[str, ...]


@dataclass
class DaySpec:
    business_date: date
    payments: int
    faults: Mapping[int, Fault] = field(default_factory=dict)  # payment index -> its fault
    terminals: int = 0  # 0: one per 5,000 payments (at least 4)
    tz: str = "Asia/Shanghai"
    statements: bool = True  # the day's and the next day's statements are imported

    @property
    def n_terminals(self) -> int:
        return self.terminals or max(4, self.payments // 5000)


def is_wallet(i: int) -> bool:
    return i % 10 < 3


def plant(payments: int, faults: Iterable[Fault], *, seed: int = 0, copies: int = 1) -> dict[int, Fault]:
    """Distinct payments for each fault (on its rail), away from the day's edges and from the
    payments that have a refund or an e-receipt of their own."""
    rng = random.Random(seed)
    lo, hi = payments // 10, payments * 9 // 10
    # (and every tenth card payment kept clean: a fault's neighbours are never all faults)
    pool = [i for i in range(lo, hi) if i % 20 and i % 50 and i % 10 != 9]
    rng.shuffle(pool)
    wallet = [i for i in pool if is_wallet(i)]
    card = [i for i in pool if not is_wallet(i)]
    out: dict[int, Fault] = {}
    for fault in faults:
        side = wallet if fault in WALLET_FAULTS else card
        for _ in range(copies):
            if not side:
                raise ValueError(f"{payments} payments are too few to plant every fault")
            out[side.pop()] = fault
    return out


def tid_of(spec: DaySpec, i: int) -> str:
    return f"T{i % spec.n_terminals:07d}"


def mid_of(terminal: int) -> str:
    return f"M{terminal // 4:014d}"


def rrn(i: int, n: int = 1) -> str:
    return f"{n}{i:011d}"


def order(i: int) -> str:
    return f"W{i:011d}"


def refund_order(i: int) -> str:
    return f"R{i:011d}"


def expected(spec: DaySpec) -> set[Expected]:
    """The exceptions the planted faults must give (one per fault; a terminal's sign-in faults
    share one record)."""
    out: set[Expected] = set()
    day = spec.business_date.isoformat()
    for i, fault in spec.faults.items():
        card_key = f"card:rrn:{rrn(i)}"
        match fault:
            case Fault.CARD_NEVER_SAW:
                out.add(Expected(EC.CHARGED_NO_RECEIPT, card_key, REVERSE))
            case Fault.CARD_NO_SLIP:
                out.add(Expected(EC.CHARGED_NO_RECEIPT, card_key, REPRINT))
            case Fault.WALLET_NEVER_SAW:
                out.add(Expected(EC.CHARGED_NO_RECEIPT, f"wallet:{order(i)}", REVERSE))
            case Fault.WALLET_NO_SLIP:
                out.add(Expected(EC.CHARGED_NO_RECEIPT, f"wallet:{order(i)}", REPRINT))
            case Fault.CARD_RECEIPT_REVERSED:
                out.add(Expected(EC.RECEIPT_NO_PAYMENT, card_key, ("contact_customer",)))
            case Fault.WALLET_RECEIPT_REVOKED:
                out.add(Expected(EC.RECEIPT_NO_PAYMENT, f"wallet:{order(i)}", ("contact_customer",)))
            case Fault.CARD_REFUND_STUCK:
                tid = tid_of(spec, i)
                out.add(
                    Expected(
                        EC.REFUND_STUCK, f"card:{tid}:000001:{refund_stan_of(spec, i)}", ("retry_refund",)
                    )
                )
            case Fault.WALLET_REFUND_FAILED:
                out.add(Expected(EC.REFUND_STUCK, f"wallet:{refund_order(i)}", ("retry_refund",)))
            case Fault.CARD_TOLD_REVERSED:
                out.add(Expected(EC.NOTIFIED_NOT_FINAL, card_key, ("send_notice",)))
            case Fault.WALLET_TOLD_REVOKED:
                out.add(Expected(EC.NOTIFIED_NOT_FINAL, f"wallet:{order(i)}", ("send_notice",)))
            case Fault.SIGNIN_ALERT | Fault.SESSION_EXPIRED:
                out.add(Expected(EC.SIGNIN_FAILURES, f"terminal:{tid_of(spec, i)}:{day}", ("alert",)))
            case Fault.CARD_AMOUNT:
                out.add(Expected(EC.AMOUNT_MISMATCH, card_key, ()))
            case Fault.WALLET_AMOUNT:
                out.add(Expected(EC.AMOUNT_MISMATCH, f"wallet:{order(i)}", ()))
            case Fault.LEDGER_AMOUNT:
                out.add(Expected(EC.AMOUNT_MISMATCH, f"ledger:rrn:{rrn(i)}", ()))
            case Fault.REFUNDS_EXCEED:
                out.add(Expected(EC.AMOUNT_MISMATCH, f"card:refunds:rrn:{rrn(i)}", ()))
            case Fault.CARD_NO_JOURNAL:
                out.add(Expected(EC.MISSING_ON_ONE_SIDE, card_key, ()))
            case Fault.WALLET_NO_JOURNAL:
                out.add(Expected(EC.MISSING_ON_ONE_SIDE, f"wallet:{order(i)}", ()))
            case Fault.WALLET_REFUND_NOT_ON_STATEMENT:
                out.add(Expected(EC.MISSING_ON_ONE_SIDE, f"wallet:{refund_order(i)}", ()))
            case Fault.LEDGER_MISSING:
                out.add(Expected(EC.MISSING_ON_ONE_SIDE, f"ledger:rrn:{rrn(i)}", ()))
            case Fault.CARD_DOUBLE_CHARGE:
                out.add(Expected(EC.DUPLICATE, f"card:rrn:{rrn(i, 4)}", ()))
            case Fault.STATEMENT_DUPLICATE_LINE:
                out.add(Expected(EC.DUPLICATE, f"wallet:stmt:{order(i)}", ()))
    return out


def stan_of(spec: DaySpec, i: int) -> str:
    return f"{i // spec.n_terminals + 1:06d}"


def refund_stan_of(spec: DaySpec, i: int) -> str:
    # refunds number from 500000 upward in a terminal's batch: never a sale's STAN
    return f"{500000 + i // spec.n_terminals:06d}"


def utc_of(local: datetime, tz: ZoneInfo) -> datetime:
    return local.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
