"""Card transactions at the host: sale, balance inquiry, void, refund, reversal (PROFILE §3, §6).

Each handler runs inside the request's transaction and returns the response to store and send.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from tillroll import ledger
from tillroll.crypto.pin import PinBlockError, decrypt_pin
from tillroll.host.context import RequestContext
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.errors import DecodeError
from tillroll.iso8583.messages import CURRENCY_CNY, Field61, Message, Mti
from tillroll.issuer import bank
from tillroll.issuer.bank import Reason
from tillroll.pan import mask_pan
from tillroll.store.tables import requests, settlements, terminals, transactions

RC = ResponseCode
# A reversal that overtakes its original leaves this in the original's idempotency slot: the
# original, if it arrives later, then differs in content and is declined 94 (PROFILE §6).
TOMBSTONE = "tombstone"
_INSERT_TRANSACTION = insert(transactions)


class TxnStatus(enum.StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"
    REVERSED = "reversed"
    VOIDED = "voided"


class TxnKind(enum.StrEnum):
    SALE = "sale"
    VOID = "void"
    REFUND = "refund"
    AUTO_REFUND = "auto_refund"
    REVERSAL = "reversal"  # what a reversal in the open batch gave back against its sale


# Every kind of row that gives money back against a sale (its original_id). Together they never
# exceed the sale's amount (PROFILE §6); `still_charged_minor` is the one place that adds them up.
GIVING_BACK = (TxnKind.REFUND, TxnKind.AUTO_REFUND, TxnKind.VOID, TxnKind.REVERSAL)


def auth_code(authorization_id: int | None) -> str | None:
    if authorization_id is None:
        return None
    # The bank's authorization code: 6 digits derived from its own authorization record.
    return f"{(authorization_id * 7919 + 104729) % 1_000_000:06d}"


def card_of(msg: Message) -> tuple[str, str | None] | None:
    """PAN and expiry from field 2/14, or from track 2."""
    if "2" in msg:
        return msg["2"], msg.get("14")
    track = msg.get("35")
    if track and "=" in track:
        pan, rest = track.split("=", 1)
        return pan, msg.get("14") or rest[:4]
    return None


def _pin(ctx: RequestContext, pan: str) -> str | None:
    block = ctx.msg.get("52")
    return None if block is None else decrypt_pin(ctx.pik, bytes.fromhex(block), pan)


def transaction_row(
    ctx: RequestContext,
    *,
    kind: TxnKind,
    code: RC,
    amount_minor: int,
    pan_masked: str,
    auth: str | None,
    issuer_ref: int | None,
    original_id: int | None = None,
    batch: str | None = None,
    stan: str | None = None,
) -> dict[str, object]:
    """The host's record of one transaction (pure)."""
    return {
        "rrn": ctx.rrn,
        "tid": ctx.tid,
        "mid": ctx.mid,
        "batch": batch or ctx.f60.batch,
        "stan": stan or ctx.stan,
        "kind": kind,
        "status": TxnStatus.APPROVED if code is RC.APPROVED else TxnStatus.DECLINED,
        "response_code": code.value,
        "amount_minor": amount_minor,
        "currency": CURRENCY_CNY,
        "pan_masked": pan_masked,
        "auth_code": auth,
        "issuer_ref": issuer_ref,
        "original_id": original_id,
        "local_date": ctx.local_date,
        "created_at": ctx.now,
        "updated_at": ctx.now,
    }


def _record(ctx: RequestContext, **row: Any) -> None:
    ctx.conn.execute(_INSERT_TRANSACTION, transaction_row(ctx, **row))


def _set_status(ctx: RequestContext, txn_id: int, status: TxnStatus) -> None:
    ctx.conn.execute(
        update(transactions).where(transactions.c.id == txn_id).values(status=status, updated_at=ctx.now)
    )


