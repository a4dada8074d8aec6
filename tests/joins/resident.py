"""Library-level doubles for join tests: a scripted resident, a keyring, an engine.

``FakeResidents`` implements ``JoinFederationClient`` for any number of
resident servers sharing one ``RoomBuilder`` room, answering make_join,
send_join, make_leave, send_leave, /state_ids, /state and /event the way a
homeserver does (templates from the room's state, the state before the join
and its auth chain). Each server can be scripted to misbehave: raise a
``RemoteError`` (timeout, 403...), answer garbage, answer a template for
another room or user, or tamper with the send_join answer.

``FakeKeyring`` answers ``get_keys_batch`` with the deterministic keys of
``signing_key_for`` and records every batch. ``FakeEngine`` records local
membership events and provides the room lock and notifier.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from signedjson.key import get_verify_key
from twisted.internet.defer import DeferredLock

from matrixfed.auth.selection import select_auth_event_ids
from matrixfed.errors import RemoteError
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.events.model import Event
from matrixfed.events.room_versions import EventFormat
from tests.auth.roombuilder import RoomBuilder, domain, signing_key_for
from tests.harness.fakeremote import sign_pdu_as

RESIDENT = "resident.example"
OURS = "ours.example"
CREATOR = f"@alice:{RESIDENT}"

Tamper = Callable[[dict[str, Any]], None]


class FakeKeyring:
    """Keys of every server from ``signing_key_for``; records each batch."""

    def __init__(self) -> None:
        self.batches: list[dict[str, dict[str, int]]] = []
        self.unknown: set[str] = set()

    async def get_keys_batch(
        self, requests: Mapping[str, Mapping[str, int]]
    ) -> dict[str, dict[str, ServerVerifyKey]]:
        self.batches.append({s: dict(k) for s, k in requests.items()})
        out: dict[str, dict[str, ServerVerifyKey]] = {}
        for server, key_ids in requests.items():
            out[server] = {}
            if server in self.unknown:
                continue
            key = signing_key_for(server)
            key_id = f"ed25519:{key.version}"  # type: ignore[attr-defined]
            if key_id in key_ids:
                out[server][key_id] = ServerVerifyKey(server, key_id, get_verify_key(key), 2**62)
        return out


class FakeNotifier:
    def __init__(self) -> None:
        self.rooms: list[tuple[str, int]] = []
        self.users: list[tuple[str, int]] = []

    def on_new_events(self, room_id: str, max_stream_ordering: int) -> None:
        self.rooms.append((room_id, max_stream_ordering))

    def on_user_event(self, user_id: str, ordering: int) -> None:
        self.users.append((user_id, ordering))


class FakeEngine:
    """Records local appends (returns a signed event; stores nothing)."""

    def __init__(self, room: RoomBuilder | None = None) -> None:
        self.sent: list[tuple[str, str, str, str]] = []
        self._locks: dict[str, DeferredLock] = {}
        self._notifier = FakeNotifier()
        self.room = room

    @property
    def notifier(self) -> FakeNotifier:
        return self._notifier

    def room_lock(self, room_id: str) -> DeferredLock:
        return self._locks.setdefault(room_id, DeferredLock())

    async def send_event(
        self,
        room_id: str,
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        redacts: str | None = None,
    ) -> Event:
        self.sent.append((room_id, type, sender, content["membership"]))
        assert self.room is not None
        return self.room.make(type, sender, content, state_key)


class FakeResidents:
    """Resident servers of one room (see the module docstring)."""

    def __init__(self, room: RoomBuilder, servers: Sequence[str] = (RESIDENT,)) -> None:
        self.room = room
        self.servers = set(servers)
        self.calls: list[tuple[str, str]] = []
        # server -> what to do instead of answering, per call name.
        self.errors: dict[tuple[str, str], Exception] = {}
        self.garbage: dict[tuple[str, str], Any] = {}
        self.template_overrides: dict[str, dict[str, Any]] = {}
        self.tamper: dict[str, Tamper] = {}
        self.countersign: bool = False
        self.join_content: dict[str, Any] = {}
        self.omit_members_supported = True
        self.accepted_joins: list[Event] = []
        # The state send_join answered (before the join), by event ID.
        self.state_before_join: dict[str, dict[tuple[str, str], str]] = {}

    # --- helpers -----------------------------------------------------------

    def _enter(self, server: str, name: str) -> Any:
        self.calls.append((server, name))
        error = self.errors.get((server, name))
        if error is not None:
            raise error
        if server not in self.servers:
            raise RemoteError(server, "cannot connect", reachable=False, transient=True)
        return self.garbage.get((server, name))

    def auth_chain(self, event_ids: Sequence[str], extra: Sequence[str] = ()) -> list[Event]:
        """The auth chains of ``event_ids``, plus the events ``extra`` and their chains."""
        seen: dict[str, Event] = {e: self.room.events[e] for e in extra}
        todo = [*event_ids, *extra]
        while todo:
            eid = todo.pop()
            for aid in self.room.events[eid].auth_event_ids:
                if aid not in seen:
                    seen[aid] = self.room.events[aid]
                    todo.append(aid)
        return sorted(seen.values(), key=lambda e: e.depth)

    def _template(self, user_id: str, membership: str) -> dict[str, Any]:
        room = self.room
        rv = room.rv
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            content.update(self.join_content)
        auth = select_auth_event_ids(
            rv,
            "m.room.member",
            user_id,
            user_id,
            content,
            {k: ev.event_id for k, ev in room.state.items()},
        )
        assert room.last is not None
        pdu: dict[str, Any] = {
            "type": "m.room.member",
            "room_id": room.room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": content,
            "depth": room.last.depth + 1,
            "prev_events": room._refs([room.last.event_id]),
            "auth_events": room._refs(auth),
            "origin_server_ts": 1_700_000_000_000,
        }
        if not rv.v11_top_level_keys:
            pdu["origin"] = RESIDENT
        return pdu

    # --- JoinFederationClient ------------------------------------------------

    async def query_directory(self, server: str, room_alias: str) -> tuple[str, list[str]]:
        self._enter(server, "query_directory")
        assert self.room.room_id is not None
        return self.room.room_id, sorted(self.servers)

    async def make_join(
        self, server: str, room_id: str, user_id: str, versions: Sequence[str]
    ) -> Mapping[str, Any]:
        garbage = self._enter(server, "make_join")
        if garbage is not None:
            return garbage  # type: ignore[no-any-return]
        if self.room.rv.identifier not in versions:
            raise RemoteError(
                server,
                "incompatible",
                reachable=True,
                transient=False,
                code=400,
                errcode="M_INCOMPATIBLE_ROOM_VERSION",
            )
        template = self._template(user_id, "join")
        template.update(self.template_overrides.get(server, {}))
        return {"room_version": self.room.rv.identifier, "event": template}

    async def send_join(
        self,
        server: str,
        room_id: str,
        event_id: str,
        pdu: Mapping[str, Any],
        *,
        omit_members: bool,
    ) -> Mapping[str, Any]:
        garbage = self._enter(server, "send_join")
        if garbage is not None:
            return garbage  # type: ignore[no-any-return]
        room = self.room
        pdu = copy.deepcopy(dict(pdu))
        if self.countersign:
            signed = sign_pdu_as(copy.deepcopy(pdu), room.rv, server)
            pdu["signatures"][server] = signed.pdu["signatures"][server]
        join = Event(pdu, room.rv, event_id if room.rv.event_format is EventFormat.V1 else None)
        assert join.event_id == event_id, (join.event_id, event_id)
        if event_id in self.state_before_join:
            # A repeated send_join: answer with the state before the join again.
            ids = self.state_before_join[event_id]
            state_before = {k: room.events[e] for k, e in ids.items()}
        else:
            state_before = dict(room.state)
            self.state_before_join[event_id] = {k: e.event_id for k, e in state_before.items()}
        partial = omit_members and self.omit_members_supported
        state = [e for k, e in state_before.items() if not (partial and k[0] == "m.room.member")]
        chain = self.auth_chain([e.event_id for e in state], extra=join.auth_event_ids)
        body: dict[str, Any] = {
            "origin": server,
            "state": [copy.deepcopy(e.pdu) for e in state],
            "auth_chain": [copy.deepcopy(e.pdu) for e in chain],
            "event": copy.deepcopy(pdu),
        }
        if partial:
            body["members_omitted"] = True
            body["servers_in_room"] = sorted(self.servers)
        tamper = self.tamper.get(server)
        if tamper is not None:
            tamper(body)
        if join.event_id not in room.events:
            room.apply(join)
        self.accepted_joins.append(join)
        return body

    async def make_leave(self, server: str, room_id: str, user_id: str) -> Mapping[str, Any]:
        self._enter(server, "make_leave")
        return {"room_version": self.room.rv.identifier, "event": self._template(user_id, "leave")}

    async def send_leave(
        self, server: str, room_id: str, event_id: str, pdu: Mapping[str, Any]
    ) -> None:
        self._enter(server, "send_leave")
        room = self.room
        ev = Event(dict(pdu), room.rv, event_id if room.rv.event_format is EventFormat.V1 else None)
        assert ev.event_id == event_id
        room.apply(ev)

    async def get_state_ids(self, server: str, room_id: str, event_id: str) -> Mapping[str, Any]:
        self._enter(server, "state_ids")
        state = self.state_before_join[event_id]
        chain = self.auth_chain(list(state.values()))
        return {"pdu_ids": list(state.values()), "auth_chain_ids": [e.event_id for e in chain]}

    async def get_state(self, server: str, room_id: str, event_id: str) -> Mapping[str, Any]:
        self._enter(server, "state")
        state = self.state_before_join[event_id]
        chain = self.auth_chain(list(state.values()))
        return {
            "pdus": [copy.deepcopy(self.room.events[e].pdu) for e in state.values()],
            "auth_chain": [copy.deepcopy(e.pdu) for e in chain],
        }

    async def get_event(self, server: str, event_id: str) -> Mapping[str, Any]:
        self._enter(server, "event")
        return copy.deepcopy(self.room.events[event_id].pdu)


def build_room(version: str, members: int = 3, *, join_rule: str = "public") -> RoomBuilder:
    """A standard room on RESIDENT with ``members`` extra joined users on two servers."""
    room = RoomBuilder(version)
    room.standard_room(CREATOR, join_rule=join_rule)
    for i in range(members):
        server = RESIDENT if i % 2 == 0 else "other.example"
        room.member(f"@m{i}:{server}", "join")
    return room


def our_key() -> Any:
    return signing_key_for(OURS)


def user(localpart: str) -> str:
    return f"@{localpart}:{OURS}"


__all__ = [
    "CREATOR",
    "OURS",
    "RESIDENT",
    "FakeEngine",
    "FakeKeyring",
    "FakeResidents",
    "build_room",
    "domain",
    "our_key",
    "user",
]
