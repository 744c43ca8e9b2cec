"""The intake of terminals' facts: ``POST /api/v1/terminals/{tid}/facts`` (docs/web.md).

One delivery is one row of a terminal's outbox. It is accepted only when signed with that
terminal's back-office key, well-formed and true to the fact format
(:func:`tillroll.terminal.facts.check_fact`); then, in **one transaction**, the fact is stored
(once: the unique message id makes a repeat a no-op that answers as the first did), an e-receipt
row is kept for an ``e_receipt`` or ``refund_approved`` fact, and the fact is fanned out into the
back office's own outbox (customer and merchant messages, :func:`tillroll.notify.fan_out`). A
refused delivery stores nothing and says why in a JSON body with a 4xx status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from tillroll.crypto.backoffice import (
    TID_RE,
    TokenClaims,
    backoffice_key,
    day_number,
    fact_signature_ok,
    make_token,
    verify_token,
)
from tillroll.crypto.keystore import KeyStore, KeyStoreError
from tillroll.host.store import key_label
from tillroll.notify.contacts import ContactError as ContactRefused
from tillroll.notify.facts import FactError as NotifyFactError
from tillroll.notify.outbox import MessageKind
from tillroll.notify.templates import help_url
from tillroll.store.tables import backoffice_facts, e_receipts, terminals
from tillroll.terminal.announce import MERCHANT, fact_message_id
from tillroll.terminal.facts import (
    CheckedFact,
    ContactError,
    FactError,
    check_fact,
    parse_contact,
    slip_document,
    utc_iso,
)

log = logging.getLogger("tillroll.web")

# fan_out(conn, kind, fact, now): the back office's messages for a fact, in the caller's transaction
FanOut = Callable[[Connection, MessageKind, Mapping[str, Any], datetime], Any]
_BODY_KEYS = {"message_id", "kind", "recipient", "payload"}
RECEIPT_KINDS = frozenset({MessageKind.E_RECEIPT, MessageKind.REFUND_APPROVED})


class _Refused(Exception):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _refused(status: int, error: str, detail: str, **more: Any) -> Answer:
    return Answer(status, {"error": error, "detail": detail, **more})


def terminal_key(conn: Connection, keystore: KeyStore, tid: str) -> bytes | None:
    """The back-office key of a registered, active terminal (derived from its sealed TMK)."""
    if not TID_RE.match(tid):
        return None
    row = conn.execute(select(terminals.c.tmk_enc, terminals.c.status).where(terminals.c.tid == tid)).first()
    if row is None or row.status != "active":
        return None
    try:
        tmk = keystore.open(row.tmk_enc, label=key_label(tid, "tmk"))
    except KeyStoreError:
        log.error("terminal %s: its TMK does not open under this master key", tid)
        return None
    return backoffice_key(tmk)


def _canonical(payload: Mapping[str, Any]) -> str:
    return json.dumps(dict(payload), ensure_ascii=False, sort_keys=True)


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _parse(tid: str, key: bytes, body: bytes, ttl_days: int, now: datetime) -> CheckedFact | Answer:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _refused(400, "bad_json", "the body is not UTF-8 JSON")
    if not isinstance(doc, dict) or set(doc) != _BODY_KEYS:
        return _refused(422, "bad_body", f"the body must be an object with exactly {sorted(_BODY_KEYS)}")
    try:
        kind = MessageKind(doc["kind"])
    except (ValueError, TypeError):
        return _refused(422, "bad_kind", f"kind must be one of {[k.value for k in MessageKind]}")
    try:
        payload = doc["payload"]
        fact = check_fact(kind, tid, payload)
    except FactError as exc:
        return _refused(422, "bad_fact", exc.detail, field=exc.field)
    if doc["message_id"] != fact_message_id(kind, tid, fact.reference):
        return _refused(422, "bad_message_id", "message_id must be kind:tid:reference of the fact")
    recipient = doc["recipient"]
    try:
        customer = kind is not MessageKind.MERCHANT_ALERT
        ok = isinstance(recipient, str) and (
            recipient == MERCHANT or (customer and bool(parse_contact(recipient)))
        )
    except ContactError:
        ok = False
    if not ok:
        return _refused(422, "bad_recipient", "recipient must be 'merchant' or a mobile number / e-mail")
    if kind in RECEIPT_KINDS and "receipt_token" in fact.payload:
        claims = verify_token(
            key, fact.payload["receipt_token"], today_day=day_number(now), ttl_days=max(ttl_days, 36500)
        )
        if not isinstance(claims, TokenClaims) or (claims.tid, claims.reference) != (tid, fact.reference):
            return _refused(422, "bad_fact", "receipt_token is not this receipt's", field="receipt_token")
    return fact


def accept(
    engine: Engine,
    keystore: KeyStore,
    *,
    tid: str,
    body: bytes,
    signature: str | None,
    now: datetime,
    fan_out: FanOut,
    base_url: str,
    ttl_days: int,
) -> Answer:
    """Check, store and fan out one delivery (see the module docstring)."""
    with engine.connect() as conn:
        key = terminal_key(conn, keystore, tid)
    # An unknown terminal and a wrong signature look the same from outside.
    if key is None or not fact_signature_ok(key, tid, body, signature):
        return _refused(401, "bad_signature", "the signature is not this terminal's (X-Tillroll-Signature)")
    parsed = _parse(tid, key, body, ttl_days, now)
    if isinstance(parsed, Answer):
        log.warning("terminal %s: fact refused: %s", tid, parsed.body.get("detail"))
        return parsed
    doc = json.loads(body)
    message_id, recipient = doc["message_id"], doc["recipient"]
    if recipient != MERCHANT:
        recipient = parse_contact(recipient)  # kept and compared normalised (+8613800138000)
    payload_text = _canonical(parsed.payload)
    accepted = Answer(200, {"message_id": message_id, "status": "accepted"})
    try:
        with engine.begin() as conn:
            # RETURNING, not rowcount: with an implicit RETURNING, PostgreSQL's rowcount reads -1.
            inserted = (
                conn.execute(
                    _insert(conn)(backoffice_facts)
                    .values(
                        message_id=message_id,
                        tid=tid,
                        kind=parsed.kind.value,
                        reference=parsed.reference,
                        recipient=recipient,
                        payload=payload_text,
                        received_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["message_id"])
                    .returning(backoffice_facts.c.id)
                ).first()
                is not None
            )
            if not inserted:
                first = conn.execute(
                    select(backoffice_facts.c.payload, backoffice_facts.c.recipient).where(
                        backoffice_facts.c.message_id == message_id
                    )
                ).one()
                if (first.payload, first.recipient) != (payload_text, recipient):
                    return _refused(409, "conflict", "another fact was delivered under this message_id")
                return accepted
            if parsed.slip is not None:
                _store_receipt(conn, parsed, message_id, now)
            # A fact without a receipt (a cancellation) carries no token: one is made under the
            # same key, so every message can name the same address form.
            token = parsed.payload.get("receipt_token") or make_token(
                key, tid, parsed.reference, day_number(parsed.at_utc)
            )
            try:
                fan_out(conn, parsed.kind, notice_fact(parsed, message_id, recipient, base_url, token), now)
            except (NotifyFactError, ContactRefused) as exc:  # refused there: roll back, store nothing
                raise _Refused(_refused(422, "bad_fact", f"the notifications refuse it: {exc}")) from exc
    except _Refused as refused:
        log.warning("terminal %s: fact %s refused: %s", tid, message_id, refused.answer.body["detail"])
        return refused.answer
    return accepted


def notice_fact(
    fact: CheckedFact, message_id: str, recipient: str, base_url: str, token: str
) -> dict[str, Any]:
    """The fact as the notifications take it (``tillroll.notify.fan_out``): the terminal's fields,
    plus ``id`` (the message id), ``at`` (the UTC instant), ``contact`` (the customer's, when one
    was given), ``link`` (the e-receipt's address on this back office) and, for a customer, ``help``
    (the self-service page: "charged but no receipt", "my refund has not arrived")."""
    out = dict(fact.payload)
    out["id"] = message_id
    out["at"] = utc_iso(fact.at_utc)
    if recipient != MERCHANT:
        out["contact"] = recipient
        out["help"] = help_url(base_url)
    if fact.slip is not None:
        out["link"] = f"{base_url}/r/{token}"
    # the names the notifications' templates show a card or code, its brand and the zone by
    if fact.payload.get("card_masked"):
        out.setdefault("pan_masked", fact.payload["card_masked"])
    if fact.payload.get("issuer") and "brand" not in out:
        out["brand"] = fact.payload["issuer"]
    if "merchant_tz" in fact.payload:
        out.setdefault("tz", fact.payload["merchant_tz"])
    return out


def _store_receipt(conn: Connection, fact: CheckedFact, message_id: str, now: datetime) -> None:
    p, slip = fact.payload, fact.slip
    assert slip is not None
    conn.execute(
        _insert(conn)(e_receipts)
        .values(
            tid=fact.tid,
            reference=fact.reference,
            message_id=message_id,
            mid=p["mid"],
            merchant_name=p["merchant_name"],
            rail=p["rail"],
            trans_type=slip.trans_type.value,
            amount_minor=p["amount_minor"],
            currency=p["currency"],
            card_masked=p.get("card_masked") or p.get("code_masked") or "",
            at_utc=fact.at_utc,
            at_local=slip.when.isoformat(timespec="seconds"),
            slip=json.dumps(slip_document(slip), ensure_ascii=False, sort_keys=True),
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["tid", "reference"])
    )
