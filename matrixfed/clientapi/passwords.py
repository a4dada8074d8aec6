"""Password hashing with hashlib.scrypt (a slow, memory-hard hash).

Stored form: ``scrypt$N$r$p$SALT$HASH`` with SALT and HASH in unpadded base64,
so the cost parameters can be raised later without breaking stored hashes.
Both functions are CPU-bound (tens of ms): call them off the reactor thread.
Checking is constant-time in the hash comparison; a malformed stored hash never
matches.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from unpaddedbase64 import decode_base64, encode_base64

__all__ = ["check_password", "hash_password"]

# scrypt cost: N=2**14, r=8, p=1 is the interactive-login setting of the scrypt
# paper (~16 MiB, tens of ms per hash).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
# 16 random bytes of salt per password.
SALT_BYTES = 16
# 32 bytes of derived key.
HASH_BYTES = 32
# OpenSSL's default scrypt memory cap (32 MiB) is too close to N=2**14, r=8.
SCRYPT_MAXMEM = 64 * 1024 * 1024


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=SCRYPT_MAXMEM,
        dklen=HASH_BYTES,
    )


def hash_password(password: str) -> str:
    """The stored form of ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode_base64(salt)}${encode_base64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the stored hash (False for a malformed hash)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = decode_base64(parts[4])
        expected = decode_base64(parts[5])
        actual = _scrypt(password, salt, n, r, p)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)
