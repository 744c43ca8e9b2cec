"""What each action of the exception service does (``tillroll.recon.actions`` calls these).

Local effects run in the service's transaction (``Env.conn``) and return an :class:`Effect`:
its outcome, what it means for the merchant in 中文 and English, and the exception's state when
the action decides it. The wallet calls (:func:`wallet_call`) run before that transaction, with
no database connection held across the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select

from tillroll.crypto.keystore import KeyStore
from tillroll.host import card
from tillroll.host.config import HostConfig
from tillroll.host.context import RequestContext
from tillroll.iso8583.messages import CURRENCY_CNY, Field60, Message, Mti
from tillroll.money import format_yuan
from tillroll.recon.model import ActionOutcome, ExceptionClass, ExceptionState
from tillroll.store import inserted_id
from tillroll.store.tables import (
    journal_entries,
    merchants,
    requests,
    terminal_commands,
    transactions,
)

STATE_ZH = {
    ExceptionState.OPEN: "待处理",
    ExceptionState.IN_PROGRESS: "处理中",
    ExceptionState.RESOLVED: "解决",
    ExceptionState.WRITTEN_OFF: "核销",
}
HOST_REVERSAL = "host-reversal"  # the content of the request row that gives the reversal its RRN
COMMAND_OPEN = ("pending", "delivered")


@dataclass(frozen=True)
class Exc:
    """An exception row, typed."""

    id: int
    klass: ExceptionClass
    key: str
    state: ExceptionState
    owner: str | None
    mid: str | None
    tid: str | None
    rail: str | None
    rrn: str | None
    order_no: str | None
    batch: str | None
    stan: str | None
    amount_minor: int | None
    evidence: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Exc:
        try:
            evidence = json.loads(row["evidence"] or "{}")
        except ValueError:
            evidence = {}
        return cls(
            id=int(row["id"]),
            klass=ExceptionClass(row["class"]),
            key=str(row["key"]),
            state=ExceptionState(row["state"]),
            owner=row["owner"],
            mid=row["mid"],
            tid=row["tid"],
            rail=row["rail"],
            rrn=row["rrn"],
            order_no=row["order_no"],
            batch=row["batch"],
            stan=row["stan"],
            amount_minor=None if row["amount_minor"] is None else int(row["amount_minor"]),
            evidence=evidence if isinstance(evidence, dict) else {},
            created_at=row["created_at"],
        )

    @property
    def reference(self) -> str | None:
        """The terminal's key of the payment: ``batch.trace`` on the card rail, else the order."""
        if self.rail == "card" and self.batch and self.stan:
            return f"{self.batch}.{self.stan}"
        return self.order_no or (f"{self.batch}.{self.stan}" if self.batch and self.stan else None)


@dataclass(frozen=True)
class Effect:
    outcome: ActionOutcome
    zh: str
    en: str
    state: ExceptionState | None = None  # None: the action's usual state (actions._STATE_AFTER)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def done(cls, zh: str, en: str, state: ExceptionState | None = None, **data: Any) -> Effect:
        return cls(ActionOutcome.DONE, zh, en, state, data)

    @classmethod
    def queued(cls, zh: str, en: str, state: ExceptionState | None = None, **data: Any) -> Effect:
        return cls(ActionOutcome.QUEUED, zh, en, state, data)

    @classmethod
    def skipped(cls, zh: str, en: str, state: ExceptionState | None = None, **data: Any) -> Effect:
        return cls(ActionOutcome.SKIPPED, zh, en, state, data)

    @classmethod
    def failed(cls, zh: str, en: str, **data: Any) -> Effect:
        return cls(ActionOutcome.FAILED, zh, en, None, data)


@dataclass(frozen=True)
class Env:
    conn: Connection
    now: datetime
    keystore: KeyStore
    base_url: str
    host_config: HostConfig
    actor: str


# --- card: the host's own reversal ------------------------------------------------------------


def host_sale(conn: Connection, exc: Exc) -> Any:
    query = select(transactions).where(transactions.c.kind == card.TxnKind.SALE)
    if exc.rrn:
        query = query.where(transactions.c.rrn == exc.rrn)
    elif exc.tid and exc.batch and exc.stan:
        query = query.where(
            transactions.c.tid == exc.tid, transactions.c.batch == exc.batch, transactions.c.stan == exc.stan
        )
    else:
        return None
    return conn.execute(query.with_for_update()).mappings().first()


