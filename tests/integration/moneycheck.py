"""Per-sale money check shared by the stateful tests: what the host gave back against each sale."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from tillroll.store.tables import transactions

# The host's rows that give money back against a sale (their original_id): refunds, automatic
# refunds, a void that stands, a reversal in the open batch.
GIVING_BACK = ("refund", "auto_refund", "void", "reversal")


def money_back_by_sale(conn: Connection) -> dict[str, tuple[int, int]]:
    """RRN of every sale -> (its amount, what every path together gave back against it)."""
    back = transactions.alias("back")
    rows = conn.execute(
        select(
            transactions.c.rrn,
            transactions.c.amount_minor,
            func.coalesce(func.sum(back.c.amount_minor), 0),
        )
        .select_from(
            transactions.outerjoin(
                back,
                (back.c.original_id == transactions.c.id)
                & back.c.kind.in_(GIVING_BACK)
                & (back.c.status == "approved"),
            )
        )
        .where(transactions.c.kind == "sale")
        .group_by(transactions.c.id, transactions.c.rrn, transactions.c.amount_minor)
    )
    return {str(rrn): (int(amount), int(returned)) for rrn, amount, returned in rows}


def over_returned(conn: Connection) -> list[str]:
    """Sales that got back more than their amount: must always be empty."""
    return [rrn for rrn, (amount, returned) in money_back_by_sale(conn).items() if returned > amount]
