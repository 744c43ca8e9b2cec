"""Refunds of wallet orders (WALLET.md refund, refund/query), on the card rail's refund machine.

A refund names its order by ``out_trade_no`` and gets its own ``out_refund_no``, journalled
(``requested``) before it is sent; then it is sent again — the *same* refund, so the wallet
answers from what it holds and never pays twice — while its outcome is unknown: no answer,
SYSTEMERROR, or still PROCESSING after ``refund_query_tries_max`` queries. At most
``refund_retries_max`` repeats per command with the backoff of ``retry.py``; still unknown, it
stays ``unknown`` with an alert, and ``pos recover`` and the next refund of the same order send it
again. Only a verified SUCCESS (in the refund's answer or its refund/query) is ``approved``; that
change and its announcement (``refund_approved``) commit together, then a REFUND slip prints.
The wallet is the judge of what is left to refund (REFUND_FEE_INVALID names it).
"""

from __future__ import annotations

import logging
import random

from tillroll.clock import Clock, to_merchant_local
from tillroll.money import format_yuan
from tillroll.notify.outbox import MessageKind
from tillroll.terminal.announce import announce
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.inputs import InputError, check_amount
from tillroll.terminal.journal import Journal
from tillroll.terminal.result import Result
from tillroll.terminal.retry import AGAIN, Again, repeat
from tillroll.terminal.states import AlertKind, Outcome, RefundState
from tillroll.terminal.wallet import check_contact, order_number
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.terminal.wallet_gateway import (
    RefundOutcome,
    RefundQueryOutcome,
    RefundStatus,
    WalletGateway,
)
from tillroll.terminal.wallet_journal import WalletJournal, WalletOrder, WalletRefund
from tillroll.terminal.wallet_receipts import WalletReceipts, refund_fact, wallet_reference
from tillroll.terminal.wallet_states import WalletState

log = logging.getLogger("tillroll.terminal.wallet")

REFUND_DECLINE_TEXT = {
    "REFUND_FEE_INVALID": "超出可退金额 more than is left to refund of this order: refund at most the rest",
    "REFUND_COUNT_EXCEED": "退款次数超限 this order has had 50 refunds: no more are possible",
    "ORDERNOTPAID": "原订单未支付 the order was not paid: nothing to refund",
    "ORDERNOTEXIST": "原订单不存在 the wallet does not know the order: check the order number",
    "OUT_REFUND_NO_USED": "退款单号冲突 the refund number is in use: call support",
    "PARAM_ERROR": "参数错误 the wallet refused a field: check the amount",
    "CHANGE": "退款失败，资金未退回 the refund failed at the wallet; no money moved: try again later",
    "RETURN_FAIL": "钱包拒绝请求 the wallet did not accept the request (wallet key?): nothing was refunded",
}


