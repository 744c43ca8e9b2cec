"""End of day at the host: settlement (0500/0510) and batch upload (0320/0330), PROFILE §3."""

from __future__ import annotations

from sqlalchemy import func, insert, select, update

from tillroll import ledger
from tillroll.host.card import TxnKind, TxnStatus, batch_settled
from tillroll.host.context import RequestContext
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import DecodeError
from tillroll.iso8583.field48 import (
    SettlementFlag,
    SettlementTotals,
    parse_upload_end,
    parse_upload_items,
)
from tillroll.iso8583.messages import Message
from tillroll.pan import mask_pan
from tillroll.store.tables import (
    batch_differences,
    batch_uploads,
    sessions,
    settlements,
    terminals,
    transactions,
)

RC = ResponseCode


class Difference:
    MISSING_AT_HOST = "missing_at_host"
    MISSING_AT_TERMINAL = "missing_at_terminal"
    AMOUNT_DIFFERS = "amount_differs"


def host_totals(ctx: RequestContext, batch: str) -> SettlementTotals:
    """Debits: approved sales neither voided nor reversed; credits: approved refunds."""
    rows = ctx.conn.execute(
        select(transactions.c.kind, func.count(), func.coalesce(func.sum(transactions.c.amount_minor), 0))
        .where(
            transactions.c.tid == ctx.tid,
            transactions.c.batch == batch,
            transactions.c.status == TxnStatus.APPROVED,
            transactions.c.kind.in_((TxnKind.SALE, TxnKind.REFUND)),
        )
        .group_by(transactions.c.kind)
    ).all()
    by_kind = {kind: (int(count), int(total)) for kind, count, total in rows}
    debit_count, debit = by_kind.get(TxnKind.SALE, (0, 0))
    credit_count, credit = by_kind.get(TxnKind.REFUND, (0, 0))
    return SettlementTotals(debit, debit_count, credit, credit_count)


def fee_minor(amount_minor: int, fee_rate_ppm: int) -> int:
    """Merchant fee on gross sales, rounded half up to the fen."""
    return (amount_minor * fee_rate_ppm + 500_000) // 1_000_000


def settle(ctx: RequestContext) -> Message:
    try:
        theirs = SettlementTotals.parse(ctx.msg.get("48") or "")
    except DecodeError:
        return ctx.respond(RC.FORMAT_ERROR)
    batch = ctx.f60.batch
    ours = host_totals(ctx, batch)
    balanced = ours == theirs
    fee = fee_minor(ours.debit_minor, ctx.fee_rate_ppm)
    ctx.conn.execute(
        insert(settlements).values(
            tid=ctx.tid,
            mid=ctx.mid,
            batch=batch,
            terminal_debit_minor=theirs.debit_minor,
            terminal_debit_count=theirs.debit_count,
            terminal_credit_minor=theirs.credit_minor,
            terminal_credit_count=theirs.credit_count,
            host_debit_minor=ours.debit_minor,
            host_debit_count=ours.debit_count,
            host_credit_minor=ours.credit_minor,
            host_credit_count=ours.credit_count,
            fee_minor=fee,
            balanced=1 if balanced else 0,
            settled_at=ctx.now,
        )
    )
    gross = ours.debit_minor - ours.credit_minor
    if gross or fee:
        ledger.post(
            ctx.conn,
            ledger.EntryKind.SETTLEMENT,
            f"{ctx.tid}:{batch}",
            [
                ledger.Leg(ledger.CLEARING, -gross),
                ledger.Leg(ledger.merchant(ctx.mid), gross - fee),
                ledger.Leg(ledger.FEES, fee),
            ],
            ctx.now,
        )
    # Close the batch: the session now serves only this batch's upload; the next batch follows.
    ctx.conn.execute(
        update(sessions)
        .where(sessions.c.tid == ctx.tid, sessions.c.state == "active")
        .values(state="settled")
    )
    ctx.conn.execute(
        update(terminals).where(terminals.c.tid == ctx.tid).values(batch=f"{int(batch) % 999_999 + 1:06d}")
    )
    flag = SettlementFlag.BALANCED if balanced else SettlementFlag.NOT_BALANCED
    return ctx.respond(RC.APPROVED, f48=ours.field48(flag))