def reverse_card(env: Env, exc: Exc) -> Effect:
    """A host-side reversal of an approved sale the terminal never saw, through the host's own
    reversal handler (card.reversal) with a 0400 built from the sale: the issuer's credit, the
    ledger, the sale's status (or, in a settled batch, the automatic refund from the merchant)
    are exactly what the terminal's own 0400 would have done. The terminal's 0400 for the same
    STAN, if it comes later, finds the sale reversed and changes nothing."""
    conn = env.conn
    sale = host_sale(conn, exc)
    if sale is None:
        return Effect.failed(
            "主机上找不到这笔交易，无法冲正；请核对参考号。",
            f"the host has no sale {exc.rrn or exc.reference}: nothing to reverse; check the reference",
        )
    yuan = format_yuan(int(sale["amount_minor"]))
    if sale["status"] != card.TxnStatus.APPROVED or card.still_charged_minor(conn, sale) == 0:
        return Effect.skipped(
            f"这笔¥{yuan}的交易已撤销、冲正或退款，无需再冲正。",
            f"the ¥{yuan} sale is already voided, reversed or refunded: nothing left to undo",
            ExceptionState.RESOLVED,
        )
    merchant = conn.execute(
        select(merchants.c.name, merchants.c.fee_rate_ppm).where(merchants.c.mid == sale["mid"])
    ).one()
    request_id = inserted_id(
        conn.execute(insert(requests).values(content_hash=HOST_REVERSAL, created_at=env.now))
    )
    f60 = Field60("22", str(sale["batch"]))
    msg = Message(
        Mti.REVERSAL.value,
        {
            "3": "000000",
            "4": f"{int(sale['amount_minor']):012d}",
            "11": str(sale["stan"]),
            "25": "00",
            "39": "06",
            "41": str(sale["tid"]),
            "42": str(sale["mid"]),
            "49": CURRENCY_CNY,
            "60": f60.encode(),
        },
    )
    ctx = RequestContext(
        conn=conn,
        msg=msg,
        f60=f60,
        rrn=f"{request_id:012d}",
        pik=b"",
        mid=str(sale["mid"]),
        merchant_name=str(merchant.name),
        fee_rate_ppm=int(merchant.fee_rate_ppm),
        now=env.now,
        config=env.host_config,
        keystore=env.keystore,
    )
    answer = card.reversal(ctx)
    back = conn.execute(
        select(transactions.c.kind, transactions.c.amount_minor).where(transactions.c.rrn == ctx.rrn)
    ).first()
    if answer.get("39") != "00" or back is None:
        return Effect.failed(
            f"主机未能冲正这笔¥{yuan}的交易（应答{answer.get('39')}）；请联系收单机构。",
            f"the host could not reverse the ¥{yuan} sale (answer {answer.get('39')}): call the acquirer",
        )
    data: dict[str, Any] = {
        "reversal_rrn": ctx.rrn,
        "returned_minor": int(back.amount_minor),
        "rrn": str(sale["rrn"]),
    }
    if back.kind == card.TxnKind.AUTO_REFUND:
        return Effect.done(
            f"批次已结算：主机从商户账户退还持卡人¥{format_yuan(int(back.amount_minor))}（参考号{ctx.rrn}）。",
            f"the batch was settled: the host refunded ¥{format_yuan(int(back.amount_minor))} to the "
            f"cardholder from the merchant's account (RRN {ctx.rrn})",
            **data,
        )
    return Effect.done(
        f"主机已冲正这笔¥{yuan}的交易，款项退回持卡人（冲正参考号{ctx.rrn}）。",
        f"the host reversed the ¥{yuan} sale; the money goes back to the cardholder (reversal RRN {ctx.rrn})",
        **data,
    )


# --- terminal commands ------------------------------------------------------------------------

_COMMAND_WORDS = {
    "reprint": ("补打小票", "reprint the slip"),
    "retry_refunds": ("重试未完成的退款", "retry its open refunds"),
}


def terminal_command(env: Env, exc: Exc, command: str) -> Effect:
    """A ``terminal_commands`` row: the terminal gets it with the answer to its next upload."""
    reference = exc.reference
    zh, en = _COMMAND_WORDS[command]
    if not exc.tid or not reference:
        return Effect.failed(
            f"不知道是哪台终端的哪笔交易，无法请终端{zh}。",
            f"no terminal and reference known: cannot ask to {en}",
        )
    open_one = env.conn.execute(
        select(terminal_commands.c.id).where(
            terminal_commands.c.tid == exc.tid,
            terminal_commands.c.command == command,
            terminal_commands.c.reference == reference,
            terminal_commands.c.state.in_(COMMAND_OPEN),
        )
    ).first()
    if open_one is not None:
        return Effect.skipped(
            f"已请终端{exc.tid}{zh}（{reference}），正等终端执行。",
            f"terminal {exc.tid} was already asked to {en} ({reference}); waiting for it",
            ExceptionState.IN_PROGRESS,
            command_id=int(open_one.id),
        )
    command_id = inserted_id(
        env.conn.execute(
            insert(terminal_commands).values(
                tid=exc.tid,
                command=command,
                reference=reference,
                state="pending",
                requested_by=env.actor,
                exception_id=exc.id,
                created_at=env.now,
                updated_at=env.now,
            )
        )
    )
    return Effect.queued(
        f"已请终端{exc.tid}{zh}（{reference}），终端下次上传日志时执行。",
        f"terminal {exc.tid} is asked to {en} ({reference}); it does so at its next journal upload",
        command_id=command_id,
    )


def entries_of(conn: Connection, exc: Exc) -> list[Any]:
    """The terminal's journal copies of the exception's payment (newest first)."""
    keys = []
    if exc.rrn:
        keys.append(journal_entries.c.rrn == exc.rrn)
    if exc.order_no:
        keys.append(journal_entries.c.order_no == exc.order_no)
    if exc.tid and exc.batch and exc.stan:
        keys.append(
            (journal_entries.c.tid == exc.tid)
            & (journal_entries.c.batch == exc.batch)
            & (journal_entries.c.stan == exc.stan)
        )
    if not keys:
        return []
    return list(
        conn.execute(
            select(journal_entries).where(or_(*keys)).order_by(journal_entries.c.id.desc())
        ).mappings()
    )