def _move(
    ctx: RequestContext,
    orig: Any,
    amount_minor: int,
    reason: Reason,
    *,
    to_cardholder_from: str | None = None,
    from_cardholder_to: str | None = None,
) -> bank.Outcome:
    """Move money on the card of an original authorization, with its ledger entry: back to the
    cardholder from one account, or (a reversed void) from the cardholder to one account."""
    outcome = bank.post_against(
        ctx.conn,
        authorization_id=int(orig["issuer_ref"]),
        direction="credit" if to_cardholder_from else "debit",
        amount_minor=amount_minor,
        reason=reason,
        reference=ctx.rrn,
        merchant_name=ctx.merchant_name,
        now=ctx.now,
    )
    if outcome.approved and outcome.card_id is not None:
        holder = ledger.cardholder(outcome.card_id)
        ledger.transfer(
            ctx.conn,
            ledger.EntryKind(reason.value),
            ctx.rrn,
            source=to_cardholder_from or holder,
            target=from_cardholder_to or holder,
            amount_minor=amount_minor,
            now=ctx.now,
        )
    return outcome


def returned_minor(conn: Connection, sale_id: int) -> int:
    """Everything given back against a sale, by every path: refunds, automatic refunds, a void
    that stands (a reversed void is no longer approved), a reversal in the open batch."""
    total = conn.execute(
        select(func.coalesce(func.sum(transactions.c.amount_minor), 0)).where(
            transactions.c.original_id == sale_id,
            transactions.c.kind.in_(GIVING_BACK),
            transactions.c.status == TxnStatus.APPROVED,
        )
    ).scalar_one()
    return int(total)


def still_charged_minor(conn: Connection, sale: Any) -> int:
    """What the cardholder still pays for a sale: nothing for a declined one, else its amount
    less everything given back against it."""
    if sale["kind"] != TxnKind.SALE or sale["status"] == TxnStatus.DECLINED:
        return 0
    return int(sale["amount_minor"]) - returned_minor(conn, int(sale["id"]))


def give_back(
    ctx: RequestContext,
    sale: Any,
    kind: TxnKind,
    reason: Reason,
    source: str,
    amount_minor: int | None = None,
) -> bank.Outcome:
    """The only way money goes back to a cardholder against a sale: `amount_minor`, or (None)
    whatever is still charged. Refused (61) beyond what is still charged, so that all paths
    together never return more than the sale's amount. Records the giving back as a host
    transaction linked to the sale; the sale's row must be locked by the caller (FOR UPDATE),
    so that two concurrent undos of one sale see each other."""
    still = still_charged_minor(ctx.conn, sale)
    amount = still if amount_minor is None else amount_minor
    if amount > still or amount < 0:
        return bank.Outcome(RC.AMOUNT_LIMIT)
    # Nothing left to return (a fully refunded sale, undone): approved, and no money moves.
    outcome = bank.Outcome(RC.APPROVED)
    if amount:
        outcome = _move(ctx, sale, amount, reason, to_cardholder_from=source)
    _record(
        ctx,
        kind=kind,
        code=outcome.code,
        amount_minor=amount,
        pan_masked=sale["pan_masked"],
        auth=auth_code(outcome.authorization_id) if outcome.approved else None,
        issuer_ref=outcome.authorization_id,
        original_id=int(sale["id"]),
    )
    return outcome


_TERMINAL_BATCH_SHARED = (
    select(terminals.c.batch).where(terminals.c.tid == bindparam("b_tid")).with_for_update(read=True)
)


def open_batch_locked(ctx: RequestContext) -> str | None:
    """The terminal's open batch (the one a new request must be in).

    Takes a shared lock on the terminal's row for the rest of the transaction: a host-side
    close (cut-over, lost journal) locks it for update, so it either waits for this request to
    commit (and then counts it) or commits first (and this request sees the new batch). Without
    it, on PostgreSQL a sale could land in a batch that was settled without it."""
    batch = ctx.conn.execute(_TERMINAL_BATCH_SHARED, {"b_tid": ctx.tid}).scalar()
    return None if batch is None else str(batch)


