"""Wallet payments (扫码支付, WALLET.md): the customer shows a code, the terminal charges it.

The rules (states in ``wallet_states.py``):

- **Durable before visible.** The order and its number ``out_trade_no`` are journalled
  (``created``) before the first byte of ``pay`` leaves; the payment code is kept only masked.
- **Only a verified SUCCESS is paid** (a pay or query answer whose signature verifies, for our
  amount). Only then is the order ``success`` and a slip printed.
- **Unknown has a deadline.** On USERPAYING, SYSTEMERROR, a timeout or a broken connection the
  order is ``unknown`` and queried every ``query_interval_s`` until ``query_until`` (pay +
  ``query_window_s``); the last query is at the deadline. Still not final → ``reversing``:
  ``reverse`` (撤销) with the backoff of ``retry.py`` until it is answered — blocking (bounded)
  for the cashier's command, then in the background (``pos run``), at the next wallet payment,
  or on ``pos recover``. Never dropped, never assumed paid.
- **The race.** A payment confirmed after the terminal gave up (between its last query and the
  reverse) is undone by the reverse itself: the wallet gives the whole amount back and the order
  ends ``revoked``. Once ``reversing``, no query answer makes it ``success`` again.
- **Telling the customer.** ``closed``/``revoked`` after ``pay`` was sent, and a SUCCESS with a
  contact (``--notify``), are announced (``announce.py``) in the same journal transaction as the
  state change. Never from USERPAYING or an unknown outcome.
- **Interrupted.** An order found ``created`` or ``unknown`` when no command is working on it
  (the process died) is treated as unknown: queried until its deadline, then reversed — the
  wallet's tombstone makes a ``pay`` that arrives after the reverse fail.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tillroll.clock import Clock, to_merchant_local
from tillroll.notify.outbox import MessageKind
from tillroll.terminal.announce import announce
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.inputs import InputError, check_amount
from tillroll.terminal.journal import Journal
from tillroll.terminal.notices import parse_notify
from tillroll.terminal.result import Result
from tillroll.terminal.retry import AGAIN, Again, RetrySchedule, repeat
from tillroll.terminal.states import AlertKind, Outcome, ReceiptState
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.terminal.wallet_gateway import (
    PayOutcome,
    QueryOutcome,
    QueryResult,
    ReverseOutcome,
    TradeState,
    WalletGateway,
)
from tillroll.terminal.wallet_journal import WalletJournal, WalletOrder
from tillroll.terminal.wallet_receipts import (
    WalletReceipts,
    cancelled_order_fact,
    order_fact,
    wallet_reference,
)
from tillroll.terminal.wallet_states import PaymentCodeError, WalletState, parse_payment_code

log = logging.getLogger("tillroll.terminal.wallet")


# What a refusal means for the cashier (beside the wallet's own err_code_des).
REFUSAL_TEXT = {
    "AUTHCODEEXPIRE": "付款码已过期 the payment code has expired: ask the customer to refresh it, scan again",
    "AUTH_CODE_INVALID": "付款码无效 the payment code is not valid: scan it again",
    "NOTENOUGH": "余额不足 the customer's balance is not enough: ask for another way to pay",
    "OUT_TRADE_NO_USED": "订单号已被使用 the order number is in use: try again (a new number is made)",
    "PARAM_ERROR": "参数错误 the wallet refused a field: check the amount",
    "RETURN_FAIL": (
        "钱包拒绝请求 the wallet did not accept the request (wrong wallet key or merchant id? check "
        "`pos init --wallet-merchant/--wallet-key`): nothing was charged"
    ),
}


def check_contact(contact: str | None) -> str | None:
    """A phone number or an e-mail address for the customer's messages (``--notify``),
    normalised as the back office takes it (``+8613800138000``); InputError when it is neither."""
    return parse_notify(contact)


def order_number(tid: str, local: str, stan: str) -> str:
    """``<TID><yyyyMMddHHmmss><trace>``: 28 characters, unique per merchant (WALLET.md §1)."""
    return f"{tid}{local}{stan}"


@dataclass
class WalletSchedule:
    """When each open order is next due in the background (monotonic seconds); it outlives a
    resident loop's turn, so the reverse backoff stays exponential (never dropped)."""

    reverse: RetrySchedule[int]
    query_due_s: dict[int, float] = field(default_factory=dict)

    def due(self, order_id: int, now_s: float) -> bool:
        return self.reverse.is_due(order_id, now_s) and self.query_due_s.get(order_id, now_s) <= now_s

    def keep_only(self, ids: list[int]) -> None:
        self.reverse.keep_only(ids)
        for i in [i for i in self.query_due_s if i not in ids]:
            del self.query_due_s[i]

    def next_due_s(self, ids: list[int], now_s: float) -> float | None:
        times = [
            max(self.reverse.next_due_s([i], now_s) or now_s, self.query_due_s.get(i, now_s)) for i in ids
        ]
        return min(times) if times else None


