"""End of day at the host: settlement (0500/0510) and batch upload (0320/0330), PROFILE §3."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select, update

from tillroll import ledger
from tillroll.host.card import TxnKind, TxnStatus
from tillroll.host.context import RequestContext
from tillroll.iso8583.codes import ResponseCode
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
UPLOAD_ITEM_DIGITS = 40
UPLOAD_ITEMS_MAX = 8


class Difference:
    MISSING_AT_HOST = "missing_at_host"
    MISSING_AT_TERMINAL = "missing_at_terminal"
    AMOUNT_DIFFERS = "amount_differs"


@dataclass(frozen=True)
class Totals:
    debit_minor: int
    debit_count: int
    credit_minor: int
    credit_count: int

    def encode(self, flag: str) -> str:
        """31 digits: debit amount n12, count n3, credit amount n12, count n3, flag n1."""
        debit = f"{self.debit_minor:012d}{self.debit_count:03d}"
        return f"{debit}{self.credit_minor:012d}{self.credit_count:03d}{flag}"

    @classmethod
    def parse(cls, digits: str) -> Totals:
        if len(digits) < 30 or not digits[:30].isdigit():
            raise ValueError(f"settlement totals {digits!r} are not 30 digits")
        return cls(int(digits[0:12]), int(digits[12:15]), int(digits[15:27]), int(digits[27:30]))


def host_totals(ctx: RequestContext, batch: str) -> Totals:
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
    return Totals(debit, debit_count, credit, credit_count)


def fee_minor(amount_minor: int, fee_rate_ppm: int) -> int:
    """Merchant fee on gross sales, rounded half up to the fen."""
    return (amount_minor * fee_rate_ppm + 500_000) // 1_000_000


def settle(ctx: RequestContext) -> Message:
    field48 = ctx.msg.get("48") or ""
    try:
        theirs = Totals.parse(field48)
    except ValueError:
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
    flag = "1" if balanced else "2"
    return ctx.respond(RC.APPROVED, f48=ours.encode(flag) + Totals(0, 0, 0, 0).encode("0"))


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


def _settled(ctx: RequestContext) -> bool:
    row = ctx.conn.execute(
        select(settlements.c.id).where(settlements.c.tid == ctx.tid, settlements.c.batch == ctx.f60.batch)
    ).first()
    return row is not None


def batch_upload(ctx: RequestContext) -> Message:
    if not _settled(ctx):
        return ctx.respond(RC.INVALID_TRANSACTION)
    digits = ctx.msg.get("48") or ""
    if len(digits) < 2 or not digits.isdigit():
        return ctx.respond(RC.FORMAT_ERROR)
    count = int(digits[:2])
    items = digits[2:]
    if not 1 <= count <= UPLOAD_ITEMS_MAX or len(items) < count * UPLOAD_ITEM_DIGITS:
        return ctx.respond(RC.FORMAT_ERROR)
    for i in range(count):
        item = items[i * UPLOAD_ITEM_DIGITS : (i + 1) * UPLOAD_ITEM_DIGITS]
        stan, pan, amount = item[2:8], item[8:28].lstrip("0"), int(item[28:40])
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
    if not _settled(ctx):
        return ctx.respond(RC.INVALID_TRANSACTION)
    digits = ctx.msg.get("48") or ""
    if len(digits) < 4 or not digits[:4].isdigit():
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
        .values(upload_items=int(digits[:4]))
    )
    return ctx.respond(RC.APPROVED)
