"""The immutable Event model.

An ``Event`` wraps the PDU JSON exactly as received (or as built and signed
locally) together with its room version and event ID. Accessors read the PDU
on demand, so an event costs one dict plus a few slots: a 50,000-event join
keeps no second copy of anything.

Construct events from untrusted JSON with ``Event.from_pdu`` (validates the
format for the room version, computes the event ID). ``Event(...)`` trusts its
input and is for data that was validated before (the store, local building).

Treat ``event.pdu`` as read-only; use ``event.pdu_copy()`` to get a mutable copy.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from matrixfed.events.hashing import compute_event_id, room_id_from_create_event_id
from matrixfed.events.room_versions import EventFormat, RoomVersion


class Event:
    __slots__ = ("pdu", "room_version", "event_id")

    pdu: dict[str, Any]
    room_version: RoomVersion
    event_id: str

    def __init__(
        self,
        pdu: dict[str, Any],
        room_version: RoomVersion,
        event_id: str | None = None,
    ) -> None:
        object.__setattr__(self, "pdu", pdu)
        object.__setattr__(self, "room_version", room_version)
        if event_id is None:
            event_id = compute_event_id(pdu, room_version)
        object.__setattr__(self, "event_id", event_id)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Event is immutable")

    @classmethod
    def from_pdu(
        cls,
        pdu: Any,
        room_version: RoomVersion,
        *,
        backfilled: bool = False,
    ) -> Event:
        """Validate ``pdu`` for ``room_version`` and build the Event.

        Args:
            pdu: JSON as received.
            room_version: the room's version.
            backfilled: the event came from backfill/state (the prev_events
                and auth_events count limits do not apply).

        Raises:
            matrixfed.errors.InvalidEventError: the PDU is malformed.
        """
        from matrixfed.events.validation import validate_pdu

        validate_pdu(pdu, room_version, backfilled=backfilled)
        return cls(pdu, room_version)

    # --- fields -------------------------------------------------------

    @property
    def type(self) -> str:
        return self.pdu["type"]  # type: ignore[no-any-return]

    @property
    def sender(self) -> str:
        return self.pdu["sender"]  # type: ignore[no-any-return]

    @property
    def room_id(self) -> str:
        room_id: Any = self.pdu.get("room_id")
        if room_id is None and self.room_version.room_id_from_create:
            # v12 create events carry no room_id: it is derived from their ID.
            return room_id_from_create_event_id(self.event_id)
        return room_id  # type: ignore[no-any-return]

    @property
    def state_key(self) -> str | None:
        return self.pdu.get("state_key")

    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def state_tuple(self) -> tuple[str, str]:
        """(type, state_key); only meaningful for state events."""
        return (self.pdu["type"], self.pdu["state_key"])

    @property
    def content(self) -> Mapping[str, Any]:
        content = self.pdu.get("content")
        return content if isinstance(content, dict) else {}

    @property
    def membership(self) -> str | None:
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    @property
    def depth(self) -> int:
        return int(self.pdu.get("depth", 0))

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu.get("origin_server_ts", 0))

    @property
    def redacts(self) -> str | None:
        if self.room_version.v11_top_level_keys:
            r = self.content.get("redacts")
        else:
            r = self.pdu.get("redacts")
        return r if isinstance(r, str) else None

    @property
    def origin(self) -> str | None:
        o = self.pdu.get("origin")
        return o if isinstance(o, str) else None

    @property
    def prev_event_ids(self) -> tuple[str, ...]:
        return _refs(self.pdu.get("prev_events", ()), self.room_version)

    @property
    def auth_event_ids(self) -> tuple[str, ...]:
        return _refs(self.pdu.get("auth_events", ()), self.room_version)

    @property
    def signatures(self) -> Mapping[str, Mapping[str, str]]:
        s = self.pdu.get("signatures")
        return s if isinstance(s, dict) else {}

    @property
    def hashes(self) -> Mapping[str, str]:
        h = self.pdu.get("hashes")
        return h if isinstance(h, dict) else {}

    @property
    def unsigned(self) -> Mapping[str, Any]:
        u = self.pdu.get("unsigned")
        return u if isinstance(u, dict) else {}

    # --- helpers ------------------------------------------------------

    def pdu_copy(self) -> dict[str, Any]:
        return copy.deepcopy(self.pdu)

    def get_pdu_json(self) -> dict[str, Any]:
        """The PDU as sent over federation (for v1/v2, includes event_id)."""
        return self.pdu

    def sender_domain(self) -> str:
        return self.sender.split(":", 1)[1]

    def __repr__(self) -> str:
        sk = self.state_key
        return f"<Event {self.event_id} {self.type}{'' if sk is None else ' ' + repr(sk)}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)


def _refs(value: Any, room_version: RoomVersion) -> tuple[str, ...]:
    if room_version.event_format is EventFormat.V1:
        # [[event_id, {"sha256": ...}], ...]; Synapse sometimes sends {} as hashes.
        return tuple(item[0] for item in value)
    return tuple(value)