@dataclass(frozen=True)
class WalletStep:
    """What one background :meth:`WalletPayments.step` did."""

    finished: int  # orders that reached a final state in this step
    pending: int  # still open after it
    next_due_s: float | None  # clock.monotonic() of the next one due; None when none open


class WalletPayments:
    def __init__(
        self,
        config: TerminalConfig,
        settings: WalletSettings,
        clock: Clock,
        journal: Journal,
        wallet_journal: WalletJournal,
        gateway: WalletGateway,
        receipts: WalletReceipts,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.settings = settings
        self.clock = clock
        self.journal = journal
        self.wj = wallet_journal
        self.gateway = gateway
        self.receipts = receipts
        self._rng = rng
        self.schedule = WalletSchedule(RetrySchedule(config.backoff, rng))

    # --- the cashier's payment ------------------------------------------------------------------

    def pay(self, amount_minor: int, code_text: str, contact: str | None = None) -> Result:
        amount = check_amount(amount_minor)
        try:
            code = parse_payment_code(code_text)
        except PaymentCodeError as exc:
            raise InputError(str(exc)) from None
        recipient = check_contact(contact)
        self.resolve_open()  # orders left unknown by an earlier command go first
        now = self.clock.now()
        batch = self.journal.batch()
        local = f"{to_merchant_local(now, self.config.zone):%Y%m%d%H%M%S}"
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
            order_id = self.wj.create_order(
                conn,
                out_trade_no=order_number(self.config.tid, local, stan),
                stan=stan,
                batch=batch,
                amount_minor=amount,
                brand=code.brand,
                code_masked=code.masked,
                contact=recipient,
                operator=self.config.operator,
                now=now,
                query_until=now + timedelta(seconds=self.settings.query_window_s),
            )
        # Committed: the order is durable before the first byte; from here it is never dropped.
        order = self.wj.order(order_id)
        log.info("wallet order %s: pay %s (%s)", order.out_trade_no, amount, code.masked)
        res = self.gateway.pay(
            out_trade_no=order.out_trade_no,
            auth_code=code.code,
            total_fee=amount,
            body=(self.config.merchant_name or "tillroll")[:128],
        )
        if res.outcome is PayOutcome.PAID:
            return self._paid(order, res.transaction_id, res.time_end, res.openid)
        if res.outcome is PayOutcome.REFUSED:
            with self.journal.begin() as conn:
                self.wj.move_order(
                    conn, order.id, WalletState.REFUSED, self.clock.now(), err_code=res.code, note=res.message
                )
            return self._result(self.wj.order(order.id), Outcome.DECLINED, raw_code=res.code)
        if res.outcome is PayOutcome.NOT_SENT:
            with self.journal.begin() as conn:
                self.wj.move_order(conn, order.id, WalletState.NOT_SENT, self.clock.now(), note=res.message)
            return self._result(self.wj.order(order.id), Outcome.WALLET_NOT_SENT, detail=res.message)
        with self.journal.begin() as conn:  # USERPAYING / SYSTEMERROR / no answer: a deadline
            self.wj.move_order(
                conn, order.id, WalletState.UNKNOWN, self.clock.now(), err_code=res.code, note=res.message
            )
        log.info("wallet order %s: %s (%s), querying", order.out_trade_no, res.outcome, res.code)
        return self.finish(order.id)

    # --- finishing what is open -------------------------------------------------------------------

    def resolve_open(self) -> list[Result]:
        """Every open order, blocking (bounded): query until its deadline, then reverse."""
        return [self.finish(o.id, interrupted=True) for o in self.wj.open_orders()]

    def finish(self, order_id: int, *, interrupted: bool = False) -> Result:
        """Drive one open order to a final state, or leave it ``reversing`` (with an alert)."""
        order = self._adopt(self.wj.order(order_id)) if interrupted else self.wj.order(order_id)
        while order.state is WalletState.UNKNOWN:
            left_s = (order.query_until - self.clock.now()).total_seconds()
            if left_s <= 0:
                break
            self.clock.sleep(min(self.settings.query_interval_s, left_s))
            done = self._query(order)
            if done is not None:
                return done
            order = self.wj.order(order_id)
        if order.state in (WalletState.UNKNOWN, WalletState.CREATED):
            self._give_up(order)
            order = self.wj.order(order_id)
        if order.state is not WalletState.REVERSING:
            return self._final_result(order)

        def attempt(_: int) -> bool | Again:
            return True if self._reverse(order) else AGAIN

        out = repeat(
            attempt,
            tries_max=self.config.reversal_retries_max,
            backoff=self.config.backoff,
            clock=self.clock,
            rng=self._rng,
        )
        order = self.wj.order(order_id)
        if isinstance(out, Again):
            self.schedule.reverse.failed(order.id, self.clock.monotonic())
            self.journal.alert(
                AlertKind.WALLET_REVERSE_PENDING,
                f"wallet order {order.out_trade_no} ({order.brand.zh} {order.code_masked}) not reversed "
                f"yet ({order.err_code or 'no answer'}): it is retried in the background (`pos run`), "
                "before the next wallet payment and on `tillroll pos recover`",
                self.clock.now(),
            )
        else:
            self.schedule.reverse.succeeded(order.id)
        return self._final_result(order)

    def step(self) -> WalletStep:
        """One try of each open order that is due: a query before its deadline, a reverse after.
        Never waits (but for the gateway's own bounded timeouts)."""
        orders = self.wj.open_orders()
        ids = [o.id for o in orders]
        self.schedule.keep_only(ids)
        finished = 0
        for order in orders:
            now_s = self.clock.monotonic()
            if not self.schedule.due(order.id, now_s):
                continue
            order = self._adopt(order)
            if order.state is WalletState.UNKNOWN and self.clock.now() < order.query_until:
                if self._query(order) is not None:
                    finished += 1
                else:
                    self.schedule.query_due_s[order.id] = now_s + self.settings.query_interval_s
                continue
            if order.state is WalletState.UNKNOWN:
                self._give_up(order)
            if self._reverse(self.wj.order(order.id)):
                self.schedule.reverse.succeeded(order.id)
                finished += 1
            else:
                self.schedule.reverse.failed(order.id, self.clock.monotonic())
        left = [o.id for o in self.wj.open_orders()]
        return WalletStep(finished, len(left), self.schedule.next_due_s(left, self.clock.monotonic()))

    def next_due_s(self, now_s: float) -> float | None:
        """When the background should next look at the open orders (``now_s`` for one never
        tried: the caller's instant, so it is due at once); None when there are none."""
        ids = [o.id for o in self.wj.open_orders()]
        return self.schedule.next_due_s(ids, now_s) if ids else None

    # --- steps ------------------------------------------------------------------------------------

    def _adopt(self, order: WalletOrder) -> WalletOrder:
        """An order left ``created`` by a dead process may have been sent: it becomes unknown."""
        if order.state is not WalletState.CREATED:
            return order
        now = self.clock.now()
        with self.journal.begin() as conn:
            self.wj.move_order(conn, order.id, WalletState.UNKNOWN, now, note="interrupted in flight")
        self.journal.alert(
            AlertKind.INTERRUPTED,
            f"wallet order {order.out_trade_no} was in flight: it is queried, then reversed if not paid",
            now,
        )
        return self.wj.order(order.id)

    def _query(self, order: WalletOrder) -> Result | None:
        """One query of an unknown order; a result when it is final now."""
        q: QueryResult = self.gateway.query(out_trade_no=order.out_trade_no, total_fee=order.amount_minor)
        self.wj.count_order(order.id, self.clock.now(), column="queries", code=q.code or q.trade_state)
        if q.outcome is not QueryOutcome.FOUND or q.trade_state is None:
            return None  # no answer, or not there yet: the deadline decides
        state = q.trade_state
        if state.paid:
            return self._paid(order, q.transaction_id, q.time_end, None)
        if state is TradeState.CLOSED:
            return self._cancelled(order, WalletState.CLOSED)
        if state is TradeState.REVOKED:
            return self._cancelled(order, WalletState.REVOKED)
        if state is TradeState.PAYERROR:  # failed for good: reverse now (closes it for certain)
            self._give_up(order)
        return None  # USERPAYING / NOTPAY: ask again

    def _give_up(self, order: WalletOrder) -> None:
        with self.journal.begin() as conn:
            self.wj.move_order(
                conn, order.id, WalletState.REVERSING, self.clock.now(), note="deadline passed"
            )
        log.info("wallet order %s: not final at the deadline, reversing", order.out_trade_no)

    def _reverse(self, order: WalletOrder) -> bool:
        """One reverse of a ``reversing`` order; True when it is now revoked."""
        r = self.gateway.reverse(out_trade_no=order.out_trade_no)
        self.wj.count_order(order.id, self.clock.now(), column="reverse_attempts", code=r.code or None)
        if r.outcome is ReverseOutcome.REVERSED:
            self._cancelled(order, WalletState.REVOKED)
            return True
        if r.outcome is ReverseOutcome.EXPIRED:
            self.journal.alert(
                AlertKind.WALLET_REVERSE_EXPIRED,
                f"wallet order {order.out_trade_no}: the wallet no longer reverses it (REVERSE_EXPIRE); "
                "query it and refund it if it was paid",
                self.clock.now(),
            )
        log.info("wallet order %s: reverse %s (%s)", order.out_trade_no, r.outcome, r.code)
        return False

    def _paid(
        self, order: WalletOrder, transaction_id: str, paid_at: datetime | None, openid: str | None
    ) -> Result:
        now = self.clock.now()
        with self.journal.begin() as conn:
            self.wj.move_order(
                conn,
                order.id,
                WalletState.SUCCESS,
                now,
                transaction_id=transaction_id or None,
                paid_at=paid_at or now,
                openid=openid or None,
                err_code=None,
                note=None,
            )
            paid = self.wj.order(order.id, conn)
            # always (as on the card rail): the slip's QR link needs the back office to have it;
            # to the customer when they gave a contact (--notify)
            announce(
                conn,
                kind=MessageKind.E_RECEIPT,
                tid=self.config.tid,
                reference=wallet_reference(paid),
                recipient=paid.contact,
                fact=order_fact(self.receipts, paid),
                now=now,
            )
        receipt, e_receipt = self.receipts.issue_order(paid)
        return self._result(
            self.wj.order(order.id),
            Outcome.APPROVED,
            receipt=receipt,
            e_receipt=e_receipt,
            e_receipt_url=self.receipts.url(paid.out_trade_no, paid.paid_at),
        )

    def _cancelled(self, order: WalletOrder, state: WalletState) -> Result:
        """Closed or revoked after pay was sent: the customer may have been charged (and may have
        seen "paid"), so they are told it was undone — in the same transaction."""
        now = self.clock.now()
        with self.journal.begin() as conn:
            self.wj.move_order(conn, order.id, state, now)
            done = self.wj.order(order.id, conn)
            announce(
                conn,
                kind=MessageKind.PAYMENT_CANCELLED,
                tid=self.config.tid,
                reference=wallet_reference(done),
                recipient=done.contact,
                fact=cancelled_order_fact(
                    self.receipts,
                    done,
                    reason="closed" if state is WalletState.CLOSED else "reversed",
                    at=now,
                ),
                now=now,
            )
        log.info("wallet order %s: %s, customer told", order.out_trade_no, state)
        return self._final_result(done)

    def _final_result(self, order: WalletOrder) -> Result:
        outcome = {
            WalletState.SUCCESS: Outcome.APPROVED,
            WalletState.REFUSED: Outcome.DECLINED,
            WalletState.NOT_SENT: Outcome.WALLET_NOT_SENT,
            WalletState.CLOSED: Outcome.WALLET_CANCELLED,
            WalletState.REVOKED: Outcome.WALLET_CANCELLED,
        }.get(order.state, Outcome.WALLET_PENDING)
        return self._result(order, outcome, raw_code=order.err_code if outcome is Outcome.DECLINED else None)

    def _result(
        self,
        order: WalletOrder,
        outcome: Outcome,
        *,
        raw_code: str | None = None,
        detail: str = "",
        receipt: ReceiptState | None = None,
        e_receipt: Path | None = None,
        e_receipt_url: str | None = None,
    ) -> Result:
        if outcome is Outcome.DECLINED:
            detail = REFUSAL_TEXT.get(raw_code or "", order.note or "")
        elif not detail:
            detail = f"{order.brand.label} {order.code_masked}"
        return Result(
            outcome,
            raw_code=raw_code,
            trace=order.stan,
            batch=order.batch,
            amount_minor=order.amount_minor,
            rrn=order.transaction_id,
            detail=detail,
            order_no=order.out_trade_no,
            receipt=receipt,
            e_receipt=e_receipt,
            e_receipt_url=e_receipt_url,
        )