class WalletRefunds:
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

    def refund(self, out_trade_no: str, amount_minor: int, contact: str | None = None) -> Result:
        amount = check_amount(amount_minor)
        recipient = check_contact(contact)
        order = self.wj.find_order(out_trade_no.strip())
        if order is None:
            raise InputError(
                f"wallet order {out_trade_no.strip()[:32]!r} is not in this terminal's journal: check the "
                "order number on the slip (订单号 ORDER)"
            )
        if order.state is not WalletState.SUCCESS:
            return Result(
                Outcome.DECLINED,
                raw_code="ORDERNOTPAID",
                amount_minor=amount,
                order_no=order.out_trade_no,
                detail=f"the order is {order.state.value}, not paid: nothing to refund",
            )
        open_before = self.wj.refunds(order.id, open_only=True)
        if open_before:  # an unfinished refund of this order: finish it, never start a second
            self.retry_open(open_before)
            if self.wj.refunds(order.id, open_only=True):
                return Result(Outcome.REFUND_BLOCKED, amount_minor=amount, order_no=order.out_trade_no)
        now = self.clock.now()
        batch = self.journal.batch()
        local = f"{to_merchant_local(now, self.config.zone):%Y%m%d%H%M%S}"
        with self.journal.begin() as conn:
            stan = self.journal.next_stan(conn)
            refund_id = self.wj.create_refund(
                conn,
                out_refund_no=order_number(self.config.tid, local, stan),
                order_id=order.id,
                stan=stan,
                batch=batch,
                amount_minor=amount,
                contact=recipient or order.contact,
                operator=self.config.operator,
                now=now,
            )
        # Committed: the refund and its number are durable before the first byte.
        return self.submit(refund_id)

    def open(self) -> list[WalletRefund]:
        return self.wj.refunds(open_only=True)

    def retry_open(self, refunds: list[WalletRefund] | None = None) -> list[Result]:
        return [self.submit(r.id) for r in (refunds if refunds is not None else self.open())]

    def submit(self, refund_id: int) -> Result:
        """Send a journalled refund, the same one again while its outcome is unknown."""
        refund = self.wj.refund(refund_id)
        order = self.wj.order(refund.order_id)
        cause = "not sent"

        def attempt(n: int) -> Result | Again:
            nonlocal cause
            now = self.clock.now()
            with self.journal.begin() as conn:
                if self.wj.refund(refund_id, conn).state is RefundState.SUBMITTED:  # left in flight
                    self.wj.move_refund(conn, refund_id, RefundState.UNKNOWN, now, note="interrupted")
                self.wj.move_refund(conn, refund_id, RefundState.SUBMITTED, now)
                self.wj.set_refund(conn, refund_id, now, attempts=refund.attempts + n + 1)
            res = self.gateway.refund(
                out_trade_no=order.out_trade_no,
                out_refund_no=refund.out_refund_no,
                total_fee=order.amount_minor,
                refund_fee=refund.amount_minor,
            )
            if res.outcome is RefundOutcome.REFUSED:
                return self._decline(refund_id, order, res.code, res.message)
            if res.outcome is RefundOutcome.UNKNOWN:
                cause = f"{res.code} {res.message}".strip()
                self._unknown(refund_id, cause, res.code)
                return AGAIN
            if res.refund_id:
                with self.journal.begin() as conn:
                    self.wj.set_refund(conn, refund_id, self.clock.now(), refund_id=res.refund_id)
            status = res.status
            if status is RefundStatus.PROCESSING:
                status = self._ask(refund)
            if status is RefundStatus.SUCCESS:
                return self._approve(refund_id, order)
            if status is RefundStatus.CHANGE:
                return self._decline(refund_id, order, "CHANGE", "")
            cause = "the wallet is still processing it"
            self._unknown(refund_id, cause, "PROCESSING")
            return AGAIN

        out = repeat(
            attempt,
            tries_max=self.config.refund_retries_max + 1,
            backoff=self.config.backoff,
            clock=self.clock,
            rng=self._rng,
        )
        if isinstance(out, Result):
            return out
        self._unknown(refund_id, cause, None)
        self.journal.alert(
            AlertKind.REFUND_UNKNOWN,
            f"wallet refund {refund.out_refund_no} of order {order.out_trade_no} "
            f"({format_yuan(refund.amount_minor)}) outcome unknown: {cause}. It is kept and sent again, "
            "the same refund, by `tillroll pos recover` and the next refund of this order",
            self.clock.now(),
        )
        return Result(
            Outcome.REFUND_UNKNOWN,
            trace=refund.stan,
            batch=refund.batch,
            amount_minor=refund.amount_minor,
            detail=f"退款单号 REFUND NO. {refund.out_refund_no}; 原因 cause: {cause}",
            order_no=order.out_trade_no,
        )

    def _ask(self, refund: WalletRefund) -> RefundStatus | None:
        """refund/query while PROCESSING: at most ``refund_query_tries_max`` times, backing off."""

        def attempt(n: int) -> RefundStatus | Again:
            q = self.gateway.refund_query(out_refund_no=refund.out_refund_no)
            if q.outcome is RefundQueryOutcome.FOUND and q.status is not RefundStatus.PROCESSING:
                assert q.status is not None
                return q.status
            return AGAIN

        if self.settings.refund_query_tries_max == 0:
            return None
        out = repeat(
            attempt,
            tries_max=self.settings.refund_query_tries_max,
            backoff=self.config.backoff,
            clock=self.clock,
            rng=self._rng,
        )
        return None if isinstance(out, Again) else out

    def _unknown(self, refund_id: int, cause: str, code: str | None) -> None:
        now = self.clock.now()
        with self.journal.begin() as conn:
            if self.wj.refund(refund_id, conn).state is not RefundState.UNKNOWN:
                self.wj.move_refund(conn, refund_id, RefundState.UNKNOWN, now, note=cause)
            else:
                self.wj.set_refund(conn, refund_id, now, note=cause)
            if code:
                self.wj.set_refund(conn, refund_id, now, err_code=code[:32])

    def _decline(self, refund_id: int, order: WalletOrder, code: str, message: str) -> Result:
        with self.journal.begin() as conn:
            self.wj.move_refund(
                conn,
                refund_id,
                RefundState.DECLINED,
                self.clock.now(),
                err_code=code[:32],
                note=message or None,
            )
        refund = self.wj.refund(refund_id)
        return Result(
            Outcome.DECLINED,
            raw_code=code,
            trace=refund.stan,
            batch=refund.batch,
            amount_minor=refund.amount_minor,
            detail=REFUND_DECLINE_TEXT.get(code, message),
            order_no=order.out_trade_no,
        )

    def _approve(self, refund_id: int, order: WalletOrder) -> Result:
        now = self.clock.now()
        with self.journal.begin() as conn:
            self.wj.move_refund(conn, refund_id, RefundState.APPROVED, now, approved_at=now, note=None)
            refund = self.wj.refund(refund_id, conn)
            announce(
                conn,
                kind=MessageKind.REFUND_APPROVED,
                tid=self.config.tid,
                reference=wallet_reference(order, refund),
                recipient=refund.contact,
                fact=refund_fact(self.receipts, refund, order),
                now=now,
            )
        log.info("wallet refund %s of %s approved", refund.out_refund_no, order.out_trade_no)
        receipt, e_receipt = self.receipts.issue_refund(refund, order)
        return Result(
            Outcome.APPROVED,
            trace=refund.stan,
            batch=refund.batch,
            amount_minor=refund.amount_minor,
            rrn=refund.refund_id,
            receipt=receipt,
            e_receipt=e_receipt,
            e_receipt_url=self.receipts.url(wallet_reference(order, refund), refund.approved_at),
            detail=f"退款单号 REFUND NO. {refund.out_refund_no}",
            order_no=order.out_trade_no,
        )
