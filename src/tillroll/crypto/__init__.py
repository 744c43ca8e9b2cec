"""Keys, check values, MAC and PIN blocks. Pure."""

from tillroll.crypto.des import check_value
from tillroll.crypto.keys import KeyCheckError, WorkingKeys, unwrap_working_keys, wrap_working_keys
from tillroll.crypto.mac import mac_ecb
from tillroll.crypto.pin import PinBlockError, decrypt_pin, encrypt_pin_block

__all__ = [
    "KeyCheckError",
    "PinBlockError",
    "WorkingKeys",
    "check_value",
    "decrypt_pin",
    "encrypt_pin_block",
    "mac_ecb",
    "unwrap_working_keys",
    "wrap_working_keys",
]