def sale(ctx: RequestContext) -> Message:
    msg = ctx.msg
    card = card_of(msg)
    amount = msg.get("4")
    if card is None or amount is None or msg.get("49", CURRENCY_CNY) != CURRENCY_CNY:
        return ctx.respond(RC.FORMAT_ERROR)
    if open_batch_locked(ctx) != ctx.f60.batch:  # closed by the host since the session check
        return ctx.respond(RC.SIGN_IN_AGAIN)
    pan, expiry = card
    try:
        pin = _pin(ctx, pan)
    except PinBlockError:
        return ctx.respond(RC.INCORRECT_PIN)
    outcome = bank.debit(
        ctx.conn,
        pan=pan,
        expiry_yymm=expiry,
        pin=pin,
        amount_minor=int(amount),
        reference=ctx.rrn,
        merchant_name=ctx.merchant_name,
        now=ctx.now,
        keystore=ctx.keystore,
    )
    auth = auth_code(outcome.authorization_id) if outcome.approved else None
    if outcome.approved and outcome.card_id is not None:
        ledger.transfer(
            ctx.conn,
            ledger.EntryKind.SALE,
            ctx.rrn,
            source=ledger.cardholder(outcome.card_id),
            target=ledger.CLEARING,
            amount_minor=int(amount),
            now=ctx.now,
        )
    _record(
        ctx,
        kind=TxnKind.SALE,
        code=outcome.code,
        amount_minor=int(amount),
        pan_masked=mask_pan(pan),
        auth=auth,
        issuer_ref=outcome.authorization_id,
    )
    return ctx.respond(outcome.code, auth)


def balance(ctx: RequestContext) -> Message:
    card = card_of(ctx.msg)
    if card is None:
        return ctx.respond(RC.FORMAT_ERROR).without("4")
    pan, expiry = card
    try:
        pin = _pin(ctx, pan)
    except PinBlockError:
        return ctx.respond(RC.INCORRECT_PIN)
    outcome = bank.balance(ctx.conn, pan=pan, expiry_yymm=expiry, pin=pin, now=ctx.now, keystore=ctx.keystore)
    extra: dict[str, str] = {}
    if outcome.approved and outcome.balance_minor is not None:
        sign_char = "C" if outcome.balance_minor >= 0 else "D"
        extra["54"] = f"1002{CURRENCY_CNY}{sign_char}{abs(outcome.balance_minor):012d}"
    return ctx.respond(outcome.code, **extra)


def _original_by_rrn(ctx: RequestContext, f61: Field61) -> Any:
    """The original sale a void or refund names by RRN (37) and field 61."""
    orig = (
        ctx.conn.execute(
            select(transactions)
            .where(transactions.c.rrn == ctx.msg.get("37", ""), transactions.c.kind == TxnKind.SALE)
            .with_for_update()
        )
        .mappings()
        .first()
    )
    card = card_of(ctx.msg)
    if (
        orig is None
        or orig["mid"] != ctx.mid
        or (orig["batch"], orig["stan"], orig["local_date"]) != (f61.batch, f61.stan, f61.date_mmdd)
        or (card is not None and mask_pan(card[0]) != orig["pan_masked"])
        or orig["status"] == TxnStatus.DECLINED
    ):
        return None
    return orig


def _field61(ctx: RequestContext) -> Field61 | None:
    try:
        return Field61.parse(ctx.msg.get("61") or "")
    except DecodeError:
        return None


def void(ctx: RequestContext) -> Message:
    """Cancels a sale of the open batch; gives back what is still charged (a partly refunded
    sale gives back the remainder, PROFILE §6)."""
    f61 = _field61(ctx)
    if f61 is None:
        return ctx.respond(RC.FORMAT_ERROR)
    if open_batch_locked(ctx) != ctx.f60.batch:
        return ctx.respond(RC.SIGN_IN_AGAIN)
    orig = _original_by_rrn(ctx, f61)
    if orig is None or orig["tid"] != ctx.tid or orig["batch"] != ctx.f60.batch:
        return ctx.respond(RC.ORIGINAL_NOT_FOUND)
    # A fully refunded sale has nothing left to void (and no authorization to answer with).
    if orig["status"] != TxnStatus.APPROVED or still_charged_minor(ctx.conn, orig) == 0:
        return ctx.respond(RC.INVALID_TRANSACTION)
    if int(ctx.msg.get("4") or -1) != orig["amount_minor"]:
        return ctx.respond(RC.ORIGINAL_AMOUNT_INCORRECT)
    outcome = give_back(ctx, orig, TxnKind.VOID, Reason.VOID, ledger.CLEARING)
    if outcome.approved:
        _set_status(ctx, int(orig["id"]), TxnStatus.VOIDED)
    return ctx.respond(outcome.code, auth_code(outcome.authorization_id) if outcome.approved else None)


