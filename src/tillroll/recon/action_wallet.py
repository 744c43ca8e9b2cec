"""The exception service's calls to the wallet provider: reverse an order, ask a stuck refund
again (the same out_refund_no: the provider answers it as the same refund). Made before the
action's transaction, with no connection held across the network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from tillroll.money import format_yuan
from tillroll.recon.action_effects import Effect, Exc, entries_of
from tillroll.recon.model import ActionKind, ExceptionState
from tillroll.store.tables import journal_entries
from tillroll.terminal.wallet_config import WalletSettings
from tillroll.terminal.wallet_gateway import HttpWalletGateway, RefundOutcome, RefundStatus, ReverseOutcome


@dataclass(frozen=True)
class RefundAsk:
    out_trade_no: str
    out_refund_no: str
    total_fee: int
    refund_fee: int


def refund_ask(conn: Connection, exc: Exc) -> RefundAsk | None:
    """The stuck wallet refund's request, as first sent: from the matcher's evidence, else from
    the terminal's journal copy (the refund entry and its original order)."""
    ev = exc.evidence
    try:
        return RefundAsk(
            str(ev["out_trade_no"]), str(ev["out_refund_no"]), int(ev["total_fee"]), int(ev["refund_fee"])
        )
    except (KeyError, TypeError, ValueError):
        pass
    entries = entries_of(conn, exc)
    refund = next((e for e in entries if e["kind"] == "qr_refund"), None)
    if refund is None:
        sale = next((e for e in entries if e["kind"] == "qr_pay"), None)
        if sale is None:
            return None
        refund = (
            conn.execute(
                select(journal_entries)
                .where(
                    journal_entries.c.tid == sale["tid"], journal_entries.c.original_key == sale["entry_key"]
                )
                .order_by(journal_entries.c.id.desc())
            )
            .mappings()
            .first()
        )
        if refund is None:
            return None
    original = (
        conn.execute(
            select(journal_entries).where(
                journal_entries.c.tid == refund["tid"], journal_entries.c.entry_key == refund["original_key"]
            )
        )
        .mappings()
        .first()
    )
    if original is None or original["amount_minor"] is None or refund["amount_minor"] is None:
        return None
    return RefundAsk(
        str(original["order_no"]),
        str(refund["order_no"]),
        int(original["amount_minor"]),
        int(refund["amount_minor"]),
    )


def _gateway(wallets: Mapping[str, WalletSettings], mid: str | None) -> HttpWalletGateway | None:
    settings = wallets.get(mid or "") or wallets.get("*")
    if settings is None:
        return None
    return HttpWalletGateway(
        settings.url,
        settings.merchant,
        settings.key,
        connect_timeout_s=settings.connect_timeout_s,
        response_timeout_s=settings.response_timeout_s,
    )


def wallet_call(
    wallets: Mapping[str, WalletSettings], exc: Exc, kind: ActionKind, ask: RefundAsk | None
) -> Effect:
    gateway = _gateway(wallets, exc.mid)
    if gateway is None:
        return Effect.failed(
            "没有配置这家商户的钱包参数，无法调用钱包；请在后台配置钱包地址与密钥。",
            f"no wallet settings for merchant {exc.mid}: configure the wallet's address and key",
        )
    try:
        if kind is ActionKind.REVERSE:
            return _reverse_wallet(gateway, exc)
        return _refund_again(gateway, ask)
    finally:
        gateway.close()


def _reverse_wallet(gateway: HttpWalletGateway, exc: Exc) -> Effect:
    if not exc.order_no:
        return Effect.failed("不知道订单号，无法撤销。", "no order number known: nothing to reverse")
    result = gateway.reverse(out_trade_no=exc.order_no)
    if result.outcome is ReverseOutcome.REVERSED:
        return Effect.done(
            f"钱包已撤销订单{exc.order_no}，已扣的款项退回顾客。",
            f"the wallet reversed order {exc.order_no}; any amount taken goes back to the customer",
            order_no=exc.order_no,
        )
    if result.outcome is ReverseOutcome.EXPIRED:
        return Effect.failed(
            f"订单{exc.order_no}已超过撤销期限（7天），请改为退款。",
            f"order {exc.order_no} is past the wallet's reverse window (7 days): refund it instead",
            code=result.code,
        )
    return Effect.failed(
        f"钱包没有确认撤销订单{exc.order_no}（{result.code or result.outcome.value}），请稍后再试。",
        f"the wallet did not confirm the reverse of order {exc.order_no} "
        f"({result.code or result.outcome.value}): try again later",
        code=result.code,
    )


def _refund_again(gateway: HttpWalletGateway, ask: RefundAsk | None) -> Effect:
    if ask is None:
        return Effect.failed(
            "找不到这笔退款的原始请求（订单号、退款单号、金额），无法重试。",
            "the refund's first request (order, refund number, amounts) is not known: cannot retry it",
        )
    result = gateway.refund(
        out_trade_no=ask.out_trade_no,
        out_refund_no=ask.out_refund_no,
        total_fee=ask.total_fee,
        refund_fee=ask.refund_fee,
    )
    yuan = format_yuan(ask.refund_fee)
    data: dict[str, Any] = {"out_refund_no": ask.out_refund_no, "code": result.code}
    if result.outcome is RefundOutcome.ACCEPTED and result.status is RefundStatus.SUCCESS:
        return Effect.done(
            f"钱包已完成退款¥{yuan}（退款单号{ask.out_refund_no}），款项已退回顾客。",
            f"the wallet completed the ¥{yuan} refund {ask.out_refund_no}; "
            "the money is back with the customer",
            ExceptionState.RESOLVED,
            **data,
        )
    if result.outcome is RefundOutcome.ACCEPTED:
        return Effect.done(
            f"钱包已受理退款¥{yuan}（退款单号{ask.out_refund_no}），正在处理。",
            f"the wallet accepted the ¥{yuan} refund {ask.out_refund_no}; it is processing it",
            **data,
        )
    if result.outcome is RefundOutcome.REFUSED:
        return Effect.failed(
            f"钱包拒绝了退款¥{yuan}（{result.code}：{result.message}），需人工处理。",
            f"the wallet refused the ¥{yuan} refund ({result.code}: {result.message}): a person must act",
            **data,
        )
    return Effect.failed(
        f"钱包没有应答退款¥{yuan}（{result.code}），将再次重试。",
        f"no answer from the wallet for the ¥{yuan} refund ({result.code}); it is tried again",
        **data,
    )
