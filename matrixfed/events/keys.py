"""Verify keys as plain data, shared by the pure core and the key fetching layer.

The core never fetches keys: callers (the keyring, above the core) fetch them and
hand them in as ``KeyMap``.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from nacl.signing import VerifyKey


@attrs.frozen(slots=True)
class ServerVerifyKey:
    """One server signing key as learned from /_matrix/key/v2/server or a notary.

    Attributes:
        server_name: the server the key belongs to.
        key_id: e.g. "ed25519:a_Abc".
        verify_key: the public key (signedjson attaches ``alg``/``version`` to it).
        valid_until_ts: milliseconds since the epoch until which the key is valid;
            for an old key, the ``expired_ts`` the server published.
        expired: True when the key came from ``old_verify_keys``.
    """

    server_name: str
    key_id: str
    verify_key: VerifyKey
    valid_until_ts: int
    expired: bool = False


# server_name -> key_id -> key
KeyMap = Mapping[str, Mapping[str, ServerVerifyKey]]