def _record_difference(
    ctx: RequestContext, stan: str, difference: str, terminal_minor: int | None, host_minor: int | None
) -> None:
    exists = ctx.conn.execute(
        select(batch_differences.c.id).where(
            batch_differences.c.tid == ctx.tid,
            batch_differences.c.batch == ctx.f60.batch,
            batch_differences.c.stan == stan,
        )
    ).first()
    if exists is None:
        ctx.conn.execute(
            insert(batch_differences).values(
                tid=ctx.tid,
                batch=ctx.f60.batch,
                stan=stan,
                difference=difference,
                terminal_amount_minor=terminal_minor,
                host_amount_minor=host_minor,
                created_at=ctx.now,
            )
        )


def batch_upload(ctx: RequestContext) -> Message:
    if not batch_settled(ctx, ctx.f60.batch):
        return ctx.respond(RC.INVALID_TRANSACTION)
    try:
        items = parse_upload_items(ctx.msg.get("48") or "")
    except DecodeError:
        return ctx.respond(RC.FORMAT_ERROR)
    for item in items:
        stan, pan, amount = item.stan, item.pan, item.amount_minor
        seen = ctx.conn.execute(
            select(batch_uploads.c.id).where(
                batch_uploads.c.tid == ctx.tid,
                batch_uploads.c.batch == ctx.f60.batch,
                batch_uploads.c.stan == stan,
            )
        ).first()
        if seen is None:
            ctx.conn.execute(
                insert(batch_uploads).values(
                    tid=ctx.tid,
                    batch=ctx.f60.batch,
                    stan=stan,
                    amount_minor=amount,
                    pan_masked=mask_pan(pan),
                    created_at=ctx.now,
                )
            )
        ours = ctx.conn.execute(
            select(transactions.c.amount_minor).where(
                transactions.c.tid == ctx.tid,
                transactions.c.batch == ctx.f60.batch,
                transactions.c.stan == stan,
                transactions.c.status == TxnStatus.APPROVED,
                transactions.c.kind.in_((TxnKind.SALE, TxnKind.REFUND)),
            )
        ).scalar()
        if ours is None:
            _record_difference(ctx, stan, Difference.MISSING_AT_HOST, amount, None)
        elif int(ours) != amount:
            _record_difference(ctx, stan, Difference.AMOUNT_DIFFERS, amount, int(ours))
    return ctx.respond(RC.APPROVED)


def batch_upload_end(ctx: RequestContext) -> Message:
    if not batch_settled(ctx, ctx.f60.batch):
        return ctx.respond(RC.INVALID_TRANSACTION)
    try:
        total_items = parse_upload_end(ctx.msg.get("48") or "")
    except DecodeError:
        return ctx.respond(RC.FORMAT_ERROR)
    uploaded = {
        row[0]
        for row in ctx.conn.execute(
            select(batch_uploads.c.stan).where(
                batch_uploads.c.tid == ctx.tid, batch_uploads.c.batch == ctx.f60.batch
            )
        )
    }
    ours = ctx.conn.execute(
        select(transactions.c.stan, transactions.c.amount_minor).where(
            transactions.c.tid == ctx.tid,
            transactions.c.batch == ctx.f60.batch,
            transactions.c.status == TxnStatus.APPROVED,
            transactions.c.kind.in_((TxnKind.SALE, TxnKind.REFUND)),
        )
    ).all()
    for stan, amount in ours:
        if stan not in uploaded:
            _record_difference(ctx, stan, Difference.MISSING_AT_TERMINAL, None, int(amount))
    ctx.conn.execute(
        update(settlements)
        .where(settlements.c.tid == ctx.tid, settlements.c.batch == ctx.f60.batch)
        .values(upload_items=total_items)
    )
    return ctx.respond(RC.APPROVED)
