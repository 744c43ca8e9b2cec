"""Payment codes: routing by prefix (WALLET.md §2), fresh codes, masking. Pure."""

from __future__ import annotations

import enum
import secrets


class Brand(enum.StrEnum):
    WX = "wx"  # 微信支付: 18 digits starting 10–15
    ALI = "ali"  # 支付宝: 16–24 digits starting 25–30


BRAND_NAMES = {Brand.WX: "微信支付", Brand.ALI: "支付宝"}
_WX_PREFIXES = range(10, 16)
_ALI_PREFIXES = range(25, 31)
WX_LEN = 18
ALI_LEN_MIN, ALI_LEN_MAX = 16, 24
ALI_LEN = 18  # what this provider issues (Alipay's own codes are 18 digits)


def brand_of(code: str) -> Brand | None:
    """The brand a payment code routes to, or None when it is no payment code at all."""
    if not code.isascii() or not code.isdigit() or len(code) < 2:
        return None
    prefix = int(code[:2])
    if len(code) == WX_LEN and prefix in _WX_PREFIXES:
        return Brand.WX
    if ALI_LEN_MIN <= len(code) <= ALI_LEN_MAX and prefix in _ALI_PREFIXES:
        return Brand.ALI
    return None


def new_code(brand: Brand) -> str:
    """A random, well-formed payment code of ``brand`` (uniqueness is the database's job)."""
    if brand is Brand.WX:
        prefix, length = 10 + secrets.randbelow(6), WX_LEN
    else:
        prefix, length = 25 + secrets.randbelow(6), ALI_LEN
    rest = "".join(str(secrets.randbelow(10)) for _ in range(length - 2))
    return f"{prefix}{rest}"


def mask_code(code: str) -> str:
    """A payment code as logs and messages show it: first 6, last 4 (like a card number)."""
    if len(code) <= 10:
        return "*" * len(code)
    return code[:6] + "*" * (len(code) - 10) + code[-4:]


def mask_user(name: str) -> str:
    """The user as a merchant sees it (``openid``): first and last character."""
    if len(name) <= 2:
        return "*" * len(name)
    return f"{name[0]}***{name[-1]}"
