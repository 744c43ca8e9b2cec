"""The terminal's wallet gateway: a small interface, typed answers, and an HTTP client for WALLET.md.

:class:`WalletGateway` is what the terminal's wallet rail talks to (pay, query, reverse, refund,
refund_query). Its answers are typed results with enum outcomes, so an adapter for a real wallet
(wechatpy, python-alipay-sdk) is a translation into these, not a redesign.

:class:`HttpWalletGateway` speaks WALLET.md exactly: JSON over HTTP POST, every request signed
with the merchant's key (``tillroll.wallet.sign``), every answer's signature verified before any
business field is believed. What an answer means is decided by the pure ``judge_*`` functions
from a :class:`Reply` (both result layers), so the rules are tested without a network:

- the connection was never made (refused, connect timeout) → ``not_sent``: no byte of the
  request left, nothing can have happened;
- a timeout after connecting, a broken connection, a non-200, a body that is not a JSON object,
  or an answer whose signature does not verify → **unknown**, never "failed": query;
- ``return_code`` ``FAIL`` (not understood or not authenticated: the provider changed nothing)
  → refused, with ``return_msg`` as the cause;
- otherwise ``result_code``/``err_code`` decide, per call, as WALLET.md §3 says.

The payment code (``auth_code``) is sent once and never logged.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import httpx

from tillroll.wallet.sign import new_nonce, signed, verify

BODY_MAX_BYTES = 65_536  # a wallet answer is a few hundred bytes; anything past this is not one
BEIJING_OFFSET = timedelta(hours=8)  # WALLET.md §1: times are yyyyMMddHHmmss, UTC+8


def wallet_time_utc(text: object) -> datetime | None:
    """``20261202093015`` (Beijing) as a naive UTC instant; None when absent or not that format."""
    if not isinstance(text, str | int):
        return None
    try:
        return datetime.strptime(str(text), "%Y%m%d%H%M%S") - BEIJING_OFFSET
    except ValueError:
        return None


class Layer(enum.StrEnum):
    """How far a call got."""

    NOT_SENT = "not_sent"  # the connection was never made: nothing left the terminal
    NO_ANSWER = "no_answer"  # sent (or maybe sent), no answer that can be read
    REJECTED = "rejected"  # return_code FAIL: not understood / not authenticated, nothing changed
    UNVERIFIED = "unverified"  # return_code SUCCESS but the signature (or merchant) is wrong
    ANSWERED = "answered"  # authenticated answer: result_code decides


@dataclass(frozen=True)
class Reply:
    layer: Layer
    body: Mapping[str, object]
    detail: str = ""  # for people: why, when not answered

    def field(self, name: str) -> str:
        value = self.body.get(name)
        return "" if value is None else str(value)


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


# --- pay --------------------------------------------------------------------------------------


class PayOutcome(enum.StrEnum):
    PAID = "paid"
    USER_PAYING = "user_paying"  # the customer must confirm on the phone: query
    UNKNOWN = "unknown"  # SYSTEMERROR, no answer, unverified: query, never assume either way
    REFUSED = "refused"  # final: nothing charged; ``code`` says why
    NOT_SENT = "not_sent"


# Refusals that are final for a new order number (WALLET.md §3 pay): nothing was charged.
PAY_REFUSED = frozenset(
    {"AUTHCODEEXPIRE", "AUTH_CODE_INVALID", "NOTENOUGH", "OUT_TRADE_NO_USED", "PARAM_ERROR"}
)
# The order number is known to the wallet (an earlier pay of this order): it answers as the
# order stands — paid, closed or reversed. The terminal asks `query` rather than guessing.
PAY_ORDER_KNOWN = frozenset({"ORDERPAID", "ORDERREVERSED", "ORDERCLOSED"})


@dataclass(frozen=True)
class PayResult:
    outcome: PayOutcome
    code: str = ""  # err_code, or RETURN_FAIL / the layer when not answered
    message: str = ""
    transaction_id: str = ""
    total_fee: int | None = None
    time_end: datetime | None = None  # UTC
    brand: str = ""
    openid: str = ""


def _not_answered(reply: Reply) -> tuple[str, str]:
    if reply.layer is Layer.REJECTED:
        return "RETURN_FAIL", reply.field("return_msg") or "the wallet did not accept the request"
    return reply.layer.value.upper(), reply.detail


def judge_pay(reply: Reply, *, out_trade_no: str, total_fee: int) -> PayResult:
    if reply.layer is Layer.NOT_SENT:
        return PayResult(PayOutcome.NOT_SENT, *_not_answered(reply))
    if reply.layer is Layer.REJECTED:
        return PayResult(PayOutcome.REFUSED, *_not_answered(reply))
    if reply.layer is not Layer.ANSWERED:
        return PayResult(PayOutcome.UNKNOWN, *_not_answered(reply))
    result, err = reply.field("result_code"), reply.field("err_code")
    msg = reply.field("err_code_des")
    if result == "SUCCESS":
        fee = _int(reply.body.get("total_fee"))
        trade = reply.field("out_trade_no")
        if fee != total_fee or (trade and trade != out_trade_no):
            return PayResult(PayOutcome.UNKNOWN, "MISMATCH", f"paid answer for {trade} of {fee}: query")
        return PayResult(
            PayOutcome.PAID,
            transaction_id=reply.field("transaction_id"),
            total_fee=fee,
            time_end=wallet_time_utc(reply.body.get("time_end")),
            brand=reply.field("brand"),
            openid=reply.field("openid"),
        )
    if result != "FAIL":
        return PayResult(PayOutcome.UNKNOWN, "RESULT_CODE", f"result_code {result!r}: query")
    if err == "USERPAYING":
        return PayResult(PayOutcome.USER_PAYING, err, msg)
    if err in PAY_REFUSED:
        return PayResult(PayOutcome.REFUSED, err, msg)
    return PayResult(PayOutcome.UNKNOWN, err or "SYSTEMERROR", msg)


# --- query ------------------------------------------------------------------------------------


class TradeState(enum.StrEnum):
    SUCCESS = "SUCCESS"
    REFUND = "REFUND"  # paid, some refunded
    NOTPAY = "NOTPAY"
    CLOSED = "CLOSED"
    REVOKED = "REVOKED"
    USERPAYING = "USERPAYING"
    PAYERROR = "PAYERROR"

    @property
    def paid(self) -> bool:
        return self in (TradeState.SUCCESS, TradeState.REFUND)


class QueryOutcome(enum.StrEnum):
    FOUND = "found"  # trade_state says where the order stands
    NOT_FOUND = "not_found"  # ORDERNOTEXIST
    UNKNOWN = "unknown"  # no (verified) answer


@dataclass(frozen=True)
class QueryResult:
    outcome: QueryOutcome
    trade_state: TradeState | None = None
    code: str = ""
    message: str = ""
    transaction_id: str = ""
    total_fee: int | None = None
    time_end: datetime | None = None


def judge_query(reply: Reply, *, total_fee: int) -> QueryResult:
    if reply.layer is not Layer.ANSWERED:
        return QueryResult(QueryOutcome.UNKNOWN, None, *_not_answered(reply))
    result, err = reply.field("result_code"), reply.field("err_code")
    if result == "FAIL" and err == "ORDERNOTEXIST":
        return QueryResult(QueryOutcome.NOT_FOUND, None, err, reply.field("err_code_des"))
    try:
        state = TradeState(reply.field("trade_state"))
    except ValueError:
        state = None
    if result != "SUCCESS" or state is None:
        return QueryResult(QueryOutcome.UNKNOWN, None, err or "RESULT_CODE", reply.field("err_code_des"))
    fee = _int(reply.body.get("total_fee"))
    if state.paid and fee != total_fee:
        return QueryResult(QueryOutcome.UNKNOWN, None, "MISMATCH", f"paid amount {fee} is not {total_fee}")
    return QueryResult(
        QueryOutcome.FOUND,
        state,
        transaction_id=reply.field("transaction_id"),
        total_fee=fee,
        time_end=wallet_time_utc(reply.body.get("time_end")),
    )


# --- reverse ----------------------------------------------------------------------------------


class ReverseOutcome(enum.StrEnum):
    REVERSED = "reversed"  # the order is REVOKED; if it had been paid, the money is back
    AGAIN = "again"  # USERPAYING / SYSTEMERROR / recall Y: call again later
    EXPIRED = "expired"  # REVERSE_EXPIRE: past 7 days, refund instead
    UNKNOWN = "unknown"  # no (verified) answer: call again
    REFUSED = "refused"  # not accepted (bad key, bad parameter): call again after fixing


@dataclass(frozen=True)
class ReverseResult:
    outcome: ReverseOutcome
    code: str = ""
    message: str = ""


def judge_reverse(reply: Reply) -> ReverseResult:
    if reply.layer is Layer.REJECTED:
        return ReverseResult(ReverseOutcome.REFUSED, *_not_answered(reply))
    if reply.layer is not Layer.ANSWERED:
        return ReverseResult(ReverseOutcome.UNKNOWN, *_not_answered(reply))
    result, err = reply.field("result_code"), reply.field("err_code")
    msg, recall = reply.field("err_code_des"), reply.field("recall")
    if result == "SUCCESS" and recall != "Y":
        return ReverseResult(ReverseOutcome.REVERSED)
    if err == "REVERSE_EXPIRE":
        return ReverseResult(ReverseOutcome.EXPIRED, err, msg)
    if recall == "Y" or err in ("USERPAYING", "SYSTEMERROR") or result != "FAIL":
        return ReverseResult(ReverseOutcome.AGAIN, err or "RECALL", msg)
    return ReverseResult(ReverseOutcome.REFUSED, err, msg)


# --- refund and refund/query ------------------------------------------------------------------


class RefundStatus(enum.StrEnum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"  # money back with the customer
    CHANGE = "CHANGE"  # failed; money not moved


class RefundOutcome(enum.StrEnum):
    ACCEPTED = "accepted"  # ``status`` says PROCESSING or SUCCESS
    REFUSED = "refused"  # final: REFUND_FEE_INVALID, ORDERNOTPAID, ... (``code``)
    UNKNOWN = "unknown"  # no (verified) answer, SYSTEMERROR: the same refund again


REFUND_REFUSED = frozenset(
    {
        "REFUND_FEE_INVALID",
        "REFUND_COUNT_EXCEED",
        "ORDERNOTPAID",
        "ORDERNOTEXIST",
        "OUT_REFUND_NO_USED",
        "PARAM_ERROR",
    }
)


@dataclass(frozen=True)
class RefundResult:
    outcome: RefundOutcome
    status: RefundStatus | None = None
    code: str = ""
    message: str = ""
    refund_id: str = ""
    refund_fee: int | None = None


def judge_refund(reply: Reply) -> RefundResult:
    if reply.layer is Layer.REJECTED:  # not authenticated: the wallet changed nothing
        return RefundResult(RefundOutcome.REFUSED, None, *_not_answered(reply))
    if reply.layer is not Layer.ANSWERED:
        return RefundResult(RefundOutcome.UNKNOWN, None, *_not_answered(reply))
    result, err, msg = reply.field("result_code"), reply.field("err_code"), reply.field("err_code_des")
    if result == "SUCCESS":
        try:
            status = RefundStatus(reply.field("refund_status") or "PROCESSING")
        except ValueError:
            status = RefundStatus.PROCESSING  # accepted; refund/query tells the rest
        return RefundResult(
            RefundOutcome.ACCEPTED,
            status,
            refund_id=reply.field("refund_id"),
            refund_fee=_int(reply.body.get("refund_fee")),
        )
    if result == "FAIL" and err in REFUND_REFUSED:
        return RefundResult(RefundOutcome.REFUSED, None, err, msg)
    return RefundResult(RefundOutcome.UNKNOWN, None, err or "RESULT_CODE", msg)


class RefundQueryOutcome(enum.StrEnum):
    FOUND = "found"
    NOT_FOUND = "not_found"  # REFUNDNOTEXIST: the refund never arrived; send it again
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RefundQueryResult:
    outcome: RefundQueryOutcome
    status: RefundStatus | None = None
    code: str = ""
    message: str = ""
    refund_id: str = ""
    refund_fee: int | None = None


def judge_refund_query(reply: Reply) -> RefundQueryResult:
    if reply.layer is not Layer.ANSWERED:
        return RefundQueryResult(RefundQueryOutcome.UNKNOWN, None, *_not_answered(reply))
    result, err = reply.field("result_code"), reply.field("err_code")
    if result == "FAIL" and err == "REFUNDNOTEXIST":
        return RefundQueryResult(RefundQueryOutcome.NOT_FOUND, None, err)
    try:
        status = RefundStatus(reply.field("refund_status"))
    except ValueError:
        return RefundQueryResult(RefundQueryOutcome.UNKNOWN, None, err or "RESULT_CODE")
    if result != "SUCCESS":
        return RefundQueryResult(RefundQueryOutcome.UNKNOWN, None, err or "RESULT_CODE")
    return RefundQueryResult(
        RefundQueryOutcome.FOUND,
        status,
        refund_id=reply.field("refund_id"),
        refund_fee=_int(reply.body.get("refund_fee")),
    )


# --- the interface ----------------------------------------------------------------------------


class WalletGateway(Protocol):
    """What the terminal needs of a wallet. Every method returns (never raises for the wire)."""

    def pay(self, *, out_trade_no: str, auth_code: str, total_fee: int, body: str) -> PayResult: ...

    def query(self, *, out_trade_no: str, total_fee: int) -> QueryResult: ...

    def reverse(self, *, out_trade_no: str) -> ReverseResult: ...

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, total_fee: int, refund_fee: int
    ) -> RefundResult: ...

    def refund_query(self, *, out_refund_no: str) -> RefundQueryResult: ...

    def close(self) -> None: ...


class HttpWalletGateway:
    """WALLET.md over HTTP (httpx). One client, kept open; every call bounded by the timeouts."""

    def __init__(
        self,
        base_url: str,
        mch_id: str,
        key: str,
        *,
        connect_timeout_s: float,
        response_timeout_s: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._mch_id = mch_id
        self._key = key
        timeout = httpx.Timeout(response_timeout_s, connect=connect_timeout_s)
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"HttpWalletGateway({self._client.base_url}, mch_id={self._mch_id}, key=<hidden>)"

    def close(self) -> None:
        self._client.close()

    def call(self, path: str, fields: Mapping[str, str | int]) -> Reply:
        """POST one signed request; the reply's layer says how far it got (never raises for IO)."""
        request = signed({"mch_id": self._mch_id, "nonce_str": new_nonce(), **fields}, self._key)
        data = json.dumps(request, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        try:
            with self._client.stream("POST", f"/v1/{path}", content=data, headers=headers) as resp:
                raw = bytearray()
                for chunk in resp.iter_bytes():
                    raw += chunk
                    if len(raw) > BODY_MAX_BYTES:
                        return Reply(Layer.NO_ANSWER, {}, f"answer longer than {BODY_MAX_BYTES} bytes")
                status = resp.status_code
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return Reply(Layer.NOT_SENT, {}, f"cannot connect to the wallet ({type(exc).__name__})")
        except httpx.TimeoutException as exc:
            return Reply(Layer.NO_ANSWER, {}, f"no answer in time ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return Reply(Layer.NO_ANSWER, {}, f"connection broken ({type(exc).__name__})")
        return self.read(status, bytes(raw))

    def read(self, status: int, raw: bytes) -> Reply:
        """Both result layers' outer one: is this an authenticated answer from our wallet?"""
        if status != 200:
            return Reply(Layer.NO_ANSWER, {}, f"HTTP {status}")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return Reply(Layer.NO_ANSWER, {}, "the answer is not JSON")
        if not isinstance(body, dict):
            return Reply(Layer.NO_ANSWER, {}, "the answer is not a JSON object")
        if body.get("return_code") != "SUCCESS":
            if body.get("return_code") == "FAIL":
                return Reply(Layer.REJECTED, body, str(body.get("return_msg") or ""))
            return Reply(Layer.NO_ANSWER, {}, "the answer has no return_code")
        if not verify(body, self._key):
            return Reply(Layer.UNVERIFIED, {}, "the answer's signature does not verify")
        if body.get("mch_id") not in (None, "", self._mch_id):
            return Reply(Layer.UNVERIFIED, {}, "the answer names another merchant")
        return Reply(Layer.ANSWERED, body)

    def pay(self, *, out_trade_no: str, auth_code: str, total_fee: int, body: str) -> PayResult:
        fields: dict[str, str | int] = {
            "auth_code": auth_code,
            "out_trade_no": out_trade_no,
            "total_fee": total_fee,
        }
        if body:
            fields["body"] = body[:128]
        reply = self.call("pay", fields)
        return judge_pay(reply, out_trade_no=out_trade_no, total_fee=total_fee)

    def query(self, *, out_trade_no: str, total_fee: int) -> QueryResult:
        return judge_query(self.call("query", {"out_trade_no": out_trade_no}), total_fee=total_fee)

    def reverse(self, *, out_trade_no: str) -> ReverseResult:
        return judge_reverse(self.call("reverse", {"out_trade_no": out_trade_no}))

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, total_fee: int, refund_fee: int
    ) -> RefundResult:
        fields: dict[str, str | int] = {
            "out_trade_no": out_trade_no,
            "out_refund_no": out_refund_no,
            "total_fee": total_fee,
            "refund_fee": refund_fee,
        }
        return judge_refund(self.call("refund", fields))

    def refund_query(self, *, out_refund_no: str) -> RefundQueryResult:
        return judge_refund_query(self.call("refund/query", {"out_refund_no": out_refund_no}))
