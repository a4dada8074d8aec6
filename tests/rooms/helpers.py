"""Test doubles for the room engine: keys for any server, a scriptable remote.

``FakeKeyRing`` knows the deterministic key (tests/auth/roombuilder) of every
server name. ``FakeFederation`` answers the engine's outbound requests from
handlers a test registers per (method, path prefix), records every request,
and raises RemoteError(404) for anything unscripted. ``RecordingSender``
records what the engine fans out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.internet.task import Clock

from matrixfed.errors import RemoteError
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.events.model import Event
from matrixfed.rooms.engine import RoomEngine
from matrixfed.rooms.notifier import Notifier
from matrixfed.storage.store import Store
from tests.auth.roombuilder import signing_key_for

LOCAL = "a.example"
ALICE = "@alice:a.example"
BOB = "@bob:b.example"
CAROL = "@carol:c.example"

KEY_VALID_UNTIL = 2**53 - 1


class FakeKeyRing:
    def __init__(self, unknown: Collection[str] = ()) -> None:
        self.unknown = set(unknown)
        self.requests: list[Mapping[str, Mapping[str, int]]] = []

    async def get_keys_batch(
        self, requests: Mapping[str, Mapping[str, int]]
    ) -> dict[str, dict[str, Any]]:
        self.requests.append(requests)
        out: dict[str, dict[str, Any]] = {}
        for server, key_ids in requests.items():
            out[server] = {}
            if server in self.unknown:
                continue
            key = signing_key_for(server)
            for key_id in key_ids:
                if key_id == "ed25519:k1":
                    out[server][key_id] = ServerVerifyKey(
                        server, key_id, key.verify_key, KEY_VALID_UNTIL
                    )
        return out


Handler = Callable[[str, str, Any, Any], Any]


class FakeFederation:
    def __init__(self) -> None:
        self.handlers: list[tuple[str, str, Handler]] = []
        self.requests: list[tuple[str, str, str, Any, Any]] = []

    def on(self, method: str, prefix: str, handler: Handler) -> None:
        self.handlers.append((method, prefix, handler))

    async def _call(self, method: str, destination: str, path: str, data: Any, args: Any) -> Any:
        self.requests.append((method, destination, path, data, args))
        for m, prefix, handler in self.handlers:
            if m == method and path.startswith(prefix):
                return handler(destination, path, data, args)
        raise RemoteError(
            destination,
            f"unscripted {method} {path}",
            reachable=True,
            transient=False,
            code=404,
            errcode="M_UNRECOGNIZED",
        )

    def paths(self, method: str) -> list[str]:
        return [p for m, _d, p, _b, _a in self.requests if m == method]

    async def get_json(
        self, destination: str, path: str, args: Any = None, *, timeout: float | None = None
    ) -> Any:
        return await self._call("GET", destination, path, None, args)

    async def post_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: Any = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        return await self._call("POST", destination, path, data, args)

    async def put_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: Any = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        return await self._call("PUT", destination, path, data, args)


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[tuple[Event, list[str]]] = []

    async def send_pdu(self, event: Event, destinations: Collection[str]) -> None:
        self.sent.append((event, sorted(destinations)))


def make_engine(
    store: Store,
    *,
    federation: FakeFederation | None = None,
    keyring: FakeKeyRing | None = None,
    clock: Clock | None = None,
    sender: RecordingSender | None = None,
) -> RoomEngine:
    clock = clock or Clock()
    if clock.seconds() == 0:
        clock.advance(1_700_000_000)
    return RoomEngine(
        store=store,
        clock=clock,
        server_name=LOCAL,
        signing_key=signing_key_for(LOCAL),
        keyring=keyring or FakeKeyRing(),
        federation_client=federation or FakeFederation(),
        notifier=Notifier(clock=clock, store=store),
        sender=sender,
    )
