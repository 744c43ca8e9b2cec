"""The back-office key of a terminal, the signature of its fact deliveries, and e-receipt tokens. Pure.

Both ends derive one key from the terminal's TMK, which both already hold (the terminal sealed
under its device key, the host's store sealed under the master key), so no new secret has to be
distributed::

    backoffice_key = HMAC-SHA256(TMK, "tillroll back office v1")          (32 bytes)

It signs three things, each with its own prefix so a signature of one is never valid as the other:

- a delivery of a fact to ``POST /api/v1/terminals/{tid}/facts``:
  ``HMAC-SHA256(key, "tillroll-fact-v1\\n" + tid + "\\n" + body)``, hex, sent as
  ``X-Tillroll-Signature: v1=<64 hex>``. No timestamp: every delivery is idempotent by its
  message id, so a replayed request changes nothing.
- a journal upload to ``POST /api/v1/terminals/{tid}/journal``: the same, with the prefix
  ``"tillroll-journal-v1\n"`` (its own, so a signed fact is never a valid upload, nor the reverse);
  a replay changes nothing (an entry is kept only when newer than the stored one).
- an e-receipt token (the ``/r/<token>`` link, printed as a QR code before the back office has
  seen the receipt): ``<payload>.<mac>``, both base64url without padding, where ``payload`` is
  ``tid|reference|issued_day`` (``issued_day``: days since 1970-01-01 of the approval, UTC) and
  ``mac`` the first 12 bytes of ``HMAC-SHA256(key, "tillroll-receipt-v1\\n" + payload)``. The same
  approval always gives the same token, so a reprint carries the same link. It expires
  ``ttl_days`` after ``issued_day`` (the back office's setting).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, datetime

KEY_INFO = b"tillroll back office v1"
FACT_PREFIX = b"tillroll-fact-v1\n"
JOURNAL_PREFIX = b"tillroll-journal-v1\n"  # a journal upload (docs/web.md): never valid as a fact
TOKEN_PREFIX = b"tillroll-receipt-v1\n"
SIGNATURE_HEADER = "X-Tillroll-Signature"
SIGNATURE_SCHEME = "v1="
TOKEN_MAC_BYTES = 12  # 96 bits: forging one needs ~2^96 tries against a server that answers each
TOKEN_MAX_LEN = 160
EPOCH = date(1970, 1, 1)

TID_RE = re.compile(r"^[0-9A-Za-z]{8}$")
# batch.trace on the card rail (000001.000123), the order number on the wallet rail, with a suffix
REFERENCE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def backoffice_key(tmk: bytes) -> bytes:
    """The terminal's back-office key, derived from its TMK (see the module docstring)."""
    if len(tmk) not in (16, 24):
        raise ValueError("a TMK is 16 or 24 bytes")
    return hmac.new(tmk, KEY_INFO, hashlib.sha256).digest()


def sign_fact(key: bytes, tid: str, body: bytes, *, prefix: bytes = FACT_PREFIX) -> str:
    """The header value ``v1=<hex>`` for one delivery of ``body`` by terminal ``tid``
    (``prefix``: :data:`FACT_PREFIX`, or :data:`JOURNAL_PREFIX` for a journal upload)."""
    mac = hmac.new(key, prefix + tid.encode("ascii") + b"\n" + body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + mac


def fact_signature_ok(
    key: bytes, tid: str, body: bytes, header: str | None, *, prefix: bytes = FACT_PREFIX
) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time comparison)."""
    if header is None or len(header) > 100:
        return False
    expected = sign_fact(key, tid, body, prefix=prefix).encode()
    return hmac.compare_digest(header.strip().encode("ascii", "replace"), expected)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def day_number(instant: datetime) -> int:
    """Days since 1970-01-01 of a UTC instant (naive UTC, as the journal keeps it)."""
    return (instant.date() - EPOCH).days


@dataclass(frozen=True)
class TokenClaims:
    tid: str
    reference: str
    issued_day: int


class TokenError(enum.Enum):
    """Why a token is refused (the page says which, in Chinese and English)."""

    MALFORMED = "malformed"  # not a token at all, or not ours
    BAD_SIGNATURE = "bad_signature"  # tampered, or for another terminal's key
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # issued in the future: a forged or mis-set clock


def make_token(key: bytes, tid: str, reference: str, issued_day: int) -> str:
    if not TID_RE.match(tid) or not REFERENCE_RE.match(reference) or not 0 <= issued_day < 10**6:
        raise ValueError(f"cannot make a receipt token for tid {tid!r}, reference {reference!r}")
    payload = f"{tid}|{reference}|{issued_day}".encode("ascii")
    mac = hmac.new(key, TOKEN_PREFIX + payload, hashlib.sha256).digest()[:TOKEN_MAC_BYTES]
    return f"{_b64(payload)}.{_b64(mac)}"


def read_token(token: str) -> TokenClaims | None:
    """The claims of a well-formed token, *not yet verified* (the key is looked up by ``tid``)."""
    if not 0 < len(token) <= TOKEN_MAX_LEN or token.count(".") != 1:
        return None
    payload_b64, mac_b64 = token.split(".")
    try:
        payload = _unb64(payload_b64).decode("ascii")
        mac = _unb64(mac_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    parts = payload.split("|")
    if len(mac) != TOKEN_MAC_BYTES or len(parts) != 3:
        return None
    tid, reference, day = parts
    if not TID_RE.match(tid) or not REFERENCE_RE.match(reference) or not re.fullmatch(r"[0-9]{1,6}", day):
        return None
    return TokenClaims(tid, reference, int(day))


def verify_token(key: bytes, token: str, *, today_day: int, ttl_days: int) -> TokenClaims | TokenError:
    """The claims of a token signed with ``key`` and still valid on ``today_day``, or why not."""
    claims = read_token(token)
    if claims is None:
        return TokenError.MALFORMED
    expected = make_token(key, claims.tid, claims.reference, claims.issued_day)
    if not hmac.compare_digest(expected.encode(), token.encode()):
        return TokenError.BAD_SIGNATURE
    if claims.issued_day > today_day + 1:  # a day of slack for a terminal clock ahead of ours
        return TokenError.NOT_YET_VALID
    if today_day > claims.issued_day + ttl_days:
        return TokenError.EXPIRED
    return claims
