"""What an answer from the host means, decided without IO. Pure.

:func:`judge` classifies the reply to a MAC'd request (PROFILE §3): only a MAC-verified 00 is
an approval; no answer, an answer that does not match the request, or one whose MAC fails (or
that should carry one and does not) is *unknown*; 77 means "not processed, sign in and send a
new request"; a verified 96 means "nothing was done, the same request may be repeated". The
job modules act on the verdict; none of them reads field 39 on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, tzinfo

from tillroll.clock import to_merchant_local, utc_naive
from tillroll.iso8583 import builders
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.messages import Message, has_mac, mac_matches
from tillroll.terminal.hostlink import LinkStatus
from tillroll.terminal.states import ReversalReason

# Answers from a host that stopped before checking the MAC (PROFILE §3): they carry none and
# mean the host did nothing with the request.
NOT_PROCESSED_CODES = frozenset({"30", "03", "97"})


class VerdictKind(enum.StrEnum):
    NOT_SENT = "not_sent"  # no line could be opened: nothing left the device
    UNKNOWN = "unknown"  # no verified answer: the host may have done it
    APPROVED = "approved"  # MAC-verified 00
    DECLINED = "declined"  # a verified non-approval (or a "not processed" code without MAC)
    RETRY_SAME = "retry_same"  # verified 96: nothing was done, repeat the same request
    RESEND_NEW_STAN = "resend_new_stan"  # 77: not processed, sign in and send a new request


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: ReversalReason | None = None  # for UNKNOWN
    code: str | None = None
    response: Message | None = None
    sign_in: bool = False  # the session must be renewed


@dataclass(frozen=True)
class Reply:
    """One exchange on the link, decoded (``response`` None when it could not be)."""

    status: LinkStatus
    response: Message | None = None
    raw: bytes = b""
    must_sign_in: bool = False
    matched: bool = True


def judge(request: Message, reply: Reply, mak: bytes) -> Verdict:
    """Classify the reply to a MAC'd request."""
    if reply.status is LinkStatus.NOT_SENT:
        return Verdict(VerdictKind.NOT_SENT)
    if reply.status is LinkStatus.NO_ANSWER:
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.NO_RESPONSE)
    resp = reply.response
    if resp is None or not reply.matched:
        if reply.raw and not mac_matches(reply.raw, mak):  # e.g. a MAC damaged past decoding
            return Verdict(VerdictKind.UNKNOWN, ReversalReason.MAC_FAILED, sign_in=True)
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.OTHER)
    code = resp.get("39") or ""
    if code == ResponseCode.SIGN_IN_AGAIN:  # the host stopped before the transaction: not processed
        return Verdict(VerdictKind.RESEND_NEW_STAN, code=code, response=resp, sign_in=True)
    if code == ResponseCode.MAC_FAILED:  # the host says so; reverse anyway, it could have been approved
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.MAC_FAILED, code, resp, sign_in=True)
    if not has_mac(reply.raw):
        if code in NOT_PROCESSED_CODES:
            return Verdict(VerdictKind.DECLINED, code=code, response=resp, sign_in=reply.must_sign_in)
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.MAC_FAILED, code, resp, sign_in=True)
    if not mac_matches(reply.raw, mak):
        return Verdict(VerdictKind.UNKNOWN, ReversalReason.MAC_FAILED, code, resp, sign_in=True)
    if code == ResponseCode.APPROVED:
        return Verdict(VerdictKind.APPROVED, code=code, response=resp, sign_in=reply.must_sign_in)
    if code == ResponseCode.SYSTEM_MALFUNCTION:
        return Verdict(VerdictKind.RETRY_SAME, code=code, response=resp, sign_in=reply.must_sign_in)
    return Verdict(VerdictKind.DECLINED, code=code, response=resp, sign_in=reply.must_sign_in)


def build_reversal(original: Message, reason: ReversalReason, auth_code: str | None = None) -> Message:
    """PROFILE §3 (see `builders.reversal`), with the terminal's typed reason."""
    return builders.reversal(original, reason.value, auth_code)


def response_code(code: str | None) -> ResponseCode | None:
    try:
        return ResponseCode(code) if code else None
    except ValueError:
        return None


def host_time(now: datetime, mmdd: str | None, hhmmss: str | None, tz: tzinfo) -> datetime:
    """The instant (naive UTC) of the host's date (13) and time (12), which are the merchant's
    local time in ``tz`` (PROFILE §7), in the year nearest to the terminal's clock (``now``, UTC)."""
    if not (mmdd and hhmmss and mmdd.isdigit() and hhmmss.isdigit()):
        return now.replace(microsecond=0)
    local_now = to_merchant_local(now, tz)
    best: datetime | None = None
    for year in (local_now.year - 1, local_now.year, local_now.year + 1):
        try:
            cand = datetime(
                year, int(mmdd[:2]), int(mmdd[2:]), int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:])
            )
        except ValueError:
            continue
        if best is None or abs(cand - local_now) < abs(best - local_now):
            best = cand
    if best is None:
        return now.replace(microsecond=0)
    return utc_naive(best.replace(tzinfo=tz))


def parse_balance(f54: str | None) -> int | None:
    """Field 54: account type 2 + amount type 2 + currency 3 + sign C/D + n12."""
    if not f54 or len(f54) < 20 or not f54[8:20].isdigit():
        return None
    amount = int(f54[8:20])
    return -amount if f54[7] == "D" else amount


# Why a repeated request's (refund, settlement) outcome is not known, for the cashier and alerts.
CAUSE_NOT_SENT = "无法连接主机 the host cannot be reached on either line"
CAUSE_SIGN_IN = "签到失败 sign-in failed, so it could not be sent"
CAUSE_NO_ANSWER = "主机无应答 no answer from the host in time"
CAUSE_MAC = "应答校验失败 the answer failed its MAC check (keys renewed)"
CAUSE_96 = "主机故障(96)，未处理 the host had a malfunction (96) and did nothing"
CAUSE_77 = "需重新签到(77) the host asked for a new sign-in"
CAUSE_OTHER = "应答不可用 the answer could not be read"
CAUSE_BATCH_CLOSED = (
    "批次已由主机关闭 the host has moved to a new batch: call the acquirer with the trace to confirm"
)


def unknown_cause(verdict: Verdict) -> str:
    """Why a verdict that is not final leaves the outcome unknown."""
    if verdict.kind is VerdictKind.NOT_SENT:
        return CAUSE_NOT_SENT
    if verdict.kind is VerdictKind.RETRY_SAME:
        return CAUSE_96
    if verdict.kind is VerdictKind.RESEND_NEW_STAN:
        return CAUSE_77
    if verdict.reason is ReversalReason.NO_RESPONSE:
        return CAUSE_NO_ANSWER
    if verdict.reason is ReversalReason.MAC_FAILED:
        return CAUSE_MAC
    return CAUSE_OTHER
