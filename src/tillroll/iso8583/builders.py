"""Typed builders for every request of PROFILE §3. Pure: values in, a `Message` out.

The terminal sends what these build; the host reads the same fields (`Message`, `Field60`,
`Field61`, `field48`). MAC (field 64) is added by `messages.sign` when the message is packed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tillroll.iso8583.field48 import SettlementTotals, UploadItem, upload_end_field48, upload_items_field48
from tillroll.iso8583.messages import (
    CONDITION_NORMAL,
    CURRENCY_CNY,
    MAX_PIN_LEN,
    SECURITY_CONTROL,
    Field60,
    Field61,
    Message,
    Mti,
)

# Field 22: keyed-in cards (entry mode 01), third digit 1 = PIN entered, 2 = no PIN.
ENTRY_MODE_MANUAL_PIN = "011"
ENTRY_MODE_MANUAL_NO_PIN = "012"
# 60.3 network management codes.
NM_NONE = "000"
NM_SIGN_OUT = "002"
NM_SIGN_IN = "003"
NM_SIGN_IN_WITH_TDK = "004"
NM_SETTLE = "201"
NM_UPLOAD_END_NOT_BALANCED = "202"
NM_UPLOAD_END_BALANCED = "207"
NM_ECHO = "301"
# Fields a reversal does not repeat from its original (PROFILE §3).
REVERSAL_DROPPED_FIELDS = ("26", "35", "36", "52", "53", "64")


@dataclass(frozen=True)
class Station:
    """Who is sending: terminal id (41) and merchant id (42)."""

    tid: str
    mid: str

    def fields(self, stan: str) -> dict[str, str]:
        return {"11": stan, "41": self.tid, "42": self.mid}


def sign_in(at: Station, stan: str, batch: str, operator: str, *, mode: str = NM_SIGN_IN) -> Message:
    return Message(
        Mti.SIGN_IN.value, {**at.fields(stan), "60": Field60("00", batch, mode).encode(), "63": operator}
    )


def sign_out(at: Station, stan: str, batch: str) -> Message:
    return Message(Mti.NETWORK.value, {**at.fields(stan), "60": Field60("00", batch, NM_SIGN_OUT).encode()})


def echo(at: Station, stan: str, batch: str) -> Message:
    return Message(Mti.NETWORK.value, {**at.fields(stan), "60": Field60("00", batch, NM_ECHO).encode()})


def balance_inquiry(
    at: Station, stan: str, batch: str, *, pan: str, expiry: str, pin_block: bytes
) -> Message:
    return Message(
        Mti.FINANCIAL.value,
        {
            **at.fields(stan),
            "2": pan,
            "3": "310000",
            "14": expiry,
            "22": ENTRY_MODE_MANUAL_PIN,
            "25": CONDITION_NORMAL,
            "26": MAX_PIN_LEN,
            "49": CURRENCY_CNY,
            "52": pin_block.hex().upper(),
            "53": SECURITY_CONTROL,
            "60": Field60("01", batch, NM_NONE).encode(),
        },
    )


def sale(
    at: Station, stan: str, batch: str, *, amount_minor: int, pan: str, expiry: str, pin_block: bytes | None
) -> Message:
    fields = {
        **at.fields(stan),
        "2": pan,
        "3": "000000",
        "4": f"{amount_minor:012d}",
        "14": expiry,
        "22": ENTRY_MODE_MANUAL_PIN if pin_block else ENTRY_MODE_MANUAL_NO_PIN,
        "25": CONDITION_NORMAL,
        "49": CURRENCY_CNY,
        "53": SECURITY_CONTROL,
        "60": Field60("22", batch, NM_NONE).encode(),
    }
    if pin_block:
        fields["26"] = MAX_PIN_LEN
        fields["52"] = pin_block.hex().upper()
    return Message(Mti.FINANCIAL.value, fields)


def void(
    at: Station,
    stan: str,
    batch: str,
    *,
    pan: str,
    amount_minor: int,
    rrn: str,
    auth_code: str,
    original: Field61,
) -> Message:
    """Void of a sale of the current batch: the original's amount, RRN, authorization code and
    field 61 (its batch, STAN and the date the host gave in field 13)."""
    return Message(
        Mti.FINANCIAL.value,
        {
            **at.fields(stan),
            "2": pan,
            "3": "200000",
            "4": f"{amount_minor:012d}",
            "25": CONDITION_NORMAL,
            "37": rrn,
            "38": auth_code,
            "49": CURRENCY_CNY,
            "60": Field60("23", batch, NM_NONE).encode(),
            "61": original.encode(),
        },
    )


def refund(
    at: Station,
    stan: str,
    batch: str,
    *,
    amount_minor: int,
    rrn: str,
    original: Field61,
    pan: str | None,
) -> Message:
    fields = {
        **at.fields(stan),
        "3": "200000",
        "4": f"{amount_minor:012d}",
        "25": CONDITION_NORMAL,
        "37": rrn,
        "49": CURRENCY_CNY,
        "60": Field60("25", batch, NM_NONE).encode(),
        "61": original.encode(),
        "63": "000",
    }
    if pan:
        fields["2"] = pan
    return Message(Mti.ADVICE.value, fields)


def reversal(original: Message, reason: str, auth_code: str | None = None) -> Message:
    """The original with MTI 0400, fields 26/35/36/52/53 removed, 39 = the reason, 38 when
    known; the original's STAN (11) and field 60 (its batch) stay."""
    fields = {k: v for k, v in original.fields.items() if k not in REVERSAL_DROPPED_FIELDS}
    fields["39"] = reason
    if auth_code:
        fields["38"] = auth_code
    return Message(Mti.REVERSAL.value, fields)


def settlement(at: Station, stan: str, batch: str, totals: SettlementTotals, operator: str) -> Message:
    return Message(
        Mti.SETTLEMENT.value,
        {
            **at.fields(stan),
            "48": totals.field48(),
            "49": CURRENCY_CNY,
            "60": Field60("00", batch, NM_SETTLE).encode(),
            "63": operator,
        },
    )


def batch_upload(at: Station, stan: str, batch: str, items: Sequence[UploadItem]) -> Message:
    return Message(
        Mti.BATCH_UPLOAD.value,
        {
            **at.fields(stan),
            "48": upload_items_field48(items),
            "60": Field60("00", batch, NM_SETTLE).encode(),
        },
    )


def batch_upload_end(at: Station, stan: str, batch: str, total_items: int, *, balanced: bool) -> Message:
    code = NM_UPLOAD_END_BALANCED if balanced else NM_UPLOAD_END_NOT_BALANCED
    return Message(
        Mti.BATCH_UPLOAD.value,
        {**at.fields(stan), "48": upload_end_field48(total_items), "60": Field60("00", batch, code).encode()},
    )
