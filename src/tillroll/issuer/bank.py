"""The simulated issuing bank: cards, PINs (IBM 3624 offsets under a PIN verification key),
balances, limits, statuses, and the cardholder's own message stream.

Every function works inside the caller's database transaction (the host's one transaction per
request), so a debit, its message and the host's booking commit or roll back together.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from tillroll import ledger
from tillroll.clock import merchant_local_text, merchant_zone
from tillroll.crypto.keystore import KeyStore
from tillroll.crypto.pin_offset import pin_matches, pin_offset, validation_data
from tillroll.iso8583.codes import ResponseCode
from tillroll.money import format_yuan
from tillroll.store import inserted_id
from tillroll.store.tables import issuer_authorizations, issuer_cards, issuer_keys, issuer_messages

PIN_TRIES_MAX = 3
BANK_NAME = "模拟银行"
BANK_TIME_ZONE = "Asia/Shanghai"  # the cardholder's messages and card expiry: the bank's day
PVK_NAME = "pvk"
PVK_LABEL = b"issuer:pvk"


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    LOCKED = "locked"  # PIN tries exceeded
    LOST = "lost"


class Reason(enum.StrEnum):
    SALE = "sale"
    VOID = "void"
    REVERSAL = "reversal"
    REFUND = "refund"
    AUTO_REFUND = "auto_refund"
    VOID_REVERSAL = "void_reversal"  # a void that was itself reversed: the sale stands again


_REASON_ZH = {
    Reason.SALE: "消费",
    Reason.VOID: "消费撤销退回",
    Reason.REVERSAL: "冲正退回",
    Reason.REFUND: "退货退回",
    Reason.AUTO_REFUND: "自动退款退回",
    Reason.VOID_REVERSAL: "撤销被冲正，重新扣款",
}


class CardError(ValueError):
    pass


@dataclass(frozen=True)
class Outcome:
    code: ResponseCode
    authorization_id: int | None = None
    balance_minor: int | None = None
    card_id: int | None = None

    @property
    def approved(self) -> bool:
        return self.code is ResponseCode.APPROVED


# Prebuilt statements: the hot path executes them with parameters, never rebuilding them.
_CARD_BY_PAN = select(issuer_cards).where(issuer_cards.c.pan == bindparam("b_pan"))
_CARD_BY_PAN_FOR_UPDATE = _CARD_BY_PAN.with_for_update()
_SET_BALANCE = (
    update(issuer_cards)
    .where(issuer_cards.c.id == bindparam("b_id"))
    .values(balance_minor=bindparam("b_balance"))
)
_INSERT_AUTHORIZATION = insert(issuer_authorizations)
_INSERT_MESSAGE = insert(issuer_messages)


@functools.lru_cache(maxsize=256)  # a sale asks twice for its instant (expiry, then message)
def _bank_time(now: datetime, fmt: str) -> str:
    """The instant on the bank's wall clock, formatted (remembered: one group, one instant)."""
    return merchant_local_text(now, merchant_zone(BANK_TIME_ZONE), fmt)


def pin_verification_key(
    conn: Connection, keystore: KeyStore, *, now: datetime | None = None
) -> bytes | None:
    """The bank's PVK, sealed under the master key in `issuer_keys`; made on first use when
    `now` is given (a concurrent first use keeps the key that won the insert)."""
    sealed = conn.execute(select(issuer_keys.c.key_enc).where(issuer_keys.c.name == PVK_NAME)).scalar()
    if sealed is None and now is not None:
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(issuer_keys).values(
                        name=PVK_NAME, key_enc=keystore.seal(os.urandom(16), label=PVK_LABEL), created_at=now
                    )
                )
        except IntegrityError:
            pass
        sealed = conn.execute(select(issuer_keys.c.key_enc).where(issuer_keys.c.name == PVK_NAME)).scalar()
    return keystore.open(sealed, label=PVK_LABEL) if sealed is not None else None


def add_card(
    conn: Connection,
    *,
    pan: str,
    expiry_yymm: str,
    pin: str,
    balance_minor: int,
    now: datetime,
    keystore: KeyStore,
    limit_minor: int | None = None,
) -> int:
    # No Luhn check: test cards of the profile's examples (e.g. 6222021234567890123) fail it.
    if not (pan.isdigit() and 13 <= len(pan) <= 19):
        raise CardError("card number must be 13 to 19 digits")
    if not (len(expiry_yymm) == 4 and expiry_yymm.isdigit() and 1 <= int(expiry_yymm[2:]) <= 12):
        raise CardError(f"expiry {expiry_yymm!r} is not YYMM")
    if not (pin.isdigit() and 4 <= len(pin) <= 12):
        raise CardError("PIN must be 4 to 12 digits")
    if balance_minor < 0:
        raise CardError("opening balance cannot be negative")
    pvk = pin_verification_key(conn, keystore, now=now)
    assert pvk is not None  # made above when missing
    card_id = inserted_id(
        conn.execute(
            insert(issuer_cards).values(
                pan=pan,
                expiry=expiry_yymm,
                pin_offset=pin_offset(pvk, validation_data(pan), pin),
                balance_minor=balance_minor,
                limit_minor=limit_minor,
                status=CardStatus.ACTIVE,
                created_at=now,
            )
        )
    )
    if balance_minor:
        ledger.transfer(
            conn,
            ledger.EntryKind.OPENING,
            f"card:{card_id}",
            source=ledger.FUNDING,
            target=ledger.cardholder(card_id),
            amount_minor=balance_minor,
            now=now,
        )
    return card_id


