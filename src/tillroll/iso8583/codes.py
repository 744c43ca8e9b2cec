"""Response codes the host uses (PROFILE §5), as an enum with the terminal's action."""

from __future__ import annotations

import enum


class Action(enum.Enum):
    PRINT = "print"
    STOP = "stop"
    RETRY_PIN = "retry_pin"
    SIGN_IN_AND_RESEND = "sign_in_and_resend"
    RETRY_SAME = "retry_same"
    SIGN_IN = "sign_in"


class ResponseCode(enum.StrEnum):
    APPROVED = "00"
    INVALID_MERCHANT = "03"
    DO_NOT_HONOUR = "05"
    INVALID_TRANSACTION = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD = "14"
    ORIGINAL_NOT_FOUND = "25"
    FORMAT_ERROR = "30"
    NOT_SUPPORTED = "40"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    INCORRECT_PIN = "55"
    AMOUNT_LIMIT = "61"
    ORIGINAL_AMOUNT_INCORRECT = "64"
    PIN_TRIES_EXCEEDED = "75"
    SIGN_IN_AGAIN = "77"
    DUPLICATE = "94"
    SYSTEM_MALFUNCTION = "96"
    TERMINAL_NOT_REGISTERED = "97"
    MAC_FAILED = "A0"

    @property
    def action(self) -> Action:
        return _ACTIONS.get(self, Action.STOP)

    @property
    def text_zh(self) -> str:
        return _TEXT[self][0]

    @property
    def text_en(self) -> str:
        return _TEXT[self][1]

    @property
    def text(self) -> str:
        """What a person sees: the code, what happened and what to do next, in 中文 and English."""
        return f"{self.value} {self.text_zh} / {self.text_en}"


_ACTIONS = {
    ResponseCode.APPROVED: Action.PRINT,
    ResponseCode.INCORRECT_PIN: Action.RETRY_PIN,
    ResponseCode.SIGN_IN_AGAIN: Action.SIGN_IN_AND_RESEND,
    ResponseCode.SYSTEM_MALFUNCTION: Action.RETRY_SAME,
    ResponseCode.MAC_FAILED: Action.SIGN_IN,
}

_TEXT: dict[ResponseCode, tuple[str, str]] = {
    ResponseCode.APPROVED: ("交易成功", "approved"),
    ResponseCode.INVALID_MERCHANT: ("无效商户，请联系收单行", "invalid merchant: call the acquirer"),
    ResponseCode.DO_NOT_HONOUR: (
        "发卡行拒绝，请持卡人联系发卡行",
        "do not honour: cardholder to call the issuer",
    ),
    ResponseCode.INVALID_TRANSACTION: ("无效交易", "invalid transaction: check the original"),
    ResponseCode.INVALID_AMOUNT: ("无效金额", "invalid amount: check the amount"),
    ResponseCode.INVALID_CARD: ("无效卡号", "invalid card number: check the card"),
    ResponseCode.ORIGINAL_NOT_FOUND: ("原交易不存在", "original transaction not found: check trace/RRN"),
    ResponseCode.FORMAT_ERROR: ("报文格式错误", "format error: call support"),
    ResponseCode.NOT_SUPPORTED: ("不支持该交易", "function not supported"),
    ResponseCode.INSUFFICIENT_FUNDS: ("余额不足", "insufficient funds: use another card"),
    ResponseCode.EXPIRED_CARD: ("卡已过期", "expired card: use another card"),
    ResponseCode.INCORRECT_PIN: ("密码错误，请重输", "incorrect PIN: enter it again"),
    ResponseCode.AMOUNT_LIMIT: ("超出金额限制", "amount limit exceeded"),
    ResponseCode.ORIGINAL_AMOUNT_INCORRECT: ("原交易金额不符", "original amount incorrect"),
    ResponseCode.PIN_TRIES_EXCEEDED: ("密码错误次数超限", "PIN tries exceeded: card locked, call the issuer"),
    ResponseCode.SIGN_IN_AGAIN: ("请重新签到", "sign in again"),
    ResponseCode.DUPLICATE: ("重复交易", "duplicate transmission: check the journal"),
    ResponseCode.SYSTEM_MALFUNCTION: ("系统故障，可重试", "system malfunction: nothing was done, retry"),
    ResponseCode.TERMINAL_NOT_REGISTERED: ("终端未登记", "terminal not registered: call the acquirer"),
    ResponseCode.MAC_FAILED: ("MAC校验错", "MAC failed: signing in again"),
}
