"""Which facts a card transaction announces, and to whom (the fact format is ``facts.py``).

Each is written by :func:`tillroll.terminal.announce.announce` inside the journal transaction
that records the final state it states, never from an unknown outcome:

- an approval of a sale or void → ``e_receipt`` (always: the slip's QR link needs the back office
  to have it), to the customer's contact when one was given (``--notify``), else to no one but
  the merchant's back office; if the printer then fails, the same fact is what reaches the
  customer, at once (the relay runs right after the command);
- an approved refund → ``refund_approved`` (with its own receipt link);
- a sale that ends **reversed** after it was sent (the customer may have been charged), or that
  a void cancelled → ``payment_cancelled``, only when a contact was given.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, insert, select

from tillroll.notify.outbox import MessageKind
from tillroll.terminal.announce import announce
from tillroll.terminal.config import TerminalConfig
from tillroll.terminal.facts import (
    ContactError,
    alert_fact,
    cancelled_fact,
    card_reference,
    parse_contact,
    receipt_fact,
)
from tillroll.terminal.inputs import InputError
from tillroll.terminal.journal import Entry, Journal, contacts
from tillroll.terminal.receipts import Receipts
from tillroll.terminal.states import AlertKind, TxnKind

RAIL = "card"


def parse_notify(notify: str | None) -> str | None:
    """The cashier's ``--notify`` value, checked before anything is journalled (InputError)."""
    if notify is None:
        return None
    try:
        return parse_contact(notify)
    except ContactError as exc:
        raise InputError(f"--notify: {exc}") from None


class Notices:
    def __init__(self, config: TerminalConfig, journal: Journal, receipts: Receipts) -> None:
        self.config = config
        self.journal = journal
        self.receipts = receipts

    @staticmethod
    def remember(conn: Connection, txn_id: int, contact: str | None) -> None:
        """Keep the customer's contact with the transaction (in its journal transaction)."""
        if contact is not None:
            conn.execute(insert(contacts).values(txn_id=txn_id, contact=contact))

    @staticmethod
    def contact(conn: Connection, txn_id: int) -> str | None:
        value: str | None = conn.execute(
            select(contacts.c.contact).where(contacts.c.txn_id == txn_id)
        ).scalar_one_or_none()
        return value

    def approved(self, conn: Connection, txn_id: int, now: datetime) -> None:
        """The receipt of an approval just journalled in ``conn`` (sale, void or refund)."""
        entry = self.journal.get(txn_id, conn)
        assert entry.approved_at is not None
        slip = self.receipts.slip_for(entry, conn)
        kind = MessageKind.REFUND_APPROVED if entry.kind is TxnKind.REFUND else MessageKind.E_RECEIPT
        extra = {"orig_rrn": entry.request.get("37") or ""} if entry.kind is TxnKind.REFUND else None
        fact = receipt_fact(
            slip,
            rail=RAIL,
            at_utc=entry.approved_at,
            merchant_tz=self.config.merchant_tz,
            token=self.receipts.receipt_token(entry),
            extra=extra,
        )
        self._announce(conn, kind, entry, self.contact(conn, txn_id), fact, now)

    def cancelled(self, conn: Connection, txn_id: int, reason: str, now: datetime) -> None:
        """A sale that did not stand (reversed, or voided): told only to a customer who gave a
        contact (the merchant sees it in the journal)."""
        entry = self.journal.get(txn_id, conn)
        contact = self.contact(conn, txn_id)
        if entry.kind is not TxnKind.SALE or contact is None:
            return
        fact = cancelled_fact(
            self.receipts.slip_for(entry, conn),
            rail=RAIL,
            at_utc=entry.approved_at or entry.created_at,
            merchant_tz=self.config.merchant_tz,
            reason=reason,
        )
        self._announce(conn, MessageKind.PAYMENT_CANCELLED, entry, contact, fact, now)

    def reversal_overdue(self, entry: Entry, text: str, now: datetime) -> None:
        """The journal's alert of a reversal pending past its deadline, and the merchant's
        ``reversal_overdue`` notice of it, in one journal transaction."""
        with self.journal.begin() as conn:
            self.journal.alert(AlertKind.REVERSAL_OVERDUE, text, now, entry.id, conn)
            announce(
                conn,
                kind=MessageKind.MERCHANT_ALERT,
                tid=self.config.tid,
                reference=f"{AlertKind.REVERSAL_OVERDUE.value}.{card_reference(entry.batch, entry.stan)}",
                recipient=None,
                fact=alert_fact(
                    alert=AlertKind.REVERSAL_OVERDUE.value,
                    mid=self.config.mid,
                    merchant_name=self.config.merchant_name or self.config.mid,
                    text=text,
                    at_utc=now,
                    amount_minor=entry.amount_minor,
                    batch=entry.batch,
                    trace=entry.stan,
                ),
                now=now,
            )

    def sign_in_failures(self, count: int, text: str, now: datetime) -> None:
        """The journal's alert that sign-in failed ``count`` times in a row (the terminal cannot
        take card payments), and the merchant's ``sign_in_failures`` notice, in one transaction.
        One per streak: the reference is the instant the streak reached ``count``."""
        with self.journal.begin() as conn:
            self.journal.alert(AlertKind.SIGN_IN_FAILURES, text, now, None, conn)
            announce(
                conn,
                kind=MessageKind.MERCHANT_ALERT,
                tid=self.config.tid,
                reference=f"{AlertKind.SIGN_IN_FAILURES.value}.{now:%Y%m%d%H%M%S}",
                recipient=None,
                fact=alert_fact(
                    alert=AlertKind.SIGN_IN_FAILURES.value,
                    mid=self.config.mid,
                    merchant_name=self.config.merchant_name or self.config.mid,
                    text=text,
                    at_utc=now,
                    count=count,
                ),
                now=now,
            )

    def _announce(
        self,
        conn: Connection,
        kind: MessageKind,
        entry: Entry,
        contact: str | None,
        fact: dict[str, object],
        now: datetime,
    ) -> None:
        announce(
            conn,
            kind=kind,
            tid=self.config.tid,
            reference=card_reference(entry.batch, entry.stan),
            recipient=contact,
            fact=fact,
            now=now,
        )
