"""Cheap synthetic events for store tests and benchmarks.

Events are unsigned and their IDs are synthetic (``$<n>:<server>``), passed
to the trusted ``Event(pdu, room_version, event_id)`` constructor: the store
does not check hashes or signatures, so the tests need not pay for them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from matrixfed.events.model import Event
from matrixfed.events.room_versions import get_room_version

_counter = itertools.count(1)


class RoomFactory:
    """Builds the events of one room; remembers depths and the last event."""

    def __init__(self, room_id: str = "!room:test", room_version: str = "10") -> None:
        self.room_id = room_id
        self.rv = get_room_version(room_version)
        self.depths: dict[str, int] = {}
        self.last: str | None = None
        self.state: dict[tuple[str, str], str] = {}

    def event(
        self,
        event_type: str,
        *,
        state_key: str | None = None,
        sender: str = "@alice:test",
        content: dict[str, Any] | None = None,
        prev: Iterable[str] | None = None,
        auth: Iterable[str] = (),
        depth: int | None = None,
        redacts: str | None = None,
        advance: bool = True,
    ) -> Event:
        """A new event; by default its prev_events is the last event built.

        Args:
            advance: make it the "last event" and, if a state event, update
                ``self.state`` (the expected linear state).
        """
        prev_ids = [self.last] if prev is None and self.last is not None else list(prev or ())
        if depth is None:
            depth = max((self.depths.get(p, 0) for p in prev_ids), default=0) + 1
        n = next(_counter)
        event_id = f"$e{n}:test"
        pdu: dict[str, Any] = {
            "type": event_type,
            "room_id": self.room_id,
            "sender": sender,
            "content": content if content is not None else {},
            "prev_events": prev_ids,
            "auth_events": list(auth),
            "depth": depth,
            "origin_server_ts": 1_700_000_000_000 + n,
            "hashes": {"sha256": "x"},
            "signatures": {},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            pdu["redacts"] = redacts
        ev = Event(pdu, self.rv, event_id)
        self.depths[event_id] = depth
        if advance:
            self.last = event_id
            if state_key is not None:
                self.state[(event_type, state_key)] = event_id
        return ev

    def member(self, user_id: str, membership: str = "join", **kw: Any) -> Event:
        return self.event(
            "m.room.member",
            state_key=user_id,
            sender=user_id,
            content={"membership": membership},
            **kw,
        )

    def create_room(self, creator: str = "@alice:test") -> list[Event]:
        """create, creator join, power levels, join rules: a linear chain."""
        create = self.event(
            "m.room.create", state_key="", sender=creator, content={"room_version": "10"}
        )
        join = self.member(creator, auth=[create.event_id])
        pl = self.event(
            "m.room.power_levels",
            state_key="",
            sender=creator,
            content={"users": {creator: 100}},
            auth=[create.event_id, join.event_id],
        )
        jr = self.event(
            "m.room.join_rules",
            state_key="",
            sender=creator,
            content={"join_rule": "public"},
            auth=[create.event_id, join.event_id, pl.event_id],
        )
        return [create, join, pl, jr]
