"""UnionPay "ECB" MAC (PROFILE §4)."""

from __future__ import annotations

import hmac

from tillroll.crypto import des


def mac_ecb(mak: bytes, mac_block: bytes) -> bytes:
    """Return field 64: the 8 ASCII hex characters of the MAC."""
    padded = mac_block + bytes(-len(mac_block) % 8)
    r = bytearray(8)
    for i in range(0, len(padded), 8):
        for j in range(8):
            r[j] ^= padded[i + j]
    r_hex = bytes(r).hex().upper().encode("ascii")
    left, right = r_hex[:8], r_hex[8:]
    e1 = des.encrypt(mak, left)
    x = bytes(a ^ b for a, b in zip(e1, right, strict=True))
    e2 = des.encrypt(mak, x)
    return e2.hex().upper()[:8].encode("ascii")


def mac_equal(computed: bytes, received: bytes) -> bool:
    """Compare MACs in constant time: timing must not tell how many leading bytes matched."""
    return hmac.compare_digest(computed, received)
