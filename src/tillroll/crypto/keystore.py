"""Keys at rest: TMKs and working keys are stored encrypted under a local master key.

The master key comes from `TILLROLL_MASTER_KEY` (64 hex digits) or a key file (created with
mode 0600 on first run; refused when the group or others may read it). It never reaches a log
or an error message.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tillroll.owner_only import others_can_read, write_private

MASTER_KEY_ENV = "TILLROLL_MASTER_KEY"
NONCE_LEN = 12


class KeyStoreError(ValueError):
    pass


class KeyStore:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise KeyStoreError("the master key must be 32 bytes (64 hex digits)")
        self._aead = AESGCM(master_key)
        self._digest_key = HKDF(hashes.SHA256(), 32, salt=None, info=b"tillroll content digest").derive(
            master_key
        )

    def __repr__(self) -> str:
        return "KeyStore(<hidden>)"

    def seal(self, clear: bytes, *, label: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, clear, label)

    def digest(self, data: bytes) -> str:
        """A keyed digest (HMAC-SHA256, 64 hex digits) for telling contents apart: a plain hash
        of a request holding a card number could be brute-forced back to it from a copy of the
        database; this one cannot without the master key."""
        mac = hmac.HMAC(self._digest_key, hashes.SHA256())
        mac.update(data)
        return mac.finalize().hex()

    def open(self, sealed: bytes, *, label: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], label)
        except InvalidTag:
            raise KeyStoreError(
                "a stored key does not decrypt under this master key: "
                f"is {MASTER_KEY_ENV} or the key file the one this database was created with?"
            ) from None

    @classmethod
    def from_env(cls) -> KeyStore | None:
        """From `TILLROLL_MASTER_KEY`, or None when it is not set."""
        env = os.environ.get(MASTER_KEY_ENV)
        if not env:
            return None
        try:
            return cls(bytes.fromhex(env))
        except ValueError:
            raise KeyStoreError(f"{MASTER_KEY_ENV} must be 64 hex digits") from None

    @classmethod
    def load(cls, key_file: Path) -> KeyStore:
        """From the environment, else from `key_file`, generating it on first run."""
        env = cls.from_env()
        if env is not None:
            return env
        if key_file.exists():
            return cls.read(key_file)
        key = os.urandom(32)
        try:
            write_private(key_file, key.hex().encode())
        except FileExistsError:  # another process created it first: use theirs
            return cls.read(key_file)
        return cls(key)

    @classmethod
    def read(cls, key_file: Path) -> KeyStore:
        """An existing key file, only when no one but its owner can read it."""
        if others_can_read(key_file):
            raise KeyStoreError(
                f"key file {key_file} can be read by other users: a copy of it opens every stored "
                f"key. Restrict it with `chmod 600 {key_file}` (and consider a new key)."
            )
        try:
            return cls(bytes.fromhex(key_file.read_text().strip()))
        except ValueError:
            raise KeyStoreError(f"key file {key_file} does not hold 64 hex digits") from None
