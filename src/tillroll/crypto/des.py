"""DES and 3DES ECB primitives (through `cryptography`), check values.

Double-length keys (k1k2) are expanded to k1k2k1: `cryptography` deprecates 16-byte keys.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:  # cryptography >= 43 keeps TripleDES under decrepit
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - older cryptography
        TripleDES = algorithms.TripleDES  # type: ignore[misc,unused-ignore]


class KeyLengthError(ValueError):
    pass


def _expand(key: bytes) -> bytes:
    if len(key) == 8:
        return key * 3
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 24:
        return key
    raise KeyLengthError(f"DES key must be 8, 16 or 24 bytes, got {len(key)}")


@functools.lru_cache(maxsize=1024)  # working keys are reused for every message of a session
def _cipher(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(TripleDES(_expand(key)), modes.ECB())


# Cipher contexts are kept per thread and key: ECB has no chaining, so one context encrypts any
# number of whole blocks with `update`, and making a context costs more than using it. Contexts
# are not shared between threads (the host's event loop and database worker both sign).
_contexts = threading.local()
CONTEXTS_MAX = 4096


def _context(key: bytes, direction: str) -> Any:
    cache: dict[tuple[bytes, str], Any] | None = getattr(_contexts, "cache", None)
    if cache is None:
        cache = _contexts.cache = {}
    ctx = cache.get((key, direction))
    if ctx is None:
        if len(cache) >= CONTEXTS_MAX:
            cache.clear()
        cipher = _cipher(key)
        ctx = cache[(key, direction)] = cipher.encryptor() if direction == "e" else cipher.decryptor()
    return ctx


def encrypt(key: bytes, data: bytes) -> bytes:
    """DES (8-byte key) or 3DES (16/24-byte key) ECB encryption of whole blocks."""
    if len(data) % 8:
        raise ValueError(f"data must be a multiple of 8 bytes, got {len(data)}")
    return bytes(_context(key, "e").update(data))


def block_encryptor(key: bytes) -> Callable[[bytes], bytes]:
    """`encrypt` under `key` for a caller that encrypts several blocks in a row (the MAC): the
    thread's cached context's `update`, looked up once. Its input must be whole 8-byte blocks
    (unchecked: the caller's data is fixed-size), and it must be used on this thread only."""
    update: Callable[[bytes], bytes] = _context(key, "e").update
    return update


def decrypt(key: bytes, data: bytes) -> bytes:
    if len(data) % 8:
        raise ValueError(f"data must be a multiple of 8 bytes, got {len(data)}")
    return bytes(_context(key, "d").update(data))


def check_value(key: bytes) -> bytes:
    """First 4 bytes of the key's encryption of 8 zero bytes."""
    return encrypt(key, bytes(8))[:4]
