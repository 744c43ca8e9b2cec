"""Keys at rest: TMKs and working keys are stored encrypted under a local master key.

The master key comes from `TILLROLL_MASTER_KEY` (64 hex digits) or a key file (created with
mode 0600 on first run; refused when the group or others may read it). It never reaches a log
or an error message.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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

    def __repr__(self) -> str:
        return "KeyStore(<hidden>)"

    def seal(self, clear: bytes, *, label: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, clear, label)

    def open(self, sealed: bytes, *, label: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], label)
        except InvalidTag:
            raise KeyStoreError(
                "a stored key does not decrypt under this master key: "
                f"is {MASTER_KEY_ENV} or the key file the one this database was created with?"
            ) from None

    @classmethod
    def load(cls, key_file: Path) -> KeyStore:
        """From the environment, else from `key_file`, generating it on first run."""
        env = os.environ.get(MASTER_KEY_ENV)
        if env:
            try:
                return cls(bytes.fromhex(env))
            except ValueError:
                raise KeyStoreError(f"{MASTER_KEY_ENV} must be 64 hex digits") from None
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
