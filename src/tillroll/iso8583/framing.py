"""TCP framing: 2-byte length, TPDU (5), header (6), then the ISO 8583 message (PROFILE §1)."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

from tillroll.iso8583.errors import FramingError

TPDU_LEN = 5
HEADER_LEN = 6
FRAME_MIN_LEN = 13  # TPDU + header + MTI
FRAME_MAX_LEN = 2048
TERMINAL_TPDU = bytes.fromhex("6000030000")
TERMINAL_HEADER = bytes.fromhex("603100310000")
PROCESSING_SIGN_IN = 3


@dataclass(frozen=True)
class Frame:
    tpdu: bytes
    header: bytes
    message: bytes

    @property
    def must_sign_in(self) -> bool:
        """The host set processing requirement 3 in the header."""
        return (self.header[2] & 0x0F) == PROCESSING_SIGN_IN

    def encode(self) -> bytes:
        payload = self.tpdu + self.header + self.message
        if len(payload) > FRAME_MAX_LEN:
            raise FramingError(f"frame of {len(payload)} bytes is above {FRAME_MAX_LEN}")
        return struct.pack(">H", len(payload)) + payload


def check_length(length: int, max_len: int = FRAME_MAX_LEN) -> None:
    if length == 0 or length < FRAME_MIN_LEN or length > max_len:
        raise FramingError(f"frame length {length} outside {FRAME_MIN_LEN}..{max_len}", offset=0)


def parse_payload(payload: bytes) -> Frame:
    """Split the bytes after the length prefix."""
    check_length(len(payload), max(len(payload), FRAME_MAX_LEN))
    if payload[0] != 0x60:
        raise FramingError(f"TPDU id 0x{payload[0]:02X} is not 0x60", offset=2)
    return Frame(
        tpdu=payload[:TPDU_LEN],
        header=payload[TPDU_LEN : TPDU_LEN + HEADER_LEN],
        message=payload[TPDU_LEN + HEADER_LEN :],
    )


def reply_tpdu(tpdu: bytes) -> bytes:
    """The host answers with destination and source addresses swapped."""
    return tpdu[:1] + tpdu[3:5] + tpdu[1:3]


def reply_header(header: bytes, *, must_sign_in: bool) -> bytes:
    b3 = (header[2] & 0xF0) | (PROCESSING_SIGN_IN if must_sign_in else 0)
    return header[:2] + bytes([b3]) + header[3:]


async def read_payload(reader: asyncio.StreamReader, max_len: int = FRAME_MAX_LEN) -> bytes:
    """Read one frame's payload; IncompleteReadError at EOF, FramingError on a bad length."""
    (length,) = struct.unpack(">H", await reader.readexactly(2))
    check_length(length, max_len)
    return await reader.readexactly(length)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_payload(sock: socket.socket, max_len: int = FRAME_MAX_LEN) -> bytes:
    """Blocking read of one frame's payload (the socket's own timeout bounds it)."""
    (length,) = struct.unpack(">H", recv_exactly(sock, 2))
    check_length(length, max_len)
    return recv_exactly(sock, length)