def refund(ctx: RequestContext) -> Message:
    """0220: may reference a sale of an earlier, settled batch; never beyond what is left."""
    f61 = _field61(ctx)
    amount_text = ctx.msg.get("4")
    if f61 is None or amount_text is None or ctx.msg.get("49", CURRENCY_CNY) != CURRENCY_CNY:
        return ctx.respond(RC.FORMAT_ERROR)
    amount = int(amount_text)
    if amount <= 0:
        return ctx.respond(RC.INVALID_AMOUNT)
    if open_batch_locked(ctx) != ctx.f60.batch:
        return ctx.respond(RC.SIGN_IN_AGAIN)
    orig = _original_by_rrn(ctx, f61)
    if orig is None:
        return ctx.respond(RC.ORIGINAL_NOT_FOUND)
    if orig["status"] != TxnStatus.APPROVED:
        return ctx.respond(RC.INVALID_TRANSACTION)
    original_amount = int(orig["amount_minor"])
    if amount > original_amount:
        return ctx.respond(RC.ORIGINAL_AMOUNT_INCORRECT)
    outcome = give_back(ctx, orig, TxnKind.REFUND, Reason.REFUND, ledger.CLEARING, amount)
    return ctx.respond(outcome.code, auth_code(outcome.authorization_id) if outcome.approved else None)


def batch_settled(ctx: RequestContext, batch: str) -> bool:
    return (
        ctx.conn.execute(
            select(settlements.c.id).where(settlements.c.tid == ctx.tid, settlements.c.batch == batch)
        ).first()
        is not None
    )


def reversal(ctx: RequestContext) -> Message:
    """Undo an approved original; a no-op for a declined or reversed one; a tombstone for one
    never seen; an automatic refund when the original's batch is already settled."""
    open_batch_locked(ctx)  # so that "is its batch settled?" cannot change under us
    # Whether the original request was seen is asked BEFORE its transaction is looked up: on
    # PostgreSQL each statement sees what had committed when it began, so an original that
    # commits between the two is then found by the second (asked the other way round, it was
    # seen but not found, and the reversal answered 00 having undone nothing).
    seen = ctx.conn.execute(
        select(requests.c.id).where(
            requests.c.tid == ctx.tid,
            requests.c.batch == ctx.f60.batch,
            requests.c.stan == ctx.stan,
            requests.c.mti == Mti.FINANCIAL.value,
        )
    ).first()
    orig = (
        ctx.conn.execute(
            select(transactions)
            .where(
                transactions.c.tid == ctx.tid,
                transactions.c.batch == ctx.f60.batch,
                transactions.c.stan == ctx.stan,
                transactions.c.kind.in_((TxnKind.SALE, TxnKind.VOID)),
            )
            .with_for_update()
        )
        .mappings()
        .first()
    )
    if orig is None:
        if seen is None:
            ctx.conn.execute(
                insert(requests).values(
                    tid=ctx.tid,
                    batch=ctx.f60.batch,
                    stan=ctx.stan,
                    mti=Mti.FINANCIAL.value,
                    content_hash=TOMBSTONE,
                    created_at=ctx.now,
                )
            )
        return ctx.respond(RC.APPROVED)
    if orig["status"] != TxnStatus.APPROVED:
        return ctx.respond(RC.APPROVED)
    if batch_settled(ctx, ctx.f60.batch):
        # The batch reached the merchant: what is still charged comes back from the merchant.
        if orig["kind"] == TxnKind.SALE and still_charged_minor(ctx.conn, orig) > 0:
            give_back(ctx, orig, TxnKind.AUTO_REFUND, Reason.AUTO_REFUND, ledger.merchant(ctx.mid))
        return ctx.respond(RC.APPROVED)
    if orig["kind"] == TxnKind.SALE:
        give_back(ctx, orig, TxnKind.REVERSAL, Reason.REVERSAL, ledger.CLEARING)
    else:  # a reversed void charges again what the void gave back: the sale stands again
        if int(orig["amount_minor"]):
            _move(
                ctx, orig, int(orig["amount_minor"]), Reason.VOID_REVERSAL, from_cardholder_to=ledger.CLEARING
            )
        _set_status(ctx, int(orig["original_id"]), TxnStatus.APPROVED)
    _set_status(ctx, int(orig["id"]), TxnStatus.REVERSED)
    return ctx.respond(RC.APPROVED)
