"""Codec errors carry where the bytes went wrong."""

from __future__ import annotations


class CodecError(ValueError):
    def __init__(self, reason: str, *, field: str | None = None, offset: int | None = None) -> None:
        self.reason = reason
        self.field = field
        self.offset = offset
        where = []
        if field is not None:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)


class FramingError(CodecError):
    """The frame itself is unusable: the connection must be closed."""


class DecodeError(CodecError):
    """The frame is a frame, but its ISO 8583 message does not parse."""


class EncodeError(CodecError):
    pass
