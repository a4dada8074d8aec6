"""The auth DAG seen by one state resolution, and the set algebra on it.

``AuthGraph`` wraps the caller's ``event_map`` for the lifetime of one
resolution. It parses each event's ``auth_events`` once and memoises the
result; every walk over the graph is iterative (auth chains of big rooms are
thousands of events deep) and guarded by a visited set, so a malformed graph
with a cycle (possible in v1/v2 rooms, whose event IDs are not hashes) ends
instead of looping.

Guarantees:
- An event ID missing from ``event_map`` is a leaf: it can appear in a
  computed auth chain (its ID is known from a reference) but has no auth
  events of its own. Nothing here raises for a missing event.
- In room version 12 the create event is never listed in ``auth_events``;
  the graph adds it as an implicit auth event of every other event of the
  room (its ID is ``"$" + room_id[1:]``), as the reference homeserver does,
  so auth chains, sender power levels and auth checks all see it.

Costs: every function here is linear in the number of events and edges it
visits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set

from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion

StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")


class AuthGraph:
    """Memoised, read-only access to the auth DAG of one resolution.

    Args:
        room_version: the room's version.
        event_map: every event the resolution may need, by event ID.
    """

    __slots__ = ("room_version", "_event_map", "_auth_ids")

    def __init__(self, room_version: RoomVersion, event_map: Mapping[str, Event]) -> None:
        self.room_version = room_version
        self._event_map = event_map
        self._auth_ids: dict[str, tuple[str, ...]] = {}

    def get(self, event_id: str) -> Event | None:
        """The event with this ID, or None if the caller did not supply it."""
        return self._event_map.get(event_id)

    def auth_event_ids(self, event_id: str) -> tuple[str, ...]:
        """The IDs of the auth events of ``event_id`` (empty if it is unknown).

        In v12 rooms the create event is appended for every event but the
        create event itself.
        """
        cached = self._auth_ids.get(event_id)
        if cached is not None:
            return cached
        event = self._event_map.get(event_id)
        if event is None:
            ids: tuple[str, ...] = ()
        else:
            ids = _dedupe(event.auth_event_ids)
            if self.room_version.room_id_from_create and not _is_create(event):
                create_id = implicit_create_event_id(event)
                if create_id is not None and create_id not in ids:
                    ids = ids + (create_id,)
        self._auth_ids[event_id] = ids
        return ids

    def auth_events(self, event_id: str) -> list[Event]:
        """The known auth events of ``event_id``, in their listed order."""
        found = []
        for aid in self.auth_event_ids(event_id):
            event = self._event_map.get(aid)
            if event is not None:
                found.append(event)
        return found

    def auth_event_of_type(self, event_id: str, key: StateKey) -> Event | None:
        """The first known auth event of ``event_id`` with state key ``key``."""
        for aid in self.auth_event_ids(event_id):
            event = self._event_map.get(aid)
            if event is not None and event.is_state() and event.state_tuple == key:
                return event
        return None

    def closure(
        self,
        start: Iterable[str],
        *,
        include_start: bool = True,
        stop: Set[str] = frozenset(),
    ) -> set[str]:
        """Every event reachable from ``start`` by following auth events.

        Args:
            start: the events to begin from.
            include_start: whether the start events themselves are in the
                result (they are anyway if one is an auth ancestor of another).
            stop: events that are neither entered nor added, nor walked past.

        Returns:
            The set of event IDs reached (unknown IDs included, as leaves).
        """
        seen: set[str] = set()
        todo: list[str] = []
        for event_id in start:
            if event_id in stop:
                continue
            if include_start:
                if event_id not in seen:
                    seen.add(event_id)
                    todo.append(event_id)
            else:
                todo.append(event_id)
        while todo:
            current = todo.pop()
            for aid in self.auth_event_ids(current):
                if aid not in seen and aid not in stop:
                    seen.add(aid)
                    todo.append(aid)
        return seen

    def auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        """The auth chain of a set of events (their auth events, recursively).

        The events themselves are not included unless one is in the auth
        chain of another.
        """
        return self.closure(event_ids, include_start=False)


def implicit_create_event_id(event: Event) -> str | None:
    """v12: the create event ID of ``event``'s room, derived from the room ID."""
    room_id = event.pdu.get("room_id")
    if not isinstance(room_id, str) or not room_id.startswith("!"):
        return None
    return "$" + room_id[1:]


def _is_create(event: Event) -> bool:
    return event.type == "m.room.create" and event.state_key == ""


def _dedupe(ids: Sequence[str]) -> tuple[str, ...]:
    if len(set(ids)) == len(ids):
        return tuple(ids)
    return tuple(dict.fromkeys(ids))


def auth_difference(
    graph: AuthGraph,
    state_sets: Sequence[StateMap],
) -> set[str]:
    """The auth difference of the state sets (spec: v2 state resolution).

    With C_i the full auth chain of state set i, this is
    ``union(C_i) - intersection(C_i)``. The events of each state set are
    counted in their own C_i, which changes nothing in the result but the
    conflicted events themselves (which state resolution adds anyway).

    The auth chain shared by the events present in every state set is walked
    once, and each state set's walk stops where it meets that shared part, so
    a fork in a room with 10,000 members costs one pass over the shared chain
    plus the forked part of each state set.

    Args:
        graph: the auth graph of this resolution.
        state_sets: the state maps being resolved.

    Returns:
        The IDs in the auth difference (possibly including IDs missing from
        the event map).
    """
    if len(state_sets) < 2:
        return set()
    value_sets = [set(state_set.values()) for state_set in state_sets]
    in_every_set = set.intersection(*value_sets)
    shared = graph.closure(in_every_set)
    own_parts = [graph.closure(values - in_every_set, stop=shared) for values in value_sets]
    union: set[str] = set().union(*own_parts)
    intersection = set.intersection(*own_parts)
    return union - intersection


def conflicted_subgraph(graph: AuthGraph, conflicted: Set[str]) -> set[str]:
    """The conflicted state subgraph (spec: room version 12 state resolution).

    The union of every auth-events path that starts at one conflicted event
    and ends at another, endpoints included: the events that are auth
    descendants of a conflicted event and auth ancestors of a conflicted
    event (a DAG makes these the same thing as being on such a path).

    Args:
        graph: the auth graph of this resolution.
        conflicted: the conflicted state set (event IDs).

    Returns:
        The event IDs of the subgraph; every conflicted event is in it.
    """
    # Walk down from the conflicted events, remembering the reverse edges of
    # the part of the graph we cover: every path between two conflicted
    # events lies inside that part.
    reached: set[str] = set(conflicted)
    children: dict[str, list[str]] = {}
    todo = list(conflicted)
    while todo:
        current = todo.pop()
        for aid in graph.auth_event_ids(current):
            children.setdefault(aid, []).append(current)
            if aid not in reached:
                reached.add(aid)
                todo.append(aid)
    # Walk back up from the conflicted events along those reverse edges:
    # what we meet is below some conflicted event and above another.
    result: set[str] = set(conflicted)
    todo = list(conflicted)
    while todo:
        current = todo.pop()
        for child in children.get(current, ()):
            if child not in result:
                result.add(child)
                todo.append(child)
    return result
