"""Build named room DAGs with realistic events, for state resolution tests.

``RoomDag`` makes events the way a homeserver would: ``prev_events`` name the
events they follow (the last one by default), the state before an event is the
state after its single prev event or, for a merge, the resolution of the
states after each prev event (with matrixfed's own ``resolve_state``), and
``auth_events`` are picked by the spec's auth events selection from that state
(or given explicitly, to build a dodgy event on purpose). ``origin_server_ts``
grows by one per event, so "sent later" is unambiguous in every scenario.

Events are named by labels ("PA", "T1", ...); in room versions 1 and 2 the
label is in the event ID ("$PA:example.com"), from v3 the ID is the reference
hash and ``dag.id("PA")`` / ``dag.names(state)`` translate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from matrixfed.auth.selection import select_auth_event_ids
from matrixfed.events.hashing import add_content_hash, room_id_from_create_event_id
from matrixfed.events.model import Event
from matrixfed.events.room_versions import EventFormat, RoomVersion, get_room_version
from matrixfed.state.resolve import resolve_state

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.com"
DAVE = "@dave:example.org"
EVELYN = "@evelyn:example.org"
ZARA = "@zara:example.org"

StateKey = tuple[str, str]

# Versions the v2 scenarios run in: v1-style IDs, hash IDs, v11 (implicit
# creator), v12 (v2.1 algorithm, creators with infinite power).
V2_SCENARIO_VERSIONS = ("2", "4", "10", "11", "12")


class RoomDag:
    """A room's event DAG under construction.

    Args:
        version: the room version identifier.
    """

    def __init__(self, version: str) -> None:
        self.rv: RoomVersion = get_room_version(version)
        self.events: dict[str, Event] = {}
        self.ids: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self.room_id = "!room:example.com"
        self.last: str | None = None
        self._ts = 0

    # --- lookups ----------------------------------------------------------

    def id(self, label: str) -> str:
        return self.ids[label]

    def event(self, label: str) -> Event:
        return self.events[self.ids[label]]

    def state(self, label: str) -> dict[StateKey, str]:
        """The state after the event ``label``."""
        return self.state_after[self.ids[label]]

    def names(self, state: Mapping[StateKey, str]) -> dict[StateKey, str]:
        """``state`` with event IDs replaced by their labels."""
        return {key: self.labels.get(event_id, event_id) for key, event_id in state.items()}

    def resolve(self, *tips: str) -> dict[StateKey, str]:
        """Resolve the states after the events ``tips``; the result by labels."""
        resolved = resolve_state(self.rv, [self.state(t) for t in tips], self.events)
        return self.names(resolved)

    # --- building ---------------------------------------------------------

    def add(
        self,
        label: str,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        *,
        prev: str | Sequence[str] | None = None,
        auth: Iterable[str] | None = None,
        state_before: Mapping[StateKey, str] | None = None,
        record_state: bool = True,
    ) -> Event:
        """Add an event.

        Args:
            label: the event's name in the test.
            event_type, sender, content, state_key: the event.
            prev: label(s) of the prev events; default the last added event.
            auth: labels of the auth events; default the auth events
                selection over the state before the event.
            state_before: override the state before the event (by event ID).
            record_state: keep the state after the event (big rooms built
                in bulk keep their own state map instead).
        """
        if prev is None:
            prev_labels: list[str] = [] if self.last is None else [self.labels[self.last]]
        elif isinstance(prev, str):
            prev_labels = [prev]
        else:
            prev_labels = list(prev)
        prev_ids = [self.ids[p] for p in prev_labels]
        if state_before is None:
            state_before = self._state_before(prev_ids)
        if auth is None:
            auth_ids = select_auth_event_ids(
                self.rv, event_type, sender, state_key, content, state_before
            )
        else:
            auth_ids = [self.ids[a] for a in auth]
        self._ts += 1
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content),
            "depth": 1 + max((self.events[p].depth for p in prev_ids), default=0),
            "origin_server_ts": self._ts,
            "prev_events": self._refs(prev_ids),
            "auth_events": self._refs(auth_ids),
            "room_id": self.room_id,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if not self.rv.v11_top_level_keys:
            pdu["origin"] = sender.split(":", 1)[1]
        is_create = event_type == "m.room.create"
        if is_create and self.rv.room_id_from_create:
            del pdu["room_id"]
        event_id = None
        if self.rv.event_format is EventFormat.V1:
            event_id = f"${label}:example.com"
            pdu["event_id"] = event_id
        add_content_hash(pdu)
        pdu["signatures"] = {}
        event = Event(pdu, self.rv, event_id)
        if is_create and self.rv.room_id_from_create:
            self.room_id = room_id_from_create_event_id(event.event_id)
        if label in self.ids:
            raise ValueError(f"label {label} used twice")
        self.ids[label] = event.event_id
        self.labels[event.event_id] = label
        self.events[event.event_id] = event
        if record_state:
            after = dict(state_before)
            if state_key is not None:
                after[(event_type, state_key)] = event.event_id
            self.state_after[event.event_id] = after
        self.last = event.event_id
        return event

    def _state_before(self, prev_ids: Sequence[str]) -> dict[StateKey, str]:
        if not prev_ids:
            return {}
        if len(prev_ids) == 1:
            return dict(self.state_after[prev_ids[0]])
        return resolve_state(self.rv, [self.state_after[p] for p in prev_ids], self.events)

    def _refs(self, ids: Sequence[str]) -> list[Any]:
        if self.rv.event_format is EventFormat.V1:
            return [[i, {"sha256": "aGFzaA"}] for i in ids]
        return list(ids)

    # --- event shapes -----------------------------------------------------

    def create(self, label: str = "CREATE", sender: str = ALICE, **kw: Any) -> Event:
        content: dict[str, Any] = {"room_version": self.rv.identifier}
        if not self.rv.msc2175_implicit_room_creator:
            content["creator"] = sender
        return self.add(label, "m.room.create", sender, content, "", **kw)

    def member(
        self, label: str, sender: str, membership: str, target: str | None = None, **kw: Any
    ) -> Event:
        target = sender if target is None else target
        return self.add(label, "m.room.member", sender, {"membership": membership}, target, **kw)

    def power(self, label: str, sender: str, users: Mapping[str, int], **kw: Any) -> Event:
        """A power levels event; creators are left out of ``users`` in v12."""
        content: dict[str, Any] = dict(kw.pop("extra", {}))
        content["users"] = self.users(users)
        return self.add(label, "m.room.power_levels", sender, content, "", **kw)

    def users(self, users: Mapping[str, int]) -> dict[str, int]:
        if not self.rv.privileged_creators:
            return dict(users)
        create = next(e for e in self.events.values() if e.type == "m.room.create")
        return {u: level for u, level in users.items() if u != create.sender}

    def join_rules(self, label: str, sender: str, rule: str, **kw: Any) -> Event:
        return self.add(label, "m.room.join_rules", sender, {"join_rule": rule}, "", **kw)

    def topic(self, label: str, sender: str, **kw: Any) -> Event:
        return self.add(label, "m.room.topic", sender, {"topic": label}, "", **kw)

    def message(self, label: str, sender: str, **kw: Any) -> Event:
        return self.add(label, "m.room.message", sender, {"body": label}, None, **kw)


def initial_room(version: str) -> RoomDag:
    """Alice's public room with Bob, Charlie and Zara joined; Alice has 100.

    Labels: CREATE, IMA, IPOWER, IJR, IMB, IMC, IMZ, START (a message).
    """
    dag = RoomDag(version)
    dag.create()
    dag.member("IMA", ALICE, "join")
    dag.power("IPOWER", ALICE, {ALICE: 100})
    dag.join_rules("IJR", ALICE, "public")
    dag.member("IMB", BOB, "join")
    dag.member("IMC", CHARLIE, "join")
    dag.member("IMZ", ZARA, "join")
    dag.message("START", ZARA)
    return dag
