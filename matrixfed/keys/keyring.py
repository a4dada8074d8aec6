"""The keyring: other servers' signing keys, fetched once and reused.

``KeyRing`` answers "give me server S's key K, valid until at least T". It looks
in memory, then in the store, then asks the network: first the server itself
(``GET /_matrix/key/v2/server``), then each trusted notary in order
(``POST /_matrix/key/v2/query``). Our own keys are answered locally.

Guarantees:
- A fetched response is used only if it names the right server, is signed by
  the server with a key it publishes in ``verify_keys`` (every such signature
  must verify), and, when it came through a notary, is also signed by the
  notary with a key fetched directly from the notary.
- A key's validity is the response's ``valid_until_ts`` capped at 7 days after
  we fetched it (spec: keys_server, ``valid_until_ts``); keys from
  ``old_verify_keys`` are valid until their ``expired_ts`` and flagged expired.
- Keys are cached in memory and persisted (``KeysStore``), reused until their
  validity no longer covers what is asked.
- One fetch per server at a time: concurrent needs for the same server wait for
  the fetch in flight. ``get_keys_batch`` fetches many servers directly in
  parallel, then sends ONE query per notary for all servers still missing.
- After a fetch attempt left a need unmet, the server is not asked again for
  ``REFETCH_MIN_INTERVAL_MS`` (events citing unknown key IDs cannot make us
  hammer a server).

How it fails: it never raises for unreachable or misbehaving servers; keys it
could not obtain are simply absent from the result (the caller then rejects
the signature). Store errors propagate.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, Unpack

from signedjson.key import decode_verify_key_bytes, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from signedjson.types import SigningKey
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from unpaddedbase64 import decode_base64

from matrixfed.errors import RemoteError
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.federation.client import QueryArgs, RequestOptions
from matrixfed.keys.signing_key import ServerSigningKeys
from matrixfed.storage.keys_store import FetchedKeyResponse, StoredKey, StoredKeyResponse

__all__ = ["KeyRing", "KeyStore", "KeyFetchClient"]

log = Logger()

# spec (keys_server, valid_until_ts): use the lesser of it and 7 days from now.
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
# A server whose answer lacked a key is not asked again sooner than this.
REFETCH_MIN_INTERVAL_MS = 30 * 1000
# Deadline for one key request: key servers answer from memory.
KEY_REQUEST_TIMEOUT_SECONDS = 30.0
# A server's own key response is a few hundred bytes.
MAX_DIRECT_RESPONSE_SIZE = 1024 * 1024
# A notary answer carries one response per queried server (a join can ask for
# hundreds of servers).
MAX_NOTARY_RESPONSE_SIZE = 32 * 1024 * 1024
# Our own current keys never expire from our own point of view.
_OWN_KEY_VALID_UNTIL = 2**62

KEY_SERVER_PATH = "/_matrix/key/v2/server"
KEY_QUERY_PATH = "/_matrix/key/v2/query"


class KeyFetchClient(Protocol):
    """The part of ``FederationClient`` the keyring uses."""

    async def get_json(
        self,
        destination: str,
        path: str,
        args: QueryArgs | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any: ...

    async def post_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: QueryArgs | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any: ...


class KeyStore(Protocol):
    """The part of ``KeysStore`` the keyring uses."""

    async def store_fetched(self, fetched: Sequence[FetchedKeyResponse]) -> None: ...

    async def get_server_keys(
        self, server_names: Collection[str]
    ) -> dict[str, dict[str, StoredKey]]: ...

    async def get_key_response(self, server_name: str) -> StoredKeyResponse | None: ...


class Clock(Protocol):
    def seconds(self) -> float: ...


class KeyResponseError(ValueError):
    """A key response is malformed or its signatures do not verify."""


def _key_id(key: Any) -> str:
    return f"{key.alg}:{key.version}"


def _parse_keys(server_name: str, response: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """Check a response's shape and self-signature; return key_id -> ServerVerifyKey."""
    if response.get("server_name") != server_name:
        raise KeyResponseError(f"response is for {response.get('server_name')!r}")
    valid_until = response.get("valid_until_ts")
    if not isinstance(valid_until, int) or isinstance(valid_until, bool):
        raise KeyResponseError("valid_until_ts is not an integer")
    verify_keys = response.get("verify_keys")
    old_keys = response.get("old_verify_keys", {})
    if not isinstance(verify_keys, dict) or not isinstance(old_keys, dict):
        raise KeyResponseError("verify_keys/old_verify_keys are not objects")
    effective = min(valid_until, now_ms + MAX_KEY_VALIDITY_MS)
    keys: dict[str, ServerVerifyKey] = {}
    for key_id, data in verify_keys.items():
        if not key_id.startswith("ed25519:"):
            continue  # unsupported algorithm: ignore, as the spec allows others
        keys[key_id] = ServerVerifyKey(
            server_name, key_id, _decode_key(key_id, data), effective, expired=False
        )
    for key_id, data in old_keys.items():
        if not key_id.startswith("ed25519:") or key_id in keys:
            continue
        expired_ts = data.get("expired_ts") if isinstance(data, dict) else None
        if not isinstance(expired_ts, int) or isinstance(expired_ts, bool):
            raise KeyResponseError(f"old key {key_id} has no integer expired_ts")
        keys[key_id] = ServerVerifyKey(
            server_name, key_id, _decode_key(key_id, data), expired_ts, expired=True
        )
    signatures = response.get("signatures")
    own_sigs = signatures.get(server_name) if isinstance(signatures, dict) else None
    signers = [k for k in (own_sigs or {}) if k in verify_keys and k in keys]
    if not signers:
        raise KeyResponseError("not signed by any of its own verify_keys")
    for key_id in signers:
        try:
            _verify(response, server_name, keys[key_id])
        except SignatureVerifyException:
            raise KeyResponseError(f"bad self-signature with {key_id}") from None
    return keys


