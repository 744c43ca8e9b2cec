"""What every request step needs: the open transaction, the request and the clock's now."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, tzinfo

from sqlalchemy import Connection

from tillroll.clock import merchant_local_text
from tillroll.crypto.keystore import KeyStore
from tillroll.host.config import HostConfig
from tillroll.iso8583.codes import ResponseCode
from tillroll.iso8583.messages import Field60, Message, Mti
from tillroll.pan import mask_pan

_ECHOED = ("2", "3", "4", "11", "25", "41", "42", "49", "60")
_RESPONSE_MTI = {mti.value: mti.response.value for mti in Mti if int(mti.value[2]) % 2 == 0}


def response_for(
    req: Message,
    code: ResponseCode,
    now: datetime,
    tz: tzinfo,
    **extra: str,
) -> Message:
    """A response echoing the request's identifying fields (PROFILE §3); fields 12/13 are the
    UTC instant `now` in the merchant's zone `tz` (PROFILE §7), whatever the process's TZ."""
    fields = {k: req.fields[k] for k in _ECHOED if k in req.fields}
    fields["12"] = merchant_local_text(now, tz, "%H%M%S")
    fields["13"] = merchant_local_text(now, tz, "%m%d")
    fields["39"] = code.value
    fields.update({k.lstrip("f"): v for k, v in extra.items()})
    return Message(_RESPONSE_MTI.get(req.mti, req.mti), fields)


@dataclass(frozen=True)
class RequestContext:
    conn: Connection
    msg: Message
    f60: Field60
    rrn: str
    pik: bytes
    mid: str
    merchant_name: str
    fee_rate_ppm: int
    now: datetime  # the request's instant, naive UTC (what is stored)
    config: HostConfig
    keystore: KeyStore  # the issuer's PIN verification key is sealed under it

    @property
    def local_date(self) -> str:
        """The merchant's calendar date of the request, MMDD: field 15, the stored local date."""
        return merchant_local_text(self.now, self.config.zone, "%m%d")

    @property
    def tid(self) -> str:
        return self.msg["41"]

    @property
    def stan(self) -> str:
        return self.msg["11"]

    def respond(self, code: ResponseCode, auth_code: str | None = None, **extra: str) -> Message:
        fields = {
            "15": self.local_date,
            "37": self.rrn,
            "44": f"{'03080000':<11}{self.config.acquirer_id:<11}",
            "63": f"CUP{self.config.issuer_name}",
        }
        if auth_code:
            fields["38"] = auth_code
        fields.update({k.lstrip("f"): v for k, v in extra.items()})
        return response_for(self.msg, code, self.now, self.config.zone, **fields)


def stored_response(msg: Message) -> str:
    """The stored response, with the card number masked (PROFILE §7)."""
    fields = dict(msg.fields)
    if "2" in fields:
        fields["2"] = mask_pan(fields["2"])
    return json.dumps({"mti": msg.mti, "fields": fields})


def replayed_response(text: str, req: Message) -> Message:
    """A stored response for a replay: field 2 is echoed again from the retried request, which
    carries the full card number (when it is the masked one stored)."""
    data = json.loads(text)
    fields = data["fields"]
    if "2" in fields:
        pan = req.get("2")
        if pan is not None and mask_pan(pan) == fields["2"]:
            fields["2"] = pan
        else:
            del fields["2"]
    return Message(data["mti"], fields)
