"""Typed ISO 8583 messages of the profile: pack/unpack, MAC, and builders for PROFILE §3.

A `Message` is an MTI plus field values as strings: numeric fields are digit strings, text
fields plain strings, binary fields (52, 55, 62) uppercase hex, tracks use '='.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import iso8583

from tillroll.crypto.mac import mac_ecb, mac_equal
from tillroll.iso8583 import strict
from tillroll.iso8583.errors import DecodeError, EncodeError
from tillroll.iso8583.spec import SPEC, SUPPORTED_FIELDS, TRACK_FIELDS

MAC_FIELD = "64"
MAC_LEN = 8
CURRENCY_CNY = "156"
MAX_PIN_LEN = "12"
SECURITY_CONTROL = "2600000000000000"  # PIN with PAN, double-length keys, no track encryption
CONDITION_NORMAL = "00"
ACQUIRER_ID = "00010000"


class Mti(enum.StrEnum):
    SIGN_IN = "0800"
    SIGN_IN_RESPONSE = "0810"
    NETWORK = "0820"  # sign-out and echo
    NETWORK_RESPONSE = "0830"
    FINANCIAL = "0200"
    FINANCIAL_RESPONSE = "0210"
    ADVICE = "0220"  # refund
    ADVICE_RESPONSE = "0230"
    REVERSAL = "0400"
    REVERSAL_RESPONSE = "0410"
    SETTLEMENT = "0500"
    SETTLEMENT_RESPONSE = "0510"
    BATCH_UPLOAD = "0320"
    BATCH_UPLOAD_RESPONSE = "0330"

    @property
    def response(self) -> Mti:
        return Mti(self.value[:2] + str(int(self.value[2]) + 1) + self.value[3])


class Kind(enum.StrEnum):
    """What a request is, read from MTI, field 3 and 60.1/60.3 (PROFILE §3)."""

    SIGN_IN = "sign_in"
    SIGN_OUT = "sign_out"
    ECHO = "echo"
    BALANCE = "balance"
    SALE = "sale"
    VOID = "void"
    REFUND = "refund"
    REVERSAL = "reversal"
    SETTLEMENT = "settlement"
    BATCH_UPLOAD = "batch_upload"
    BATCH_UPLOAD_END = "batch_upload_end"
    UNKNOWN = "unknown"


PROCESSING_CODE = {Kind.SALE: "000000", Kind.BALANCE: "310000", Kind.VOID: "200000", Kind.REFUND: "200000"}
TYPE_CODE = {Kind.SALE: "22", Kind.VOID: "23", Kind.REFUND: "25", Kind.BALANCE: "01"}
# Requests whose outcome, if unknown, must be reversed.
NEEDS_REVERSAL = frozenset({Kind.SALE, Kind.VOID})


@dataclass(frozen=True)
class Field60:
    type_code: str  # 60.1 n2
    batch: str  # 60.2 n6
    network_code: str = "000"  # 60.3 n3

    def encode(self) -> str:
        return f"{self.type_code}{self.batch}{self.network_code}"

    @classmethod
    def parse(cls, value: str) -> Field60:
        if len(value) < 8 or not value.isdigit():
            raise DecodeError(f"field 60 {value!r} is not 60.1 n2 + 60.2 n6 [+ 60.3 n3]", field="60")
        return cls(value[:2], value[2:8], value[8:11] or "000")


@dataclass(frozen=True)
class Field61:
    batch: str
    stan: str
    date_mmdd: str

    def encode(self) -> str:
        return f"{self.batch}{self.stan}{self.date_mmdd}"

    @classmethod
    def parse(cls, value: str) -> Field61:
        if len(value) < 16 or not value.isdigit():
            raise DecodeError(f"field 61 {value!r} is not batch n6 + STAN n6 + date n4", field="61")
        return cls(value[:6], value[6:12], value[12:16])


@dataclass(frozen=True)
class Message:
    mti: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.fields.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    def with_fields(self, **changes: str | None) -> Message:
        """Copy with fields set (`f39="00"`) or removed (`f52=None`)."""
        new = dict(self.fields)
        for k, v in changes.items():
            num = k.lstrip("f")
            if v is None:
                new.pop(num, None)
            else:
                new[num] = v
        return Message(self.mti, new)

    def without(self, *keys: str) -> Message:
        return replace(self, fields={k: v for k, v in self.fields.items() if k not in keys})

    @property
    def field60(self) -> Field60:
        return Field60.parse(self.fields.get("60", ""))

    @property
    def kind(self) -> Kind:
        return classify(self)

    @property
    def response_code(self) -> str | None:
        return self.fields.get("39")

    def content_key(self) -> tuple[tuple[str, str], ...]:
        """Every field but 64: what "same content" means for a retried request."""
        return tuple(sorted((k, v) for k, v in self.fields.items() if k != MAC_FIELD))


def classify(msg: Message) -> Kind:
    f60 = msg.fields.get("60", "")
    nmc = f60[8:11]
    mti = msg.mti
    if mti in ("0800", "0810"):
        return Kind.SIGN_IN
    if mti in ("0820", "0830"):
        return {"002": Kind.SIGN_OUT, "301": Kind.ECHO}.get(nmc, Kind.UNKNOWN)
    if mti in ("0200", "0210"):
        pc = msg.fields.get("3", "")
        return {"000000": Kind.SALE, "310000": Kind.BALANCE, "200000": Kind.VOID}.get(pc, Kind.UNKNOWN)
    if mti in ("0220", "0230"):
        return Kind.REFUND
    if mti in ("0400", "0410"):
        return Kind.REVERSAL
    if mti in ("0500", "0510"):
        return Kind.SETTLEMENT
    if mti in ("0320", "0330"):
        return Kind.BATCH_UPLOAD if nmc == "201" else Kind.BATCH_UPLOAD_END
    return Kind.UNKNOWN


# Per BCD field, the characters its wire value may hold (`strict.value_ok`, looked up once).
_WIRE_CHARS: dict[str, frozenset[str]] = {
    key: strict.TRACK_NIBBLES if key in TRACK_FIELDS else strict.DIGITS for key in strict.BCD_FIELDS
}
_MAC_PLACEHOLDER = "0" * MAC_LEN
_TRACK_KEYS = tuple(sorted(TRACK_FIELDS))


def _to_wire(msg: Message) -> dict[str, Any]:
    doc: dict[str, Any] = {"t": msg.mti}
    for key, value in msg.fields.items():
        if key not in SUPPORTED_FIELDS:
            raise EncodeError("field not in the profile", field=key)
        allowed = _WIRE_CHARS.get(key)
        if allowed is not None:  # strict.value_ok, inlined
            if key in TRACK_FIELDS:
                value = value.replace("=", "D")
            if not allowed.issuperset(value):
                raise EncodeError("numeric field holds more than digits", field=key)
        doc[key] = value
    return doc


def _encode(doc: dict[str, Any]) -> bytearray:
    try:
        raw, _ = iso8583.encode(doc, SPEC)
    except iso8583.EncodeError as exc:
        raise EncodeError(exc.msg, field=exc.field) from None
    return raw


def pack(msg: Message) -> bytes:
    return bytes(_encode(_to_wire(msg)))


def unpack(raw: bytes, *, mtis: frozenset[str] = strict.PROFILE_MTIS) -> Message:
    """Decode strictly (PROFILE §2, §7): an MTI among `mtis`, only the profile's fields, BCD
    fields of digits (tracks: digits and D). Anything else is a `DecodeError` with field and
    offset; no other exception leaves this function for any input bytes."""
    strict.check_mti(raw, mtis)
    strict.check_bitmap_fields(raw)
    try:
        # bytes as they are (pyiso8583 then slices without copying); anything else as before
        doc, encoded = iso8583.decode(raw if type(raw) is bytes else bytearray(raw), SPEC)
    except iso8583.DecodeError as exc:
        raise DecodeError(exc.msg, field=exc.field, offset=exc.pos) from None
    strict.check_nibbles(encoded)
    mti = doc.pop("t")
    doc.pop("p", None)
    doc.pop("h", None)
    for key in _TRACK_KEYS:
        if key in doc:
            doc[key] = doc[key].replace("D", "=")
    return Message(mti=mti, fields=doc)


def unpack_request(raw: bytes) -> Message:
    """`unpack` for the host: only request MTIs (a response MTI sent as a request is an error)."""
    return unpack(raw, mtis=strict.REQUEST_MTIS)


def sign(msg: Message, mak: bytes) -> bytes:
    """Pack with field 64 = UnionPay MAC over MTI..field 63 (bit 64 set)."""
    doc = _to_wire(msg)  # a field 64 of `msg` is not checked (any text), and replaced here
    doc[MAC_FIELD] = _MAC_PLACEHOLDER
    raw = _encode(doc)  # field 64 is the last field, 8 bytes
    raw[-MAC_LEN:] = mac_ecb(mak, raw[:-MAC_LEN])
    return bytes(raw)


def has_mac(raw: bytes) -> bool:
    return len(raw) >= 10 and bool(raw[9] & 0x01)


def mac_matches(raw: bytes, mak: bytes) -> bool:
    """True when the packed message carries field 64 and it verifies under the MAK."""
    return has_mac(raw) and mac_equal(mac_ecb(mak, raw[:-MAC_LEN]), raw[-MAC_LEN:])


def read_mti_and_tid(raw: bytes) -> tuple[str | None, str | None]:
    """Best effort for a message that does not parse: enough to answer 30 (PROFILE §1, §7).

    The MTI must be four decimal digits; the TID is read when every field before 41 is one the
    profile defines (their lengths are then known), whatever follows it: the bitmap is cut
    after bit 41 and a secondary bitmap skipped, and pyiso8583 decodes up to there.
    """
    if len(raw) < strict.BODY_OFFSET:
        return None, None
    mti = raw[: strict.MTI_LEN].hex()
    if not mti.isdigit():
        return None, None
    bits = strict.bitmap_bits(raw[strict.MTI_LEN : strict.BODY_OFFSET])
    body_at = strict.BODY_OFFSET + (strict.BITMAP_LEN if strict.SECONDARY_BITMAP_BIT in bits else 0)
    wanted = [b for b in bits if 1 < b <= TID_BIT]
    if TID_BIT not in wanted or any(str(b) not in SUPPORTED_FIELDS for b in wanted):
        return mti, None
    bitmap = sum(1 << (64 - b) for b in wanted).to_bytes(strict.BITMAP_LEN, "big")
    head = raw[: strict.MTI_LEN] + bitmap + raw[body_at:]
    try:
        doc, _ = iso8583.decode(bytearray(head), SPEC)
    except iso8583.DecodeError as exc:
        doc = exc.doc_dec
    tid = doc.get(str(TID_BIT))
    return mti, tid if tid and len(tid) == 8 else None


TID_BIT = 41
