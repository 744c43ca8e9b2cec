"""Working keys and their transport in sign-in field 62 (PROFILE §4)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tillroll.crypto import des


class KeyCheckError(ValueError):
    """A working key's check value does not match: the keys must not be used."""


@dataclass(frozen=True, repr=False)
class WorkingKeys:
    pik: bytes  # 16 bytes, 3DES
    mak: bytes  # 8 bytes, single DES
    tdk: bytes | None = None  # 16 bytes, only with sign-in mode 004

    def __repr__(self) -> str:  # keys never reach a log
        return "WorkingKeys(<hidden>)"

    @classmethod
    def generate(cls, with_tdk: bool = False) -> WorkingKeys:
        return cls(pik=os.urandom(16), mak=os.urandom(8), tdk=os.urandom(16) if with_tdk else None)


def wrap_working_keys(tmk: bytes, keys: WorkingKeys) -> bytes:
    """Field 62: 40 bytes (mode 003) or 60 bytes (mode 004, with the TDK)."""
    out = (
        des.encrypt(tmk, keys.pik)
        + des.check_value(keys.pik)
        + des.encrypt(tmk, keys.mak)
        + bytes(8)
        + des.check_value(keys.mak)
    )
    if keys.tdk is not None:
        out += des.encrypt(tmk, keys.tdk) + des.check_value(keys.tdk)
    return out


def unwrap_working_keys(tmk: bytes, field62: bytes) -> WorkingKeys:
    if len(field62) not in (40, 60):
        raise KeyCheckError(f"field 62 must be 40 or 60 bytes, got {len(field62)}")
    pik = des.decrypt(tmk, field62[0:16])
    if des.check_value(pik) != field62[16:20]:
        raise KeyCheckError("PIK check value does not match")
    mak = des.decrypt(tmk, field62[20:28])
    if des.check_value(mak) != field62[36:40]:
        raise KeyCheckError("MAK check value does not match")
    tdk = None
    if len(field62) == 60:
        tdk = des.decrypt(tmk, field62[40:56])
        if des.check_value(tdk) != field62[56:60]:
            raise KeyCheckError("TDK check value does not match")
    return WorkingKeys(pik=pik, mak=mak, tdk=tdk)