def _card(conn: Connection, pan: str, *, for_update: bool = True) -> dict[str, object] | None:
    stmt = _CARD_BY_PAN_FOR_UPDATE if for_update else _CARD_BY_PAN
    row = conn.execute(stmt, {"b_pan": pan}).mappings().first()
    return dict(row) if row else None


def card_refusal(
    card: Mapping[str, object] | None, expiry_yymm: str | None, now: datetime
) -> ResponseCode | None:
    """The card-level checks a bank makes before the PIN and the money (pure)."""
    if card is None:
        return ResponseCode.INVALID_CARD
    if card["status"] == CardStatus.LOCKED:
        return ResponseCode.PIN_TRIES_EXCEEDED
    if card["status"] != CardStatus.ACTIVE:
        return ResponseCode.DO_NOT_HONOUR
    card_expiry = str(card["expiry"])
    if card_expiry < _bank_time(now, "%y%m") or (expiry_yymm is not None and expiry_yymm != card_expiry):
        return ResponseCode.EXPIRED_CARD
    return None


def debit_refusal(card: Mapping[str, object], amount_minor: int) -> ResponseCode | None:
    """The money checks of a purchase, after the card and PIN passed (pure)."""
    if amount_minor <= 0:
        return ResponseCode.INVALID_AMOUNT
    limit = card["limit_minor"]
    if limit is not None and amount_minor > int(str(limit)):
        return ResponseCode.AMOUNT_LIMIT
    if int(str(card["balance_minor"])) < amount_minor:
        return ResponseCode.INSUFFICIENT_FUNDS
    return None


def pin_ok(pvk: bytes | None, card: Mapping[str, object], pin: str) -> bool:
    """Whether `pin` is the card's PIN (pure); never for a card issued before PIN offsets."""
    offset = card["pin_offset"]
    if offset is None or pvk is None:  # a card issued before PIN offsets: re-issue it
        return False
    return pin_matches(pvk, validation_data(str(card["pan"])), str(offset), pin)


def _check_card(
    conn: Connection,
    card: dict[str, object] | None,
    expiry_yymm: str | None,
    pin: str | None,
    now: datetime,
    keystore: KeyStore,
) -> ResponseCode | None:
    """Card-level checks a bank makes before looking at money; None when they pass. A wrong PIN
    counts a try (the third locks the card); a right one clears the count."""
    refusal = card_refusal(card, expiry_yymm, now)
    if refusal is not None or card is None:
        return refusal
    if pin is not None:
        if not pin_ok(pin_verification_key(conn, keystore), card, pin):
            tries = int(str(card["pin_tries"])) + 1
            locked = tries >= PIN_TRIES_MAX
            conn.execute(
                update(issuer_cards)
                .where(issuer_cards.c.id == card["id"])
                .values(pin_tries=tries, status=CardStatus.LOCKED if locked else CardStatus.ACTIVE)
            )
            return ResponseCode.PIN_TRIES_EXCEEDED if locked else ResponseCode.INCORRECT_PIN
        if card["pin_tries"]:
            conn.execute(update(issuer_cards).where(issuer_cards.c.id == card["id"]).values(pin_tries=0))
    return None


def message_text(
    pan: str, what: str, amount_minor: int, balance_minor: int, merchant_name: str, now: datetime
) -> str:
    """The cardholder's "you paid" message of one authorization (pure)."""
    return (
        f"您尾号{pan[-4:]}的卡于{_bank_time(now, '%m月%d日%H:%M')}"
        f"{what}{format_yuan(amount_minor)}元，"
        f"商户：{merchant_name}，可用余额{format_yuan(balance_minor)}元。【{BANK_NAME}】"
    )


def authorization_row(
    card_id: int,
    direction: str,
    amount_minor: int,
    reason: Reason,
    reference: str,
    merchant_name: str,
    now: datetime,
) -> dict[str, object]:
    return {
        "card_id": card_id,
        "direction": direction,
        "amount_minor": amount_minor,
        "reason": reason,
        "reference": reference,
        "merchant_name": merchant_name,
        "created_at": now,
    }


