"""End of day at the host: settlement (0500/0510) and batch upload (0320/0330), PROFILE §3."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update

from tillroll import ledger
from tillroll.host.card import TxnKind, TxnStatus, batch_settled
from tillroll.host.context import RequestContext
from tillroll.host.states import SessionState
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


class Difference(enum.StrEnum):
    """What a batch upload found (``batch_differences.difference``)."""

    MISSING_AT_HOST = "missing_at_host"
    MISSING_AT_TERMINAL = "missing_at_terminal"
    AMOUNT_DIFFERS = "amount_differs"


class ClosedBy(enum.StrEnum):
    """Who closed a batch: the terminal's 0500, or the host itself (PROFILE §6: a sign-in after
    a lost journal, or a cut-over)."""

    TERMINAL = "terminal"
    HOST = "host"


def host_totals(conn: Connection, tid: str, batch: str) -> SettlementTotals:
    """Debits: approved sales neither voided nor reversed; credits: approved refunds."""
    rows = conn.execute(
        select(transactions.c.kind, func.count(), func.coalesce(func.sum(transactions.c.amount_minor), 0))
        .where(
            transactions.c.tid == tid,
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


def retained_minor(conn: Connection, tid: str, batch: str) -> int:
    """The part of this batch's voided or reversed sales that was refunded before the undo.

    The undo gave back only the remainder (PROFILE §6), and each refund is charged to the
    merchant in its own batch's credits, so the merchant is paid that part here: a sale that
    was undone nets to zero for the merchant, as it does for the cardholder."""
    sale = transactions.alias("sale")
    total = conn.execute(
        select(func.coalesce(func.sum(transactions.c.amount_minor), 0))
        .select_from(transactions.join(sale, sale.c.id == transactions.c.original_id))
        .where(
            sale.c.tid == tid,
            sale.c.batch == batch,
            sale.c.kind == TxnKind.SALE,
            sale.c.status.in_((TxnStatus.VOIDED, TxnStatus.REVERSED)),
            transactions.c.kind == TxnKind.REFUND,
            transactions.c.status == TxnStatus.APPROVED,
        )
    ).scalar_one()
    return int(total)


def fee_minor(amount_minor: int, fee_rate_ppm: int) -> int:
    """Merchant fee on gross sales, rounded half up to the fen."""
    return (amount_minor * fee_rate_ppm + 500_000) // 1_000_000


@dataclass(frozen=True)
class ClosedBatch:
    tid: str
    mid: str
    batch: str
    totals: SettlementTotals
    fee_minor: int
    net_minor: int  # what the merchant is paid for the batch
    balanced: bool | None  # None: closed by the host, no terminal figures to compare


def close_batch(
    conn: Connection,
    *,
    tid: str,
    mid: str,
    batch: str,
    fee_rate_ppm: int,
    now: datetime,
    theirs: SettlementTotals | None,
    closed_by: ClosedBy,
) -> ClosedBatch:
    """Settle one batch: record the figures, pay the merchant, open the terminal's next batch.

    The same for a 0500 and for a batch the host closes itself (then `theirs` is None); the
    terminal's session then serves only this batch's upload, and its next sign-in gets the
    next batch (PROFILE §3, §6)."""
    # Waits for requests in flight in this batch (they hold the row shared, host/card.py), so
    # the totals below count every one of them.
    conn.execute(select(terminals.c.batch).where(terminals.c.tid == tid).with_for_update())
    ours = host_totals(conn, tid, batch)
    kept = retained_minor(conn, tid, batch)
    balanced = None if theirs is None else ours == theirs
    fee = fee_minor(ours.debit_minor, fee_rate_ppm)
    conn.execute(
        insert(settlements).values(
            tid=tid,
            mid=mid,
            batch=batch,
            terminal_debit_minor=None if theirs is None else theirs.debit_minor,
            terminal_debit_count=None if theirs is None else theirs.debit_count,
            terminal_credit_minor=None if theirs is None else theirs.credit_minor,
            terminal_credit_count=None if theirs is None else theirs.credit_count,
            host_debit_minor=ours.debit_minor,
            host_debit_count=ours.debit_count,
            host_credit_minor=ours.credit_minor,
            host_credit_count=ours.credit_count,
            retained_minor=kept,
            fee_minor=fee,
            balanced=None if balanced is None else int(balanced),
            closed_by=closed_by,
            settled_at=now,
        )
    )
    gross = ours.debit_minor + kept - ours.credit_minor
    if gross or fee:
        ledger.post(
            conn,
            ledger.EntryKind.SETTLEMENT,
            f"{tid}:{batch}",
            [
                ledger.Leg(ledger.CLEARING, -gross),
                ledger.Leg(ledger.merchant(mid), gross - fee),
                ledger.Leg(ledger.FEES, fee),
            ],
            now,
        )
    conn.execute(
        update(sessions)
        .where(sessions.c.tid == tid, sessions.c.state == SessionState.ACTIVE)
        .values(state=SessionState.SETTLED)
    )
    conn.execute(
        update(terminals)
        .where(terminals.c.tid == tid, terminals.c.batch == batch)
        .values(batch=next_batch(batch))
    )
    return ClosedBatch(tid, mid, batch, ours, fee, gross - fee, balanced)


def next_batch(batch: str) -> str:
    return f"{int(batch) % 999_999 + 1:06d}"


def settle(ctx: RequestContext) -> Message:
    try:
        theirs = SettlementTotals.parse(ctx.msg.get("48") or "")
    except DecodeError:
        return ctx.respond(RC.FORMAT_ERROR)
    closed = close_batch(
        ctx.conn,
        tid=ctx.tid,
        mid=ctx.mid,
        batch=ctx.f60.batch,
        fee_rate_ppm=ctx.fee_rate_ppm,
        now=ctx.now,
        theirs=theirs,
        closed_by=ClosedBy.TERMINAL,
    )
    flag = SettlementFlag.BALANCED if closed.balanced else SettlementFlag.NOT_BALANCED
    return ctx.respond(RC.APPROVED, f48=closed.totals.field48(flag))


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
