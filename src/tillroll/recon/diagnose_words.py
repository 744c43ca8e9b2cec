"""The diagnosis's sentences: one function per source, each saying only what its records show.

Kept apart from the gathering (``diagnose.py``) so the wording can be read — and changed — in one
place. Every sentence is a :class:`~tillroll.recon.story.Sentence` (中文, English).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tillroll.iso8583.codes import ResponseCode
from tillroll.money import format_yuan
from tillroll.notify.contacts import ContactError, parse_contact
from tillroll.recon.model import ExceptionClass
from tillroll.recon.story import Sentence

if TYPE_CHECKING:
    from tillroll.recon.diagnose import Evidence

CLASS_WORDS: dict[str, tuple[str, str]] = {
    ExceptionClass.CHARGED_NO_RECEIPT: ("扣了款但没有小票", "charged but no receipt"),
    ExceptionClass.RECEIPT_NO_PAYMENT: ("打了小票但没有到账", "a receipt with no payment behind it"),
    ExceptionClass.REFUND_STUCK: ("退款逾期未完成", "a refund stuck past its deadline"),
    ExceptionClass.NOTIFIED_NOT_FINAL: (
        "告知顾客已付款但交易未成功",
        "the customer was told 'paid' but it did not go through",
    ),
    ExceptionClass.SIGNIN_FAILURES: ("终端签到失败", "terminal sign-in failures"),
    ExceptionClass.AMOUNT_MISMATCH: ("金额不一致", "amounts differ"),
    ExceptionClass.MISSING_ON_ONE_SIDE: ("一方缺少记录", "missing on one side"),
    ExceptionClass.DUPLICATE: ("重复记录", "a duplicate"),
}
STATE_WORDS = {
    "open": ("待处理", "open"),
    "in_progress": ("处理中", "in progress"),
    "resolved": ("已解决", "resolved"),
    "written_off": ("已核销", "written off"),
}
CHANNEL_WORDS = {"sms": ("短信", "SMS"), "email": ("邮件", "e-mail"), "webhook": ("商户接口", "webhook")}
_ORDINAL = {2: "second", 3: "third", 4: "fourth", 5: "fifth"}


def _t(ev: Evidence, at: datetime | None) -> str:
    local = ev.local(at)
    return "" if local is None else f"{local:%H:%M}"


def _yuan(amount: Any) -> str:
    return "" if amount is None else f"¥{format_yuan(int(amount))}"


def _code(code: Any) -> tuple[str, str]:
    try:
        rc = ResponseCode(str(code))
    except ValueError:
        return (f"应答码{code}", f"code {code}")
    return (f"{rc.value} {rc.text_zh}", f"{rc.value} {rc.text_en}")


def _card_entry(ev: Evidence, e: Any) -> Sentence:
    tid, t, a, stan = e["tid"], _t(ev, e["created_at"]), _yuan(e["amount_minor"]), e["stan"]
    note_zh = f"（{e['note']}）" if e["note"] else ""
    note_en = f" ({e['note']})" if e["note"] else ""
    state, u = e["state"], _t(ev, e["updated_at"])
    if state == "approved" and e["receipt"] == "printed":
        return Sentence(
            f"{tid}于{t}批准了这笔{a}的消费（凭证号{stan}），小票已打印。",
            f"{tid} approved the {a} sale at {t} (trace {stan}) and printed the slip.",
        )
    if state == "approved":
        return Sentence(
            f"{tid}于{t}批准了这笔{a}的消费（凭证号{stan}），但小票没有打印出来，待补打。",
            f"{tid} approved the {a} sale at {t} (trace {stan}) but the slip did not print; it is owed.",
        )
    if state in ("unknown", "reversed", "reversal_pending"):
        first = Sentence(
            f"{t}时{tid}发出这笔{a}的消费后没有收到可用的应答{note_zh}。",
            f"At {t} {tid} sent the {a} sale and got no usable answer{note_en}.",
        )
        if state == "reversed":
            return Sentence(
                first.zh + f"终端于{u}冲正了它。", first.en + f" The terminal reversed it at {u}."
            )
        if state == "reversal_pending":
            return Sentence(
                first.zh + "终端的冲正尚未完成。", first.en + " The terminal's reversal is still pending."
            )
        return first
    if state == "declined":
        zh, en = _code(e["response_code"])
        return Sentence(
            f"{tid}于{t}的这笔{a}消费被拒绝（{zh}）。", f"The {a} sale at {t} on {tid} was declined ({en})."
        )
    if state == "not_processed":
        return Sentence(
            f"{tid}于{t}的这笔{a}消费没有送达主机{note_zh}，未扣款。",
            f"The {a} sale at {t} on {tid} never reached the host{note_en}: nothing was charged.",
        )
    if state == "voided":
        return Sentence(
            f"{tid}于{t}批准了这笔{a}的消费，后于{u}撤销。",
            f"{tid} approved the {a} sale at {t} and voided it at {u}.",
        )
    return Sentence(
        f"{tid}于{t}的这笔{a}交易仍在等待结果（{state}）。",
        f"The {a} payment at {t} on {tid} is still waiting for its outcome ({state}).",
    )


_WALLET_STATES = {
    "success": ("已付款成功", "was paid"),
    "unknown": ("尚无最终结果，终端正在查询", "has no final answer yet; the terminal is asking"),
    "reversing": ("到期仍未确认，正在撤销", "was not confirmed in time and is being reversed"),
    "revoked": ("已撤销，扣款退回顾客", "was reversed; any amount taken went back to the customer"),
    "closed": ("已关闭，未付款", "was closed unpaid"),
    "refused": ("被钱包拒绝", "was refused by the wallet"),
    "not_sent": (
        "没有发送到钱包（连接失败），未扣款",
        "never reached the wallet (no connection): nothing was charged",
    ),
    "created": ("已创建，等待付款结果", "was created and is waiting for its outcome"),
}


def _wallet_entry(ev: Evidence, e: Any) -> Sentence:
    zh, en = _WALLET_STATES.get(e["state"], (e["state"], e["state"]))
    t, a = _t(ev, e["created_at"]), _yuan(e["amount_minor"])
    code = f"（{e['response_code']}）" if e["response_code"] and e["state"] == "refused" else ""
    return Sentence(
        f"{e['tid']}于{t}发起的钱包付款{a}（订单号{e['order_no']}）{zh}{code}。",
        f"The {a} wallet payment at {t} on {e['tid']} (order {e['order_no']}) {en}.",
    )


def _journal(ev: Evidence) -> list[Sentence]:
    if not ev.journal:
        if ev.host:
            return [Sentence("终端的日志副本尚未上传。", "The terminal's journal copy has not arrived yet.")]
        return []
    out: list[Sentence] = []
    for e in ev.journal:
        if e["kind"] in ("sale", "void", "balance"):
            if e["kind"] == "sale":
                out.append(_card_entry(ev, e))
        elif e["kind"] == "qr_pay":
            out.append(_wallet_entry(ev, e))
        elif e["kind"] in ("refund", "qr_refund"):
            t, a = _t(ev, e["created_at"]), _yuan(e["amount_minor"])
            state = str(e["state"])
            if state in ("approved", "success"):
                out.append(
                    Sentence(f"{t}申请退款{a}，已完成。", f"A refund of {a} was asked at {t}; it is done.")
                )
            else:
                out.append(
                    Sentence(
                        f"{t}申请退款{a}，尚未完成（{state}）。",
                        f"A refund of {a} was asked at {t}; it is not final ({state}).",
                    )
                )
    if ev.failures_today >= 2 and ev.tid:
        n = ev.failures_today
        out.append(
            Sentence(
                f"这是{ev.tid}今天第{n}笔失败的交易。",
                f"That is the {_ORDINAL.get(n, f'{n}th')} failure today on {ev.tid}.",
            )
        )
    return out


def _host(ev: Evidence) -> list[Sentence]:
    card_journal = any(e["rail"] == "card" for e in ev.journal)
    if not ev.host:
        if card_journal:
            return [
                Sentence(
                    "主机没有这笔交易的记录：顾客没有被扣款。",
                    "The host has no record of it: the customer was not charged.",
                )
            ]
        return []
    sale = next((r for r in ev.host if r["kind"] == "sale"), None)
    out: list[Sentence] = []
    if sale is None:
        return out
    a, t = _yuan(sale["amount_minor"]), _t(ev, sale["created_at"])
    if sale["status"] == "declined":
        zh, en = _code(sale["response_code"])
        return [
            Sentence(
                f"主机拒绝了这笔交易（{zh}），没有扣款。",
                f"The host declined it ({en}): nothing was charged.",
            )
        ]
    back = [r for r in ev.host if r["original_id"] == sale["id"] and r["status"] == "approved"]
    undo = [r for r in back if r["kind"] in ("reversal", "auto_refund")]
    if undo:
        r = undo[0]
        by_us = r["rrn"] in ev.host_side
        zh_by = "（对账后由后台冲正）" if by_us else ""
        en_by = " (by the back office, after reconciliation)" if by_us else ""
        out.append(
            Sentence(
                f"顾客于{t}被扣款{a}，并于{_t(ev, r['created_at'])}自动退回{zh_by}。",
                f"The customer was charged {a} at {t} and automatically refunded at "
                f"{_t(ev, r['created_at'])}{en_by}.",
            )
        )
    else:
        out.append(
            Sentence(
                f"顾客于{t}被扣款{a}（参考号{sale['rrn']}）。",
                f"The customer was charged {a} at {t} (RRN {sale['rrn']}).",
            )
        )
    for r in back:
        if r["kind"] == "refund":
            out.append(
                Sentence(
                    f"{_t(ev, r['created_at'])}退款{_yuan(r['amount_minor'])}。",
                    f"{_yuan(r['amount_minor'])} was refunded at {_t(ev, r['created_at'])}.",
                )
            )
        elif r["kind"] == "void":
            out.append(
                Sentence(f"{_t(ev, r['created_at'])}已撤销。", f"It was voided at {_t(ev, r['created_at'])}.")
            )
    if ev.issuer:
        n = len(ev.issuer)
        out.append(
            Sentence(
                f"银行向持卡人发送了{n}条通知。",
                f"The bank sent the cardholder {n} message{'s' if n > 1 else ''}.",
            )
        )
    return out


def _statement(ev: Evidence) -> list[Sentence]:
    wallet = any(e["rail"] == "wallet" for e in ev.journal)
    if not ev.statement:
        if wallet:
            return [
                Sentence("钱包的对账单上（还）没有这笔交易。", "It is not on the wallet's statement (yet).")
            ]
        return []
    out = []
    for s in ev.statement:
        amount = s["refund_minor"] if s["trade_state"] == "REFUND" else s["total_minor"]
        out.append(
            Sentence(
                f"钱包{s['bill_date']}的对账单记为{s['trade_state']} {_yuan(amount)}。",
                f"The wallet's statement of {s['bill_date']} shows {s['trade_state']} {_yuan(amount)}.",
            )
        )
    return out


def _masked(recipient: str, channel: str) -> str:
    if channel == "webhook":
        return "webhook"
    try:
        return parse_contact(recipient).masked()
    except ContactError:
        return "***"


def _messages(ev: Evidence) -> list[Sentence]:
    out = []
    for msg, tries in ev.messages:
        ch = str(msg["channel"])
        zh, en = CHANNEL_WORDS.get(ch, (ch, ch))
        who = _masked(str(msg["recipient"]), ch)
        if msg["state"] == "delivered":
            t = _t(ev, msg["delivered_at"])
            out.append(Sentence(f"已于{t}通过{zh}告知（{who}）。", f"Told by {en} ({who}) at {t}."))
        elif msg["state"] == "dead":
            why = tries[-1]["detail"] if tries and tries[-1]["detail"] else msg["last_error"] or ""
            out.append(
                Sentence(
                    f"通过{zh}的通知（{who}）尝试{len(tries)}次后仍未送达：{why}。",
                    f"The {en} message ({who}) was not delivered after {len(tries)} attempt(s): {why}.",
                )
            )
        else:
            out.append(
                Sentence(
                    f"一条{zh}通知（{who}）正在投递（已尝试{len(tries)}次）。",
                    f"A message by {en} ({who}) is on its way ({len(tries)} attempt(s) so far).",
                )
            )
    if ev.e_receipts:
        out.append(Sentence("电子小票已可在线查看。", "The e-receipt is online."))
    return out


def _detail(action: Any) -> tuple[str, str]:
    try:
        doc = json.loads(action["detail"] or "{}")
    except ValueError:
        doc = {}
    return (str(doc.get("zh", "")), str(doc.get("en", "")))


def _exceptions(ev: Evidence) -> list[Sentence]:
    out = []
    for exc, actions in ev.exceptions:
        czh, cen = CLASS_WORDS.get(exc["class"], (exc["class"], exc["class"]))
        szh, sen = STATE_WORDS.get(exc["state"], (exc["state"], exc["state"]))
        out.append(Sentence(f"对账发现：{czh}（{szh}）。", f"Reconciliation found {cen} ({sen})."))
        for action in actions[-2:]:
            zh, en = _detail(action)
            if en:
                t = _t(ev, action["at"])
                out.append(Sentence(f"{t}：{zh}", f"At {t}: {en[0].upper() + en[1:]}."))
    return out


def _terminal(ev: Evidence) -> list[Sentence]:
    from tillroll.recon.diagnose import status_alerts

    s = ev.status
    if s is None or ev.tid is None:
        return []
    out = []
    if s["printer"] not in ("ok", "unknown"):
        out.append(
            Sentence(f"{ev.tid}的打印机报告：{s['printer']}。", f"{ev.tid}'s printer reports {s['printer']}.")
        )
    if not s["signed_in"]:
        out.append(Sentence(f"{ev.tid}目前没有签到。", f"{ev.tid} is not signed in now."))
    fails = [a for a in status_alerts(s) if a.get("kind") == "sign_in_failures"]
    if fails:
        out.append(
            Sentence(
                f"{ev.tid}报告了{len(fails)}次签到失败提醒。",
                f"{ev.tid} reported {len(fails)} sign-in failure alert(s).",
            )
        )
    return out


def sentences_for(ev: Evidence) -> list[Sentence]:
    if not ev.found:
        return [
            Sentence(
                f"没有找到与{ev.reference}相关的交易记录；请核对凭证号、参考号或订单号。",
                f"Nothing in the records answers to {ev.reference}: check the trace, RRN or order number.",
            )
        ]
    return _journal(ev) + _host(ev) + _statement(ev) + _messages(ev) + _exceptions(ev) + _terminal(ev)
