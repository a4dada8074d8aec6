"""A fake key network: remote servers and notaries answering the keyring's requests."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.internet.defer import Deferred

from matrixfed.errors import RemoteError


class FakeRemote:
    """A homeserver with signing keys that publishes /_matrix/key/v2/server."""

    def __init__(self, name: str, version: str = "k1") -> None:
        self.name = name
        self.key = generate_signing_key(version)
        self.key_id = f"ed25519:{version}"
        self.old_keys: dict[str, tuple[Any, int]] = {}
        self.valid_until_ts = 0

    def rotate(self, new_version: str, expired_ts: int) -> None:
        self.old_keys[self.key_id] = (get_verify_key(self.key), expired_ts)
        self.key = generate_signing_key(new_version)
        self.key_id = f"ed25519:{new_version}"

    def key_response(self, valid_until_ts: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "server_name": self.name,
            "valid_until_ts": valid_until_ts if valid_until_ts is not None else self.valid_until_ts,
            "verify_keys": {
                self.key_id: {"key": encode_verify_key_base64(get_verify_key(self.key))}
            },
            "old_verify_keys": {
                kid: {"key": encode_verify_key_base64(vk), "expired_ts": ts}
                for kid, (vk, ts) in self.old_keys.items()
            },
        }
        signed: dict[str, Any] = sign_json(body, self.name, self.key)
        return signed


class FakeKeyNetwork:
    """Implements the keyring's client interface over FakeRemotes.

    ``remotes`` answer GET /_matrix/key/v2/server; ``notaries`` answer POST
    /_matrix/key/v2/query with their (countersigned) copies of other servers'
    responses. ``down`` servers raise an unreachable RemoteError. With ``hold``
    set, requests wait until ``release()``.
    """

    def __init__(self) -> None:
        self.remotes: dict[str, FakeRemote] = {}
        self.responses: dict[str, dict[str, Any]] = {}
        self.notary_copies: dict[str, dict[str, dict[str, Any]]] = {}
        self.down: set[str] = set()
        self.requests: list[tuple[str, str, str, Any]] = []
        self.hold = False
        self._held: list[tuple[Deferred[None], Any]] = []

    def add(self, remote: FakeRemote, valid_until_ts: int) -> FakeRemote:
        self.remotes[remote.name] = remote
        self.responses[remote.name] = remote.key_response(valid_until_ts)
        return remote

    def notary_knows(self, notary: FakeRemote, response: Mapping[str, Any]) -> None:
        """Give ``notary`` a copy of ``response``, countersigned by the notary."""
        signed = sign_json(copy.deepcopy(dict(response)), notary.name, notary.key)
        self.notary_copies.setdefault(notary.name, {})[response["server_name"]] = signed

    def get_count(self, destination: str) -> int:
        return sum(1 for m, d, _p, _b in self.requests if m == "GET" and d == destination)

    def posts(self) -> list[tuple[str, Any]]:
        return [(d, b) for m, d, _p, b in self.requests if m == "POST"]

    def release(self) -> None:
        self.hold = False
        held, self._held = self._held, []
        for d, _ in held:
            d.callback(None)

    async def _maybe_hold(self) -> None:
        if self.hold:
            d: Deferred[None] = Deferred()
            self._held.append((d, None))
            await d

    async def get_json(
        self,
        destination: str,
        path: str,
        args: Mapping[str, str | Sequence[str]] | None = None,
        *,
        timeout: float | None = None,
        ignore_backoff: bool = False,
        max_size: int | None = None,
    ) -> Any:
        self.requests.append(("GET", destination, path, None))
        await self._maybe_hold()
        if destination in self.down or destination not in self.responses:
            raise RemoteError(destination, "connection refused", reachable=False, transient=True)
        assert path == "/_matrix/key/v2/server"
        return copy.deepcopy(self.responses[destination])

    async def post_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: Mapping[str, str | Sequence[str]] | None = None,
        *,
        timeout: float | None = None,
        ignore_backoff: bool = False,
        max_size: int | None = None,
    ) -> Any:
        self.requests.append(("POST", destination, path, copy.deepcopy(data)))
        await self._maybe_hold()
        if destination in self.down or destination not in self.notary_copies:
            raise RemoteError(destination, "connection refused", reachable=False, transient=True)
        assert path == "/_matrix/key/v2/query"
        copies = self.notary_copies[destination]
        return {
            "server_keys": [
                copy.deepcopy(copies[server]) for server in data["server_keys"] if server in copies
            ]
        }
