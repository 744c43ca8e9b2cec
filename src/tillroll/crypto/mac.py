"""UnionPay "ECB" MAC (PROFILE §4)."""

from __future__ import annotations

import hmac

from tillroll.crypto import des


def mac_ecb(mak: bytes, mac_block: bytes) -> bytes:
    """Return field 64: the 8 ASCII hex characters of the MAC."""
    padded = mac_block + bytes(-len(mac_block) % 8)
    r = 0
    for i in range(0, len(padded), 8):  # XOR of all 8-byte blocks
        r ^= int.from_bytes(padded[i : i + 8], "big")
    r_hex = r.to_bytes(8, "big").hex().upper().encode("ascii")
    e1 = des.encrypt(mak, r_hex[:8])
    x = (int.from_bytes(e1, "big") ^ int.from_bytes(r_hex[8:], "big")).to_bytes(8, "big")
    e2 = des.encrypt(mak, x)
    return e2.hex().upper()[:8].encode("ascii")


def mac_equal(computed: bytes, received: bytes) -> bool:
    """Compare MACs in constant time: timing must not tell how many leading bytes matched."""
    return hmac.compare_digest(computed, received)
