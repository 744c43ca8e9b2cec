"""The card wire profile: spec as data, framing, typed messages, response codes. Pure."""

from tillroll.iso8583.codes import Action, ResponseCode
from tillroll.iso8583.errors import CodecError, DecodeError, EncodeError, FramingError
from tillroll.iso8583.framing import Frame, parse_payload
from tillroll.iso8583.messages import (
    Field60,
    Field61,
    Kind,
    Message,
    Mti,
    mac_matches,
    pack,
    sign,
    unpack,
    unpack_request,
)
from tillroll.iso8583.strict import REQUEST_MTIS

__all__ = [
    "REQUEST_MTIS",
    "Action",
    "CodecError",
    "DecodeError",
    "EncodeError",
    "Field60",
    "Field61",
    "Frame",
    "FramingError",
    "Kind",
    "Message",
    "Mti",
    "ResponseCode",
    "mac_matches",
    "pack",
    "parse_payload",
    "sign",
    "unpack",
    "unpack_request",
]
