"""The wallet profile's signature (WALLET.md §1, WeChat Pay v2 "HMAC-SHA256"): pure functions.

Every top-level field except ``sign`` whose value is not empty (``""`` or None) is sorted by name
(byte order) and joined as ``name=value`` with ``&``; ``&key=<merchant key>`` is appended, and the
HMAC-SHA256 of that string under the merchant's key, in uppercase hex, is the signature. Shared by
the provider (``tillroll wallet serve``) and the terminal's client: it is part of the wire profile.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Mapping

NONCE_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")
_NONCE_ALPHABET = string.ascii_letters + string.digits
NONCE_LEN = 32


class SignatureInputError(ValueError):
    """A field value the profile does not allow (only strings and integers are)."""


def _value_text(name: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        kind = type(value).__name__
        raise SignatureInputError(f"field {name!r}: value must be a string or an integer, not {kind}")
    return str(value)


def signing_string(fields: Mapping[str, object], key: str) -> str:
    """The string that is signed (without the HMAC): useful in docs and when debugging."""
    parts = []
    for name in sorted(fields, key=lambda n: n.encode("utf-8")):
        if name == "sign":
            continue
        text = _value_text(name, fields[name])
        if text is not None:
            parts.append(f"{name}={text}")
    parts.append(f"key={key}")
    return "&".join(parts)


def sign(fields: Mapping[str, object], key: str) -> str:
    """The uppercase-hex HMAC-SHA256 signature of ``fields`` under the merchant's ``key``."""
    data = signing_string(fields, key).encode("utf-8")
    return hmac.new(key.encode("utf-8"), data, hashlib.sha256).hexdigest().upper()


def verify(fields: Mapping[str, object], key: str) -> bool:
    """True when ``fields["sign"]`` is the signature of the other fields; compared in constant time."""
    given = fields.get("sign")
    if not isinstance(given, str):
        return False
    try:
        expected = sign(fields, key)
    except SignatureInputError:
        return False
    return hmac.compare_digest(given.encode("ascii", "replace"), expected.encode("ascii"))


def signed(fields: Mapping[str, object], key: str) -> dict[str, object]:
    """``fields`` with its ``sign`` added."""
    out = {k: v for k, v in fields.items() if k != "sign"}
    out["sign"] = sign(out, key)
    return out


def new_nonce() -> str:
    """A fresh ``nonce_str`` (32 characters of ``[A-Za-z0-9]``)."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(NONCE_LEN))
