"""Test helpers: a fake keyring, a loopback HTTP listener and a raw HTTP client."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource

from matrixfed.errors import RemoteError
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.federation.server.resource import make_site
from matrixfed.federation.xmatrix import sign_request
from matrixfed.keys.signing_key import key_id, verify_key_base64


class FakeRemoteServer:
    """A remote server's identity: a name and a signing key."""

    def __init__(self, name: str, version: str = "k1") -> None:
        self.name = name
        self.key: SigningKey = generate_signing_key(version)
        self.key_id = key_id(self.key)

    def verify_key(self, valid_until_ts: int = 2**62, expired: bool = False) -> ServerVerifyKey:
        return ServerVerifyKey(
            server_name=self.name,
            key_id=self.key_id,
            verify_key=get_verify_key(self.key),
            valid_until_ts=valid_until_ts,
            expired=expired,
        )

    def key_response(self, valid_until_ts: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "server_name": self.name,
            "valid_until_ts": valid_until_ts,
            "verify_keys": {self.key_id: {"key": verify_key_base64(get_verify_key(self.key))}},
            "old_verify_keys": {},
        }
        return sign_json(body, self.name, self.key)

    def auth_header(self, destination: str, method: str, uri: str, content: Any = None) -> str:
        return sign_request(self.key, self.name, destination, method, uri, content)


class FakeKeyRing:
    """Implements the keyring interface from a dict; counts calls."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, ServerVerifyKey]] = {}
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self.unreachable: set[str] = set()
        self.get_keys_calls: list[tuple[str, frozenset[str], int]] = []
        self.response_calls: list[tuple[str, int]] = []

    def add(self, remote: FakeRemoteServer, **kwargs: Any) -> None:
        self.keys.setdefault(remote.name, {})[remote.key_id] = remote.verify_key(**kwargs)

    async def get_keys(
        self, server_name: str, key_ids: Collection[str], min_valid_until_ts: int
    ) -> dict[str, ServerVerifyKey]:
        self.get_keys_calls.append((server_name, frozenset(key_ids), min_valid_until_ts))
        if server_name in self.unreachable:
            raise RemoteError(server_name, "connection refused", reachable=False, transient=True)
        known = self.keys.get(server_name, {})
        return {k: known[k] for k in key_ids if k in known}

    async def get_server_key_responses(
        self, server_name: str, min_valid_until_ts: int
    ) -> list[dict[str, Any]]:
        self.response_calls.append((server_name, min_valid_until_ts))
        if server_name in self.unreachable:
            raise RemoteError(server_name, "connection refused", reachable=False, transient=True)
        return [
            r
            for r in self.responses.get(server_name, [])
            if r["valid_until_ts"] >= min_valid_until_ts
        ]


class _Bytes:
    """A minimal IBodyProducer for a fixed body."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return Deferred.fromCoroutine(_done())

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


async def _done() -> None:
    return None


class Listener:
    """A resource served over plain HTTP on 127.0.0.1 with an ephemeral port."""

    def __init__(self, resource: Resource, *, max_body_size: int = 1024 * 1024) -> None:
        self.resource = resource
        self.site = make_site(resource, max_body_size=max_body_size)
        self.port: IListeningPort | None = None

    async def start(self) -> None:
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.site)

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()

    @property
    def base(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def request(
        self,
        method: str,
        uri: str,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        headers: dict[str, list[str]] | None = None,
    ) -> tuple[int, Any]:
        """Send a request with the raw target ``uri``; returns (status, parsed JSON)."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
        agent = Agent(reactor)
        hdrs = Headers({k: v for k, v in (headers or {}).items()})
        producer: IBodyProducer | None = _Bytes(body) if body is not None else None  # type: ignore[assignment]
        resp = await agent.request(method.encode(), (self.base + uri).encode(), hdrs, producer)
        data = await readBody(resp)
        return resp.code, json.loads(data) if data else None
