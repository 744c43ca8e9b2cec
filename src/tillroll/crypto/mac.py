"""UnionPay "ECB" MAC (PROFILE §4)."""

from __future__ import annotations

import hmac

from tillroll.crypto import des

_BLOCK = 8


def xor_blocks(data: bytes | bytearray) -> int:
    """The XOR of `data`'s 8-byte blocks, the last one zero-padded, as a 64-bit integer.

    The whole block is one integer (zero pad appended as a shift); halving folds XOR its upper
    blocks onto its lower ones, block-aligned, so the result is the XOR of every block.
    """
    n = -(-len(data) // _BLOCK)  # blocks, the last one padded
    r = int.from_bytes(data, "big") << (8 * (-len(data) % _BLOCK))
    while n > 1:
        half = n >> 1
        bits = half * 64
        r = (r >> bits) ^ (r & ((1 << bits) - 1))
        n -= half
    return r


def mac_ecb(mak: bytes, mac_block: bytes | bytearray) -> bytes:
    """Return field 64: the 8 ASCII hex characters of the MAC."""
    r_hex = b"%016X" % xor_blocks(mac_block)
    encrypt = des.block_encryptor(mak)
    e1 = encrypt(r_hex[:8])
    x = (int.from_bytes(e1, "big") ^ int.from_bytes(r_hex[8:], "big")).to_bytes(8, "big")
    e2 = encrypt(x)
    return e2[:4].hex().upper().encode("ascii")


def mac_equal(computed: bytes, received: bytes) -> bool:
    """Compare MACs in constant time: timing must not tell how many leading bytes matched."""
    return hmac.compare_digest(computed, received)
