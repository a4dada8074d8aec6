"""The key server and the notary: ``/_matrix/key/v2/*``.

``LocalKeyServer`` answers ``GET /_matrix/key/v2/server`` (and the legacy
``/_matrix/key/v2/server/{keyId}``) with our ``verify_keys``,
``old_verify_keys`` and a ``valid_until_ts`` one key-validity-period ahead,
signed by every current key.

``NotaryServer`` answers ``GET /_matrix/key/v2/query/{serverName}`` and
``POST /_matrix/key/v2/query``: responses come from the keyring (which fetches,
verifies and caches them), are returned as the origin signed them, plus our
signature. Our own name is answered from ``LocalKeyServer``.

Neither needs auth; an X-Matrix header on these requests is ignored (Synapse
signs its key requests). How it fails: a server that cannot be reached or has
no keys yields no entry (``{"server_keys": []}``), never an error; malformed
requests get 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from signedjson.sign import sign_json
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from matrixfed.config import split_server_name
from matrixfed.errors import MatrixError, RemoteError, bad_json, invalid_param
from matrixfed.federation.server.auth import Clock
from matrixfed.federation.server.endpoint import ApiRequest, AuthMode, Endpoint, JsonResponse
from matrixfed.keys.signing_key import ServerSigningKeys, verify_key_base64

__all__ = ["LocalKeyServer", "NotaryKeySource", "NotaryServer"]

log = Logger()

# Bound the fan-out one POST /key/v2/query can cause (each name may mean an
# outbound fetch).
MAX_NOTARY_SERVERS_PER_QUERY = 100


class NotaryKeySource(Protocol):
    """The part of the keyring the notary needs."""

    def get_server_key_responses(
        self, server_name: str, min_valid_until_ts: int, /
    ) -> Awaitable[list[dict[str, Any]]]:
        """Verified key responses of ``server_name`` as it signed them, valid at
        least until the given time (ms); [] when none can be had."""
        ...


class LocalKeyServer:
    """Publishes this server's own keys."""

    def __init__(
        self,
        *,
        server_name: str,
        keys: ServerSigningKeys,
        clock: Clock,
        validity_ms: int,
    ) -> None:
        """Args:
        server_name: our server name.
        keys: our current and retired keys.
        clock: for valid_until_ts.
        validity_ms: how far ahead valid_until_ts lies.
        """
        self._server_name = server_name
        self._keys = keys
        self._clock = clock
        self._validity_ms = validity_ms

    @property
    def server_name(self) -> str:
        return self._server_name

    def signed_response(self) -> dict[str, Any]:
        """A fresh, self-signed ``/_matrix/key/v2/server`` response."""
        now_ms = int(self._clock.seconds() * 1000)
        body: dict[str, Any] = {
            "server_name": self._server_name,
            "valid_until_ts": now_ms + self._validity_ms,
            "verify_keys": {
                kid: {"key": verify_key_base64(vk)} for kid, vk in self._keys.verify_keys().items()
            },
            "old_verify_keys": {
                old.key_id: {
                    "key": verify_key_base64(old.verify_key),
                    "expired_ts": old.expired_ts,
                }
                for old in self._keys.old_verify_keys
            },
        }
        for key in self._keys.signing_keys:
            sign_json(body, self._server_name, key)
        return body

    def countersign(self, response: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of another server's key response with our signatures added."""
        copy = dict(response)
        signatures = response.get("signatures")
        copy["signatures"] = (
            {name: dict(sigs) for name, sigs in signatures.items() if isinstance(sigs, dict)}
            if isinstance(signatures, dict)
            else {}
        )
        for key in self._keys.signing_keys:
            sign_json(copy, self._server_name, key)
        return copy

    async def _get_server(self, request: ApiRequest) -> JsonResponse:
        return 200, self.signed_response()

    def endpoints(self) -> list[Endpoint]:
        """The key server's endpoints."""
        return [
            Endpoint("GET", "/_matrix/key/v2/server", self._get_server, auth=AuthMode.NONE),
            # Deprecated form with a key ID; the key ID is ignored (as Synapse does).
            Endpoint("GET", "/_matrix/key/v2/server/{keyId}", self._get_server, auth=AuthMode.NONE),
        ]


class NotaryServer:
    """Serves other servers' keys, countersigned, to whoever asks."""

    def __init__(
        self,
        *,
        local: LocalKeyServer,
        keyring: NotaryKeySource,
        clock: Clock,
    ) -> None:
        """Args:
        local: our key server (for our own keys and countersigning).
        keyring: fetches, verifies and caches other servers' responses.
        clock: "now" when the request gives no minimum_valid_until_ts.
        """
        self._local = local
        self._keyring = keyring
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def _lookup(self, server_name: str, min_valid_until_ts: int) -> list[dict[str, Any]]:
        # Requested key IDs do not narrow the answer: the spec lets a notary
        # return all of a server's keys, and a requester only uses what it needs.
        if server_name == self._local.server_name:
            return [self._local.signed_response()]
        try:
            split_server_name(server_name)
        except ValueError:
            return []
        try:
            responses = await self._keyring.get_server_key_responses(
                server_name, min_valid_until_ts
            )
        except (RemoteError, MatrixError) as e:
            log.info("Notary: no keys for {server_name}: {error}", server_name=server_name, error=e)
            return []
        return [self._local.countersign(r) for r in responses]

    async def _query_one(self, request: ApiRequest) -> JsonResponse:
        server_name = request.path_params["serverName"]
        min_ts = _parse_ts(request.arg("minimum_valid_until_ts"), self._now_ms())
        return 200, {"server_keys": await self._lookup(server_name, min_ts)}

    async def _query_many(self, request: ApiRequest) -> JsonResponse:
        body = request.content
        if not isinstance(body, dict) or not isinstance(body.get("server_keys"), dict):
            raise bad_json("Body must be an object with a 'server_keys' object")
        wanted: dict[str, Any] = body["server_keys"]
        if len(wanted) > MAX_NOTARY_SERVERS_PER_QUERY:
            raise invalid_param(
                f"At most {MAX_NOTARY_SERVERS_PER_QUERY} servers may be queried at once"
            )
        now_ms = self._now_ms()
        lookups: list[Deferred[list[dict[str, Any]]]] = []
        for server_name, criteria in wanted.items():
            if not isinstance(criteria, dict):
                raise bad_json(f"server_keys.{server_name} must be an object")
            min_ts = now_ms
            for kid, crit in criteria.items():
                if not isinstance(crit, dict):
                    raise bad_json(f"server_keys.{server_name}.{kid} must be an object")
                min_ts = max(min_ts, _parse_ts(crit.get("minimum_valid_until_ts"), now_ms))
            lookups.append(Deferred.fromCoroutine(self._lookup(server_name, min_ts)))
        results = await gatherResults(lookups, consumeErrors=True)
        return 200, {"server_keys": [r for rs in results for r in rs]}

    def endpoints(self) -> list[Endpoint]:
        """The notary's endpoints."""
        return [
            Endpoint(
                "GET",
                "/_matrix/key/v2/query/{serverName}",
                self._query_one,
                auth=AuthMode.NONE,
            ),
            Endpoint("POST", "/_matrix/key/v2/query", self._query_many, auth=AuthMode.NONE),
        ]


def _parse_ts(value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise invalid_param(f"minimum_valid_until_ts must be an integer, not {value!r}")
