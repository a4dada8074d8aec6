"""This server's own ed25519 signing keys, in the file format Synapse uses.

File format (one key per line, as signedjson reads and writes it)::

    ed25519 <version> <unpadded base64 seed>

so a key file moves between matrixfed and Synapse unchanged. Retired keys
(published as ``old_verify_keys``) use Synapse's ``old_signing_keys`` format::

    ed25519 <version> <expired_ts> <unpadded base64 public key>

Guarantees: the first start writes a fresh key atomically (never a half-written
file, never overwriting a file that appeared meanwhile) readable only by the
owner; later starts read the same key back. The first key in the file signs
requests and events; every key in the file is published.

How it fails: an unreadable, empty or malformed file raises ``ConfigError``
with one line naming the file and the problem.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Sequence

import attrs
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    read_old_signing_keys,
    read_signing_keys,
    write_signing_keys,
)
from signedjson.types import SigningKey, VerifyKey

from matrixfed.config import ConfigError

__all__ = [
    "OldVerifyKey",
    "ServerSigningKeys",
    "generate_key_file",
    "key_id",
    "load_or_generate_signing_keys",
    "load_server_signing_keys",
    "read_old_verify_keys",
    "read_signing_key_file",
]

# Synapse names generated keys "a_" + 4 random letters; any [A-Za-z0-9_] is valid.
_VERSION_PREFIX = "a_"
_VERSION_RANDOM_CHARS = 4
_VERSION_ALPHABET = string.ascii_letters
_VALID_VERSION_CHARS = frozenset(string.ascii_letters + string.digits + "_")
# Private key material: owner read/write only.
_KEY_FILE_MODE = 0o600


@attrs.frozen(slots=True)
class OldVerifyKey:
    """A retired key: still published so old signatures verify, never used to sign."""

    key_id: str
    verify_key: VerifyKey
    expired_ts: int


@attrs.frozen(slots=True)
class ServerSigningKeys:
    """Everything about our own keys that the key server and the signer need.

    Attributes:
        signing_keys: our current keys; the first one signs requests and events.
        old_verify_keys: retired keys still published in ``old_verify_keys``.
    """

    signing_keys: tuple[SigningKey, ...]
    old_verify_keys: tuple[OldVerifyKey, ...] = ()

    @property
    def primary(self) -> SigningKey:
        """The key that signs what this server sends."""
        return self.signing_keys[0]

    def verify_keys(self) -> dict[str, VerifyKey]:
        """key_id -> public key for every current key."""
        return {key_id(k): get_verify_key(k) for k in self.signing_keys}


def key_id(key: SigningKey | VerifyKey) -> str:
    """The key's ID, e.g. "ed25519:a_AbCd"."""
    return f"{key.alg}:{key.version}"


def new_key_version() -> str:
    """A fresh key version in Synapse's style, e.g. "a_XyZw"."""
    return _VERSION_PREFIX + "".join(
        secrets.choice(_VERSION_ALPHABET) for _ in range(_VERSION_RANDOM_CHARS)
    )


def _check_version(path: str, version: str) -> None:
    if not version or not set(version) <= _VALID_VERSION_CHARS:
        raise ConfigError(f"signing key file {path}: invalid key version {version!r}")


def read_signing_key_file(path: str) -> list[SigningKey]:
    """Read a signing key file.

    Raises:
        ConfigError: the file cannot be read, is empty, or a line is malformed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except OSError as e:
        raise ConfigError(f"signing key file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"signing key file {path}: not a text file") from None
    if not lines:
        raise ConfigError(f"signing key file {path}: no key in it")
    try:
        keys: list[SigningKey] = read_signing_keys(lines)
    except Exception as e:
        # signedjson raises ValueError/TypeError/nacl errors for bad lines.
        raise ConfigError(
            f"signing key file {path}: not in 'ed25519 VERSION BASE64SEED' format ({e})"
        ) from None
    for key in keys:
        _check_version(path, key.version)
    return keys


def generate_key_file(path: str, *, version: str | None = None) -> SigningKey:
    """Write a new signing key file; refuse to replace an existing one.

    Args:
        path: where to write it; the directory must exist.
        version: the key version (default: a random Synapse-style one).

    Returns:
        The new key.

    Raises:
        ConfigError: the file exists or cannot be written.
    """
    key: SigningKey = generate_signing_key(version or new_key_version())
    _check_version(path, key.version)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _KEY_FILE_MODE)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                write_signing_keys(f, [key])
                f.flush()
                os.fsync(f.fileno())
            # link() fails if the path exists: a concurrent start or an existing
            # key is never overwritten.
            os.link(tmp, path)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    except FileExistsError:
        raise ConfigError(f"signing key file {path} already exists") from None
    except OSError as e:
        raise ConfigError(f"signing key file {path}: cannot write: {e.strerror or e}") from None
    return key


def load_or_generate_signing_keys(path: str) -> list[SigningKey]:
    """Read the signing key file, generating it with one new key if it does not exist.

    Raises:
        ConfigError: the file exists but is unusable, or cannot be created.
    """
    if not os.path.lexists(path):
        try:
            generate_key_file(path)
        except ConfigError:
            # Lost a race with another process creating it: read theirs.
            if not os.path.lexists(path):
                raise
    return read_signing_key_file(path)


def read_old_verify_keys(path: str) -> list[OldVerifyKey]:
    """Read retired keys in Synapse's ``old_signing_keys`` line format.

    Raises:
        ConfigError: the file cannot be read or a line is malformed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not a text file"
        raise ConfigError(f"old signing keys file {path}: {reason or e}") from None
    try:
        keys = read_old_signing_keys(lines)
    except Exception as e:
        raise ConfigError(
            f"old signing keys file {path}: not in 'ed25519 VERSION EXPIRED_TS KEY' format ({e})"
        ) from None
    return [OldVerifyKey(key_id(k), k, int(k.expired)) for k in keys]


def load_server_signing_keys(
    signing_key_path: str, old_signing_keys_path: str | None = None
) -> ServerSigningKeys:
    """Load (or on first start create) our keys, plus any retired ones.

    Raises:
        ConfigError: a file is unusable, or a retired key ID is also a current one.
    """
    signing = load_or_generate_signing_keys(signing_key_path)
    old: Sequence[OldVerifyKey] = ()
    if old_signing_keys_path is not None:
        old = read_old_verify_keys(old_signing_keys_path)
        current = {key_id(k) for k in signing}
        for o in old:
            if o.key_id in current:
                raise ConfigError(
                    f"old signing keys file {old_signing_keys_path}: {o.key_id} is also "
                    f"a current key in {signing_key_path}"
                )
    return ServerSigningKeys(signing_keys=tuple(signing), old_verify_keys=tuple(old))


def verify_key_base64(key: VerifyKey) -> str:
    """The unpadded base64 form published in ``verify_keys``."""
    encoded: str = encode_verify_key_base64(key)
    return encoded
