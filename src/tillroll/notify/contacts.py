"""A customer's contact: an e-mail address (it has an @) or a phone number (SMS).

The cashier types it (``--notify CONTACT``); :func:`parse_contact` validates it once, at the
edge, and says what is wrong, so that a bad contact never reaches the outbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tillroll.notify.outbox import RECIPIENT_MAX, Channel

# Deliberately plain: a local part without spaces or a second @, a domain with a dot.
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")  # fmt: skip
_CN_MOBILE = re.compile(r"^1[3-9]\d{9}$")  # a mainland mobile number without +86
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_PHONE_SEPARATORS = re.compile(r"[\s()-]")


class ContactError(ValueError):
    """A contact that is neither an e-mail address nor a phone number."""


@dataclass(frozen=True)
class Contact:
    channel: Channel  # EMAIL or SMS
    address: str  # an e-mail address, or a phone number in E.164 (+8613800138000)

    def masked(self) -> str:
        """What a merchant or a log may see: ``a***@example.com``, ``+86138****8000``."""
        if self.channel is Channel.EMAIL:
            local, _, domain = self.address.partition("@")
            return f"{local[:1]}***@{domain}"
        return self.address[:-8] + "****" + self.address[-4:]


def parse_email(text: str) -> Contact:
    address = text.strip()
    if len(address) > RECIPIENT_MAX or not _EMAIL.match(address):
        raise ContactError(f"{text!r} is not an e-mail address (like name@example.com)")
    return Contact(Channel.EMAIL, address)


def parse_phone(text: str) -> Contact:
    digits = _PHONE_SEPARATORS.sub("", text.strip())
    if _CN_MOBILE.match(digits):
        return Contact(Channel.SMS, "+86" + digits)
    if digits.startswith("0086"):
        digits = "+" + digits[2:]
    if _E164.match(digits):
        return Contact(Channel.SMS, digits)
    raise ContactError(
        f"{text!r} is not a phone number: give a mobile number (13800138000) or one in "
        "international form (+8613800138000)"
    )


def parse_contact(text: str) -> Contact:
    """An e-mail address if ``text`` has an @, else a phone number; ContactError otherwise."""
    if not text or not text.strip():
        raise ContactError("the contact is empty: give a phone number or an e-mail address")
    return parse_email(text) if "@" in text else parse_phone(text)
