"""Harness for the resident endpoint tests: a real store and room engine on
SQLite, our server ``a.example``, remote servers signing with deterministic
keys (tests/auth/roombuilder) that a fake keyring knows, and helpers to build
handler requests and remote membership events from templates.

``check_schema`` checks a JSON value against the parts of an OpenAPI schema
from the spec (``required``, ``type``, nested ``properties``/``items``,
``allOf``) that a response shape is judged on.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import yaml
from nacl.signing import SigningKey
from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.events.hashing import compute_event_id
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.events.model import Event
from matrixfed.events.room_versions import EventFormat, RoomVersion, get_room_version
from matrixfed.events.signing import sign_event
from matrixfed.federation.server.endpoint import ApiRequest
from matrixfed.rooms.engine import RoomEngine
from matrixfed.rooms.notifier import Notifier
from matrixfed.storage.store import Store
from tests.auth.roombuilder import signing_key_for
from tests.storage.harness import SqliteMixin

OURS = "a.example"
ALICE = "@alice:a.example"
DAVE = "@dave:a.example"
REMOTE = "b.example"
BOB = "@bob:b.example"
THIRD = "c.example"
CAROL = "@carol:c.example"
KEY_VALID_UNTIL = 2**53 - 1

SPEC_API = "/work/shared/spec/data/api/server-server"


class KeyRing:
    """Knows the deterministic ``ed25519:k1`` key of every server not in ``unknown``."""

    def __init__(self, unknown: Collection[str] = ()) -> None:
        self.unknown = set(unknown)

    async def get_keys_batch(
        self, requests: Mapping[str, Mapping[str, int]]
    ) -> dict[str, dict[str, Any]]:
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


class Sender:
    """Records what the engine fans out."""

    def __init__(self) -> None:
        self.sent: list[tuple[Event, list[str]]] = []

    async def send_pdu(self, event: Event, destinations: Collection[str]) -> None:
        self.sent.append((event, sorted(destinations)))


class NoFederation:
    """The engine's outbound client; these tests never need it."""

    async def get_json(self, destination: str, path: str, args: Any = None, **kw: Any) -> Any:
        raise AssertionError(f"unexpected GET {destination}{path}")

    async def post_json(
        self, destination: str, path: str, data: Any, args: Any = None, **kw: Any
    ) -> Any:
        raise AssertionError(f"unexpected POST {destination}{path}")

    async def put_json(
        self, destination: str, path: str, data: Any, args: Any = None, **kw: Any
    ) -> Any:
        raise AssertionError(f"unexpected PUT {destination}{path}")


def request(
    method: str,
    path: str,
    path_params: Mapping[str, str],
    *,
    origin: str | None = REMOTE,
    query: Mapping[str, Sequence[str]] | None = None,
    content: Any = None,
) -> ApiRequest:
    """An ApiRequest as the resource would hand it to a handler."""
    raw = path
    for name, value in path_params.items():
        raw = raw.replace("{" + name + "}", quote(value, safe=""))
    return ApiRequest(
        method=method,
        uri=raw,
        path=raw,
        origin=origin,
        path_params=dict(path_params),
        query={k: list(v) for k, v in (query or {}).items()},
        content=content,
    )


def sign_as(
    pdu: dict[str, Any], rv: RoomVersion, server: str, key: SigningKey | None = None
) -> dict[str, Any]:
    """Fill a template the way a joining server does and sign it as ``server``."""
    pdu = dict(pdu)
    pdu["origin"] = server
    if rv.event_format is EventFormat.V1:
        pdu["event_id"] = f"$ev{abs(hash(repr(sorted(pdu.items())))) % 10**9}:{server}"
    sign_event(pdu, rv, server, key or signing_key_for(server))
    return pdu


def event_id_of(pdu: dict[str, Any], rv: RoomVersion) -> str:
    return str(pdu["event_id"]) if rv.event_format is EventFormat.V1 else compute_event_id(pdu, rv)


class ResidentMixin(SqliteMixin):
    """Builds a store, an engine and rooms; tests call handlers directly."""

    store: Store
    engine: RoomEngine
    sender: Sender
    keyring: KeyRing
    clock: Clock

    async def make_engine(self) -> RoomEngine:
        self.store = await self.make_store()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.sender = Sender()
        self.keyring = KeyRing()
        self.engine = RoomEngine(
            store=self.store,
            clock=self.clock,
            server_name=OURS,
            signing_key=signing_key_for(OURS),
            keyring=self.keyring,
            federation_client=NoFederation(),
            notifier=Notifier(clock=self.clock, store=self.store),
            sender=self.sender,
        )
        return self.engine

    async def room(self, version: str = "10", preset: str = "public_chat", **kw: Any) -> str:
        # v12 room IDs hash the create event: two rooms created in the same
        # millisecond by the same user would be the same room.
        self.clock.advance(0.01)
        return await self.engine.create_room(ALICE, room_version=version, preset=preset, **kw)

    async def stored_count(self) -> int:
        def txn(t: Any) -> int:
            t.execute("SELECT COUNT(*) FROM events")
            return int(t.fetchone()[0])

        return await self.store.db.run_interaction("count", txn)

    async def assert_error(self, coro: Any, code: int, errcode: str) -> Any:
        from matrixfed.errors import MatrixError

        case: unittest.TestCase = self  # type: ignore[assignment]
        try:
            await coro
        except MatrixError as e:
            case.assertEqual((e.code, e.errcode), (code, errcode), e.message)
            return e
        case.fail(f"expected {code} {errcode}")


def rv_of(version: str) -> RoomVersion:
    return get_room_version(version)


# --- OpenAPI shape checks -----------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
}


def load_response_schema(file: str, path: str, method: str, status: str = "200") -> Any:
    with open(os.path.join(SPEC_API, file)) as f:
        api = yaml.safe_load(f)
    op = api["paths"][path][method]
    return op["responses"][status]["content"]["application/json"]["schema"]


def load_request_schema(file: str, path: str, method: str) -> Any:
    with open(os.path.join(SPEC_API, file)) as f:
        api = yaml.safe_load(f)
    return api["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def check_schema(value: Any, schema: Any, where: str = "$") -> list[str]:
    """Problems of ``value`` against ``schema`` (the subset described above)."""
    problems: list[str] = []
    if not isinstance(schema, dict) or "$ref" in schema:
        return problems
    for sub in schema.get("allOf", []):
        problems += check_schema(value, sub, where)
    typ = schema.get("type")
    if isinstance(typ, str) and typ in _TYPES:
        ok = isinstance(value, _TYPES[typ]) and not (typ == "integer" and isinstance(value, bool))
        if not ok:
            return [f"{where}: expected {typ}, got {type(value).__name__}"]
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{where}: missing {name}")
        for name, sub in (schema.get("properties") or {}).items():
            if name in value and value[name] is not None:
                problems += check_schema(value[name], sub, f"{where}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        if "anyOf" not in items:
            for i, item in enumerate(value):
                problems += check_schema(item, items, f"{where}[{i}]")
    return problems