def message_row(
    card: Mapping[str, object],
    authorization_id: int,
    reason: Reason,
    amount_minor: int,
    balance_minor: int,
    merchant_name: str,
    now: datetime,
) -> dict[str, object]:
    text = message_text(str(card["pan"]), _REASON_ZH[reason], amount_minor, balance_minor, merchant_name, now)
    return {"card_id": card["id"], "authorization_id": authorization_id, "text": text, "created_at": now}


def _post(
    conn: Connection,
    *,
    card: dict[str, object],
    direction: str,
    amount_minor: int,
    reason: Reason,
    reference: str,
    merchant_name: str,
    now: datetime,
) -> Outcome:
    delta = -amount_minor if direction == "debit" else amount_minor
    balance = int(str(card["balance_minor"])) + delta
    conn.execute(_SET_BALANCE, {"b_id": card["id"], "b_balance": balance})
    card_id = int(str(card["id"]))
    auth_id = inserted_id(
        conn.execute(
            _INSERT_AUTHORIZATION,
            authorization_row(card_id, direction, amount_minor, reason, reference, merchant_name, now),
        )
    )
    conn.execute(
        _INSERT_MESSAGE, message_row(card, auth_id, reason, amount_minor, balance, merchant_name, now)
    )
    return Outcome(ResponseCode.APPROVED, auth_id, balance, int(str(card["id"])))


def debit(
    conn: Connection,
    *,
    pan: str,
    expiry_yymm: str | None,
    pin: str | None,
    amount_minor: int,
    reference: str,
    merchant_name: str,
    now: datetime,
    keystore: KeyStore,
) -> Outcome:
    """Authorise and book a purchase, as a bank would."""
    card = _card(conn, pan)
    refusal = _check_card(conn, card, expiry_yymm, pin, now, keystore)
    if refusal is not None or card is None:
        return Outcome(refusal or ResponseCode.INVALID_CARD)
    refusal = debit_refusal(card, amount_minor)
    if refusal is not None:
        return Outcome(refusal)
    return _post(
        conn,
        card=card,
        direction="debit",
        amount_minor=amount_minor,
        reason=Reason.SALE,
        reference=reference,
        merchant_name=merchant_name,
        now=now,
    )


def _card_of(conn: Connection, authorization_id: int) -> dict[str, object] | None:
    card_id = conn.execute(
        select(issuer_authorizations.c.card_id).where(issuer_authorizations.c.id == authorization_id)
    ).scalar()
    if card_id is None:
        return None
    row = (
        conn.execute(select(issuer_cards).where(issuer_cards.c.id == card_id).with_for_update())
        .mappings()
        .first()
    )
    return dict(row) if row else None


def post_against(
    conn: Connection,
    *,
    authorization_id: int,
    direction: str,
    amount_minor: int,
    reason: Reason,
    reference: str,
    merchant_name: str,
    now: datetime,
) -> Outcome:
    """Move money on the card of an earlier authorization, with no card checks: a credit
    (void, reversal, refund) a bank always accepts, or the debit that restores a sale whose
    void was itself reversed."""
    card = _card_of(conn, authorization_id)
    if card is None:
        return Outcome(ResponseCode.ORIGINAL_NOT_FOUND)
    return _post(
        conn,
        card=card,
        direction=direction,
        amount_minor=amount_minor,
        reason=reason,
        reference=reference,
        merchant_name=merchant_name,
        now=now,
    )


def balance(
    conn: Connection,
    *,
    pan: str,
    expiry_yymm: str | None,
    pin: str | None,
    now: datetime,
    keystore: KeyStore,
) -> Outcome:
    card = _card(conn, pan)
    refusal = _check_card(conn, card, expiry_yymm, pin, now, keystore)
    if refusal is not None or card is None:
        return Outcome(refusal or ResponseCode.INVALID_CARD)
    return Outcome(ResponseCode.APPROVED, None, int(str(card["balance_minor"])), int(str(card["id"])))


def card_balance(conn: Connection, pan: str) -> int:
    card = _card(conn, pan, for_update=False)
    if card is None:
        raise CardError(f"no card ending {pan[-4:]}")
    return int(str(card["balance_minor"]))


def messages(conn: Connection, pan: str) -> list[str]:
    """The cardholder's message stream, oldest first."""
    card = _card(conn, pan, for_update=False)
    if card is None:
        raise CardError(f"no card ending {pan[-4:]}")
    rows = conn.execute(
        select(issuer_messages.c.text)
        .where(issuer_messages.c.card_id == card["id"])
        .order_by(issuer_messages.c.id)
    )
    return [r[0] for r in rows]