def _any(value: Any) -> Any:
    # signedjson types its keys as a Protocol; at run time they are PyNaCl keys.
    return value


def _verify(obj: Mapping[str, Any], signer: str, key: ServerVerifyKey) -> None:
    """Raises SignatureVerifyException unless ``signer`` signed ``obj`` with ``key``."""
    verify_signed_json(dict(obj), signer, _any(key.verify_key))


def _decode_key(key_id: str, data: Any) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise KeyResponseError(f"key {key_id} has no key")
    try:
        return decode_verify_key_bytes(key_id, decode_base64(data["key"]))
    except Exception:
        raise KeyResponseError(f"key {key_id} is not a valid ed25519 key") from None


class KeyRing:
    """Fetches, verifies, caches and persists other servers' verify keys."""

    def __init__(
        self,
        *,
        client: KeyFetchClient,
        store: KeyStore,
        clock: Clock,
        server_name: str,
        signing_key: SigningKey,
        trusted_key_servers: Sequence[str] = (),
        own_keys: ServerSigningKeys | None = None,
        own_key_response: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Create the keyring.

        Args:
            client: the federation client (signed GET and POST).
            store: persistence for fetched keys and responses.
            clock: ``seconds()`` for validity checks.
            server_name: our server name (its keys are answered locally).
            signing_key: our signing key.
            trusted_key_servers: notaries to ask, in order, when a server's own
                answer did not give the keys needed.
            own_keys: all our current and retired keys (default: just
                ``signing_key``).
            own_key_response: builds our signed ``/_matrix/key/v2/server``
                response, returned by ``get_server_key_responses`` for us.
        """
        self._client = client
        self._store = store
        self._clock = clock
        self._server_name = server_name
        self._notaries = tuple(n for n in trusted_key_servers if n != server_name)
        self._own_key_response = own_key_response
        own: dict[str, ServerVerifyKey] = {}
        signing_keys = own_keys.signing_keys if own_keys is not None else (signing_key,)
        for key in (signing_key, *signing_keys):
            verify_key: Any = get_verify_key(key)
            own[_key_id(key)] = ServerVerifyKey(
                server_name, _key_id(key), verify_key, _OWN_KEY_VALID_UNTIL
            )
        for old in own_keys.old_verify_keys if own_keys is not None else ():
            own.setdefault(
                old.key_id,
                ServerVerifyKey(
                    server_name, old.key_id, _any(old.verify_key), old.expired_ts, True
                ),
            )
        self._own = own
        # server -> key ID -> (key, valid_until_ts of the response it came from)
        self._cache: dict[str, dict[str, tuple[ServerVerifyKey, int]]] = {}
        self._loaded: set[str] = set()
        self._inflight: dict[str, list[Deferred[None]]] = {}
        self._last_attempt_ms: dict[str, int] = {}

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    # -- public API ---------------------------------------------------------

    async def get_keys(
        self, server_name: str, key_ids: Collection[str], min_valid_until_ts: int
    ) -> dict[str, ServerVerifyKey]:
        """Keys of one server, each valid until at least ``min_valid_until_ts``.

        Args:
            server_name: whose keys.
            key_ids: the key IDs needed, e.g. ``{"ed25519:abc"}``.
            min_valid_until_ts: ms; a key valid only before this is not returned
                (pass 0 where validity does not matter, e.g. room versions 1-4).

        Returns:
            key ID -> key for the keys found; missing keys are omitted.
        """
        result = await self.get_keys_batch(
            {server_name: dict.fromkeys(key_ids, min_valid_until_ts)}
        )
        return result.get(server_name, {})

    async def get_keys_batch(
        self, requests: Mapping[str, Mapping[str, int]]
    ) -> dict[str, dict[str, ServerVerifyKey]]:
        """Keys of many servers in one go (the join coordinator's batch).

        Servers that need fetching are asked directly in parallel; those still
        missing keys afterwards go to each notary in ONE query per notary.

        Args:
            requests: server name -> key ID -> minimum ``valid_until_ts`` (ms).

        Returns:
            server name -> key ID -> key, for every requested server (possibly
            an empty dict); keys not found are omitted.
        """
        await self._load_from_store(
            [s for s in requests if s != self._server_name and s not in self._loaded]
        )
        to_fetch: dict[str, dict[str, int]] = {}
        waits: list[Deferred[None]] = []
        for server, needs in requests.items():
            if server == self._server_name:
                continue
            missing = self._missing(server, needs)
            if not missing:
                continue
            waiters = self._inflight.get(server)
            if waiters is not None:
                d: Deferred[None] = Deferred()
                waiters.append(d)
                waits.append(d)
            elif not self._may_fetch(server):
                log.debug("not refetching keys of {server} so soon", server=server)
            else:
                to_fetch[server] = missing
        if to_fetch:
            for server in to_fetch:
                self._inflight[server] = []
            try:
                await self._fetch(to_fetch)
            finally:
                attempted = self._now_ms()
                for server in to_fetch:
                    self._last_attempt_ms[server] = attempted
                    for waiter in self._inflight.pop(server):
                        waiter.callback(None)
        for d in waits:
            await d
        return {server: self._satisfied(server, needs) for server, needs in requests.items()}

    async def get_server_key_responses(
        self, server_name: str, min_valid_until_ts: int
    ) -> list[dict[str, Any]]:
        """Signed key responses of a server, for the notary endpoints.

        Serves the stored response if it is valid long enough, otherwise asks
        the server directly (never another notary); if the server cannot be
        reached, the last response seen is served anyway (spec: notaries keep
        serving cached responses of servers that are down).

        Args:
            server_name: whose keys.
            min_valid_until_ts: ms the response should be valid until.

        Returns:
            Zero or one signed responses, as the server published them.
        """
        if server_name == self._server_name:
            if self._own_key_response is None:
                return []
            return [dict(self._own_key_response())]
        stored = await self._store.get_key_response(server_name)
        if stored is not None and stored.valid_until_ts >= min_valid_until_ts:
            return [stored.response]
        waiters = self._inflight.get(server_name)
        if waiters is not None:
            d: Deferred[None] = Deferred()
            waiters.append(d)
            await d
        elif self._may_fetch(server_name):
            self._inflight[server_name] = []
            try:
                fetched = await self._fetch_direct(server_name)
                if fetched is not None:
                    await self._remember([fetched])
            finally:
                self._last_attempt_ms[server_name] = self._now_ms()
                for waiter in self._inflight.pop(server_name):
                    waiter.callback(None)
        else:
            return [stored.response] if stored is not None else []
        latest = await self._store.get_key_response(server_name)
        return [latest.response] if latest is not None else []

    # -- cache --------------------------------------------------------------

    def _may_fetch(self, server: str) -> bool:
        last = self._last_attempt_ms.get(server)
        return last is None or self._now_ms() - last >= REFETCH_MIN_INTERVAL_MS

    def _lookup(self, server: str, key_id: str) -> ServerVerifyKey | None:
        if server == self._server_name:
            return self._own.get(key_id)
        entry = self._cache.get(server, {}).get(key_id)
        return entry[0] if entry is not None else None

    def _missing(self, server: str, needs: Mapping[str, int]) -> dict[str, int]:
        missing = {}
        for key_id, min_valid in needs.items():
            key = self._lookup(server, key_id)
            if key is None or key.valid_until_ts < min_valid:
                missing[key_id] = min_valid
        return missing

    def _satisfied(self, server: str, needs: Mapping[str, int]) -> dict[str, ServerVerifyKey]:
        found = {}
        for key_id, min_valid in needs.items():
            key = self._lookup(server, key_id)
            if key is not None and key.valid_until_ts >= min_valid:
                found[key_id] = key
        return found

    async def _load_from_store(self, servers: list[str]) -> None:
        if not servers:
            return
        stored = await self._store.get_server_keys(servers)
        for server in servers:
            self._loaded.add(server)
            for entry in stored.get(server, {}).values():
                self._merge(entry.key, entry.response_valid_until_ts)

    def _merge(self, key: ServerVerifyKey, response_valid_until_ts: int) -> None:
        # Same rule as the store: information from a response at least as new wins.
        keys = self._cache.setdefault(key.server_name, {})
        current = keys.get(key.key_id)
        if current is None or response_valid_until_ts >= current[1]:
            keys[key.key_id] = (key, response_valid_until_ts)

    async def _remember(self, fetched: Sequence[FetchedKeyResponse]) -> None:
        for f in fetched:
            for key in f.keys:
                self._merge(key, f.valid_until_ts)
        await self._store.store_fetched(fetched)

    # -- fetching -----------------------------------------------------------

    async def _fetch(self, to_fetch: Mapping[str, Mapping[str, int]]) -> None:
        direct = await gatherResults(
            [Deferred.fromCoroutine(self._fetch_direct(server)) for server in to_fetch]
        )
        fetched = [f for f in direct if f is not None]
        if fetched:
            await self._remember(fetched)
        remaining = {s: m for s, needs in to_fetch.items() if (m := self._missing(s, needs))}
        for notary in self._notaries:
            if not remaining:
                break
            from_notary = await self._fetch_from_notary(notary, remaining)
            if from_notary:
                await self._remember(from_notary)
            remaining = {s: m for s, needs in remaining.items() if (m := self._missing(s, needs))}
        for server, missing in remaining.items():
            log.info(
                "could not find keys {key_ids} of {server}",
                key_ids=sorted(missing),
                server=server,
            )

    async def _fetch_direct(self, server: str) -> FetchedKeyResponse | None:
        try:
            response = await self._client.get_json(
                server,
                KEY_SERVER_PATH,
                timeout=KEY_REQUEST_TIMEOUT_SECONDS,
                max_size=MAX_DIRECT_RESPONSE_SIZE,
            )
        except RemoteError as e:
            log.info("cannot fetch keys of {server}: {error}", server=server, error=e.message)
            return None
        now = self._now_ms()
        try:
            if not isinstance(response, dict):
                raise KeyResponseError("not a JSON object")
            keys = _parse_keys(server, response, now)
        except KeyResponseError as e:
            log.warn("rejecting key response of {server}: {error}", server=server, error=str(e))
            return None
        log.debug("fetched keys {key_ids} of {server}", key_ids=sorted(keys), server=server)
        return FetchedKeyResponse(
            server, server, now, response["valid_until_ts"], tuple(keys.values()), response
        )

    async def _notary_key(self, notary: str, key_id: str) -> ServerVerifyKey | None:
        now = self._now_ms()
        key = self._lookup(notary, key_id)
        if key is not None and key.valid_until_ts >= now and not key.expired:
            return key
        # Directly from the notary: never through a notary, or a notary could
        # vouch for its own keys.
        fetched = await self._fetch_direct(notary)
        if fetched is None:
            return None
        await self._remember([fetched])
        key = self._lookup(notary, key_id)
        if key is not None and key.valid_until_ts >= now and not key.expired:
            return key
        return None

    async def _fetch_from_notary(
        self, notary: str, servers: Mapping[str, Mapping[str, int]]
    ) -> list[FetchedKeyResponse]:
        query = {
            server: {k: {"minimum_valid_until_ts": v} for k, v in needs.items()}
            for server, needs in servers.items()
        }
        try:
            answer = await self._client.post_json(
                notary,
                KEY_QUERY_PATH,
                {"server_keys": query},
                timeout=KEY_REQUEST_TIMEOUT_SECONDS,
                max_size=MAX_NOTARY_RESPONSE_SIZE,
            )
        except RemoteError as e:
            log.info("notary {notary} failed: {error}", notary=notary, error=e.message)
            return []
        responses = answer.get("server_keys") if isinstance(answer, dict) else None
        if not isinstance(responses, list):
            log.warn("notary {notary} sent no server_keys list", notary=notary)
            return []
        now = self._now_ms()
        fetched = []
        notary_keys: dict[str, ServerVerifyKey | None] = {}
        for response in responses:
            server = response.get("server_name") if isinstance(response, dict) else None
            if not isinstance(server, str) or server not in servers:
                continue
            try:
                keys = _parse_keys(server, response, now)
                await self._check_notary_signature(notary, response, notary_keys)
            except KeyResponseError as e:
                log.warn(
                    "rejecting {server}'s keys from notary {notary}: {error}",
                    server=server,
                    notary=notary,
                    error=str(e),
                )
                continue
            fetched.append(
                FetchedKeyResponse(
                    server, notary, now, response["valid_until_ts"], tuple(keys.values()), response
                )
            )
        log.info(
            "notary {notary} gave keys of {count} of {asked} servers",
            notary=notary,
            count=len(fetched),
            asked=len(servers),
        )
        return fetched

    async def _check_notary_signature(
        self,
        notary: str,
        response: Mapping[str, Any],
        notary_keys: dict[str, ServerVerifyKey | None],
    ) -> None:
        signatures = response.get("signatures")
        notary_sigs = signatures.get(notary) if isinstance(signatures, dict) else None
        if not isinstance(notary_sigs, dict) or not notary_sigs:
            raise KeyResponseError(f"not signed by the notary {notary}")
        for key_id in notary_sigs:
            if key_id not in notary_keys:
                notary_keys[key_id] = await self._notary_key(notary, key_id)
            key = notary_keys[key_id]
            if key is None:
                continue
            try:
                _verify(response, notary, key)
            except SignatureVerifyException:
                raise KeyResponseError(f"bad notary signature with {key_id}") from None
            return
        raise KeyResponseError(f"no verifiable key of the notary {notary}")
