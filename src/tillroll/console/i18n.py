"""中文 / English: the console's catalogue and the language switch.

The language is a cookie (`tr_lang`, zh or en; 中文 by default); a link in every page's header
switches it. Pages look texts up by key with ``t(key)`` in templates (``tr(lang, key)`` in code);
a key missing from the catalogue shows as itself, so a forgotten text is visible, not blank.
Other console modules add their own texts with :func:`add` at import.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request

LANG_COOKIE = "tr_lang"
LANGS = ("zh", "en")
DEFAULT_LANG = "zh"

CATALOGUE: dict[str, tuple[str, str]] = {}


def add(texts: Mapping[str, tuple[str, str]]) -> None:
    """Register (zh, en) texts; a key registered twice must say the same thing."""
    for key, pair in texts.items():
        if key in CATALOGUE and CATALOGUE[key] != pair:
            raise ValueError(f"catalogue key {key!r} registered twice with different texts")
        CATALOGUE[key] = pair


def lang_of(request: Request) -> str:
    value = request.cookies.get(LANG_COOKIE, DEFAULT_LANG)
    return value if value in LANGS else DEFAULT_LANG


def tr(lang: str, key: str, **values: object) -> str:
    pair = CATALOGUE.get(key)
    text = key if pair is None else pair[0 if lang == "zh" else 1]
    return text.format(**values) if values else text


add(
    {
        "app.name": ("tillroll 商户后台", "tillroll console"),
        "lang.switch": ("English", "中文"),
        "nav.today": ("今日", "Today"),
        "nav.payments": ("交易查询", "Payments"),
        "nav.terminals": ("终端", "Terminals"),
        "nav.settlements": ("结算", "Settlements"),
        "nav.notifications": ("通知", "Notifications"),
        "nav.analytics": ("分析", "Analytics"),
        "nav.logout": ("退出", "Log out"),
        "login.title": ("登录", "Log in"),
        "login.username": ("用户名", "User name"),
        "login.password": ("密码", "Password"),
        "login.submit": ("登录", "Log in"),
        "login.wrong": ("用户名或密码不正确。", "The user name or password is not right."),
        "login.left": (
            "再失败 {left} 次，账户将被锁定 {minutes} 分钟。",
            "{left} more failed attempts lock the account for {minutes} minutes.",
        ),
        "login.locked": (
            "账户已锁定：连续 {failures} 次登录失败。请在 {minutes} 分钟后（{until} UTC 以后）再试，"
            "或请商户管理员协助。",
            "This account is locked after {failures} failed log-ins in a row. Try again after "
            "{minutes} minutes (after {until} UTC), or ask your merchant admin.",
        ),
        "login.inactive": (
            "该账户已停用，请联系商户管理员。",
            "This account is switched off; ask your merchant admin.",
        ),
        "login.expired": ("会话已结束，请重新登录。", "Your session ended; please log in again."),
        "problem.forbidden": ("无权访问", "Not allowed"),
        "problem.forbidden.text": (
            "您的角色不能查看或执行此操作。如需权限，请联系商户管理员。",
            "Your role cannot see or do this. Ask your merchant admin if you need it.",
        ),
        "problem.csrf": ("请求已失效", "Request not accepted"),
        "problem.csrf.text": (
            "此表单已过期或并非来自本页面。请返回、刷新页面后重试。",
            "This form has expired or did not come from this page. Go back, reload the page and try again.",
        ),
        "problem.not_found": ("未找到", "Not found"),
        "problem.not_found.text": (
            "没有这项记录，或它不属于您的商户。",
            "There is no such record, or it does not belong to your merchant.",
        ),
        "problem.bad_input": ("输入有误", "Input not valid"),
        "problem.bad_input.text": ("请检查输入后重试。", "Check what you entered and try again."),
        "common.back": ("返回", "Back"),
        "common.none": ("无", "none"),
        "common.search": ("查询", "Search"),
        "common.all": ("全部", "all"),
        "attn.never_reported": ("从未上报", "never reported"),
        "attn.not_signed_in": ("未签到", "not signed in"),
        "attn.pending_reversals": ("有待冲正", "reversals pending"),
        "attn.printer": ("打印机异常", "printer not ok"),
        "attn.silent": ("长时间无消息", "not heard from"),
        "attn.signin_failures": ("签到失败", "sign-in failures"),
        "rail.card": ("银行卡", "card"),
        "rail.wallet": ("扫码", "wallet"),
    }
)
