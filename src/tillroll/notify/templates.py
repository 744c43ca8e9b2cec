"""The messages, in 中文 and English, rendered from a validated final :class:`Fact`.

Formats are data (the tables below); rendering is a pure function. Every message names the
fact's own amount (two decimals), merchant and time (the merchant's local time), so what a
person reads is what was committed. Card and wallet numbers appear only masked (first 6, last 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from tillroll.clock import DEFAULT_MERCHANT_TZ, TimeZoneError, merchant_zone, to_merchant_local
from tillroll.money import CNY, format_yuan
from tillroll.notify.facts import AlertKind, Fact, FactError, fact_ids, refuse_card_numbers
from tillroll.notify.outbox import MessageKind
from tillroll.pan import mask_pan

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
SELF_SERVICE_PATH = "/console/help"  # the customer's own lookup (tillroll.console.selfservice)
# Every customer message ends with the self-service link when the fact carries one (``help``).
HELP_LINE = (
    "有疑问（扣款无小票、退款未到账）：{help}",
    "Charged without a receipt, or a refund not arrived? {help}",
)


def help_url(base_url: str) -> str:
    """The self-service page on the back office at ``base_url``."""
    return base_url.rstrip("/") + SELF_SERVICE_PATH


# Customer messages: (中文, English). Fields: merchant, amount, time, method, link.
CUSTOMER: dict[MessageKind, tuple[str, str]] = {
    MessageKind.E_RECEIPT: (
        "【{merchant}】电子小票：您于{time}付款¥{amount}{method_zh}。查看小票：{link}",
        "{merchant} e-receipt: you paid ¥{amount} on {time}{method_en}. Your receipt: {link}",
    ),
    MessageKind.PAYMENT_CANCELLED: (
        "您在{merchant}的付款¥{amount}未完成，已撤销，占用的款项将退回（{time}{via_zh}）。",
        "Your payment of ¥{amount} at {merchant} did not complete and was cancelled; "
        "any amount held returns to you ({time}{via_en}).",
    ),
    MessageKind.REFUND_APPROVED: (
        "您在{merchant}的退款¥{amount}已批准，款项将退回原付款账户{method_zh}（{time}）。",
        "Your refund of ¥{amount} from {merchant} was approved; it returns to the account you "
        "paid with{method_en} ({time}).",
    ),
    MessageKind.PAYMENT_FOLLOW_UP: (
        "您在{merchant}于{time}的付款¥{amount}{method_zh}虽已打印小票，但款项未到账，交易未完成。请联系商户，"
        "以便重新付款或核对。",
        "Your payment of ¥{amount} at {merchant} on {time}{method_en} printed a receipt but the money "
        "never arrived, so it did not complete. Please contact the merchant to pay again or to check it.",
    ),
}
SUBJECTS: dict[MessageKind, tuple[str, str]] = {
    MessageKind.E_RECEIPT: ("电子小票", "e-receipt"),
    MessageKind.PAYMENT_CANCELLED: ("付款已撤销", "payment cancelled"),
    MessageKind.REFUND_APPROVED: ("退款已批准", "refund approved"),
    MessageKind.PAYMENT_FOLLOW_UP: ("付款未完成", "payment not completed"),
}

# Merchant alerts: (subject 中文, subject English, text 中文, text English).
# Fields: merchant, amount, time, tid, batch, count, detail, what to do next.
ALERTS: dict[AlertKind, tuple[str, str, str, str]] = {
    AlertKind.REVERSAL_OVERDUE: (
        "冲正逾期",
        "reversal overdue",
        "{merchant}：终端{tid}一笔¥{amount}的冲正（{time}）已过期限仍未完成，终端会继续重试；请检查它与主机的连接。",
        "{merchant}: a reversal of ¥{amount} at terminal {tid} ({time}) is still pending past its "
        "deadline; the terminal keeps retrying. Check its link to the host.",
    ),
    AlertKind.PRINTER_FAULT: (
        "打印机故障",
        "printer fault",
        "{merchant}：终端{tid}的打印机故障（{time}），有{count}张小票待补打；修好后请补打（pos reprint）。",
        "{merchant}: the printer of terminal {tid} failed ({time}); {count} receipt(s) are owed. "
        "Fix it and reprint them (pos reprint).",
    ),
    AlertKind.SIGN_IN_FAILURES: (
        "签到失败",
        "sign-in failures",
        "{merchant}：终端{tid}连续{count}次签到失败（{time}），暂时无法交易；请检查密钥与主机。",
        "{merchant}: terminal {tid} failed to sign in {count} times in a row ({time}) and cannot "
        "take payments; check its keys and the host.",
    ),
    AlertKind.JOURNAL_LOSS: (
        "终端日志丢失",
        "journal loss detected",
        "{merchant}：主机发现终端{tid}的日志丢失（{time}），已代为结算批次{batch}（{count}笔，¥{amount}），"
        "终端在新批次继续交易。",
        "{merchant}: the host found that terminal {tid} lost its journal ({time}); it closed and "
        "settled batch {batch} ({count} sale(s), ¥{amount}) and the terminal continues in a new batch.",
    ),
    AlertKind.CUTOVER: (
        "日切结算",
        "cut-over",
        "{merchant}：日切时主机结算了终端{tid}的批次{batch}（{count}笔，¥{amount}，应付¥{net}）（{time}）。",
        "{merchant}: at cut-over the host closed and settled batch {batch} of terminal {tid} "
        "({count} sale(s), ¥{amount}, net ¥{net}) ({time}).",
    ),
    AlertKind.DEAD_LETTER: (
        "消息投递失败",
        "message not delivered",
        "{merchant}：一条消息（{detail}）尝试{count}次后仍无法送达（{time}），已停止重试；请检查该地址。",
        "{merchant}: a message ({detail}) could not be delivered after {count} attempt(s) ({time}) "
        "and is no longer retried; check that address.",
    ),
    AlertKind.RECON_ESCALATED: (
        "对账异常需人工处理",
        "reconciliation needs a person",
        "{merchant}：对账发现的异常（{detail}，终端{tid}）自动处理已达上限（{time}），请在控制台的异常队列中处理。",
        "{merchant}: a reconciliation exception ({detail}, terminal {tid}) could not be settled "
        "automatically ({time}); work it in the console's exception queue.",
    ),
    AlertKind.RECON_FOUND: (
        "对账发现问题",
        "reconciliation found a problem",
        "{merchant}：对账发现终端{tid}的问题：{detail}（{time}），请在控制台查看。",
        "{merchant}: reconciliation found a problem at terminal {tid}: {detail} ({time}); see the console.",
    ),
}

WEBHOOK_EVENT_TYPES: dict[MessageKind, str] = {
    MessageKind.E_RECEIPT: "receipt.issued",
    MessageKind.PAYMENT_CANCELLED: "payment.cancelled",
    MessageKind.REFUND_APPROVED: "refund.approved",
    MessageKind.MERCHANT_ALERT: "merchant.alert",
    MessageKind.PAYMENT_FOLLOW_UP: "payment.follow_up",
}


@dataclass(frozen=True)
class Rendered:
    subject: str  # e-mail subject, bilingual
    text: str  # the body (e-mail) or the whole SMS, 中文 then English


def _zone(fact: Fact) -> tzinfo:
    name = fact.details.get("tz", DEFAULT_MERCHANT_TZ)
    try:
        return merchant_zone(str(name))
    except TimeZoneError as exc:
        raise FactError(str(exc)) from None


def _masked(value: Any) -> str:
    """A card number or payment code for a message: masked again if it came in the clear."""
    text = str(value)
    return text if "*" in text else mask_pan(text)


def fields(fact: Fact) -> dict[str, str]:
    """The values a template may use, already formatted."""
    d = fact.details
    number = d.get("pan_masked") or d.get("code_masked")
    brand = str(d.get("brand") or d.get("method") or "")
    shown = " ".join(p for p in (brand, _masked(number) if number else "") if p)
    amount = "" if fact.amount_minor is None else format_yuan(fact.amount_minor)
    if fact.amount_minor is not None and fact.currency != CNY:
        raise FactError(f"fact {fact.fact_id}: currency {fact.currency} has no message format (only CNY)")
    count = d.get("count", d.get("attempts", d.get("receipts_owed", "")))
    net = d.get("net_minor")
    return {
        "merchant": fact.merchant_name or fact.mid or "",
        "amount": amount,
        "time": to_merchant_local(fact.at, _zone(fact)).strftime(TIME_FORMAT),
        "method_zh": f"（{shown}）" if shown else "",
        "method_en": f" ({shown})" if shown else "",
        "via_zh": f"，{shown}" if shown else "",
        "via_en": f", {shown}" if shown else "",
        "link": str(d.get("link", "")),
        "help": str(d.get("help", "")),
        "tid": str(d.get("tid", "")),
        "batch": str(d.get("batch", "")),
        "count": str(count),
        "net": format_yuan(int(net)) if isinstance(net, int) else "",
        "detail": str(d.get("detail", "")),
    }


def render(fact: Fact) -> Rendered:
    """The bilingual subject and text of ``fact``; refuses anything that would show a full PAN."""
    values = fields(fact)
    merchant = values["merchant"]
    if fact.kind is MessageKind.MERCHANT_ALERT:
        assert fact.alert is not None
        subj_zh, subj_en, zh, en = ALERTS[fact.alert]
    else:
        subj_zh, subj_en = SUBJECTS[fact.kind]
        zh, en = CUSTOMER[fact.kind]
        if values["help"]:
            # a space before it: a link that ends a line must not run into the next words
            zh, en = zh + " " + HELP_LINE[0], en + " " + HELP_LINE[1]
    subject = f"{merchant} {subj_zh} / {subj_en}" if merchant else f"{subj_zh} / {subj_en}"
    text = zh.format(**values) + "\n" + en.format(**values)
    out = Rendered(subject=subject, text=text)
    refuse_card_numbers([out.subject, out.text], "rendered message", fact_ids(fact))
    return out


def webhook_event(fact: Fact) -> dict[str, Any]:
    """The Standard Webhooks payload: ``type``, ``timestamp``, ``data`` (the fact, masked)."""
    rendered = render(fact)
    data: dict[str, Any] = {
        "fact_id": fact.fact_id,
        "mid": fact.mid,
        "merchant_name": fact.merchant_name,
        "at": fact.at.isoformat() + "Z",
        "text": rendered.text,
    }
    if fact.amount_minor is not None:
        data["amount_minor"] = fact.amount_minor
        data["currency"] = fact.currency
    if fact.alert is not None:
        data["alert"] = fact.alert.value
    for key in ("tid", "reference", "batch", "brand", "link", "count", "net_minor"):
        if key in fact.details:
            data[key] = fact.details[key]
    for key in ("pan_masked", "code_masked"):
        if key in fact.details:
            data[key] = _masked(fact.details[key])
    event = {"type": WEBHOOK_EVENT_TYPES[fact.kind], "timestamp": data["at"], "data": data}
    refuse_card_numbers(event, "webhook event", fact_ids(fact))
    return event


def details_text(values: Mapping[str, Any]) -> str:
    """``k=v`` pairs, for an alert's detail line."""
    return ", ".join(f"{k}={v}" for k, v in values.items())
