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


def sign_as(pdu: dict[str, Any], rv: Any, server: str) -> Event:
    """Hash and sign ``pdu`` as ``server`` (v1/v2: a fresh event ID of that server)."""
    from matrixfed.events.room_versions import EventFormat
    from matrixfed.events.signing import sign_event
    from matrixfed.rooms.builder import new_v1_event_id

    event_id = None
    if rv.event_format is EventFormat.V1:
        event_id = pdu.setdefault("event_id", new_v1_event_id(server))
    pdu.pop("signatures", None)
    sign_event(pdu, rv, server, signing_key_for(server))
    return Event(pdu, rv, event_id)


async def remote_event(
    engine: RoomEngine,
    room_id: str,
    *,
    type: str,
    sender: str,
    content: Mapping[str, Any],
    state_key: str | None = None,
    prev_events: list[Event] | None = None,
    auth_state: Mapping[tuple[str, str], str] | None = None,
    ts_offset: int = 0,
    known: list[Event] = (),  # type: ignore[assignment]
) -> Event:
    """An event of a remote sender built the way its server would build it.

    By default on our current state and forward extremities; ``prev_events``
    and ``auth_state`` build it elsewhere in the DAG.
    """
    from matrixfed.auth.selection import select_auth_event_ids
    from matrixfed.rooms.builder import pdu_template

    rv = await engine.room_version_of(room_id)
    server = sender.split(":", 1)[1]
    state = dict(
        auth_state if auth_state is not None else await engine.store.get_current_state_ids(room_id)
    )
    if prev_events is None:
        ids = await engine.store.get_forward_extremities(room_id)
        prev_events = list((await engine.store.get_events(ids)).values())
    auth_ids = select_auth_event_ids(rv, type, sender, state_key, content, state)
    auth = await engine.store.get_events(auth_ids)
    auth.update({e.event_id: e for e in known})
    pdu = pdu_template(
        rv,
        room_id=room_id,
        event_type=type,
        sender=sender,
        content=content,
        state_key=state_key,
        redacts=None,
        prev_events=prev_events,
        auth_events=[auth[a] for a in auth_ids],
        origin=server,
        origin_server_ts=engine.now_ms() + ts_offset,
    )
    return sign_as(pdu, rv, server)
