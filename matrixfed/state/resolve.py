"""State resolution: the one entry point the rest of matrixfed calls.

``resolve_state`` takes state maps (``(type, state_key) -> event_id``) and the
events they and their auth chains refer to, and returns the resolved state
map, using the algorithm of the room version (v1, v2 or v2.1). It is pure:
no I/O, the caller loads the events.

Guarantees:
- Deterministic: the same inputs give the same output, whatever the order
  of the state sets or of the event map.
- Never raises for an event missing from ``event_map``: it is treated as
  unknown (left out of the conflicted events and auth checks). An unconflicted
  entry is kept as it is, known or not.
- One state set, or state sets that agree, cost a copy and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion, StateResAlgorithm
from matrixfed.state.graph import StateKey
from matrixfed.state.v1 import resolve_v1
from matrixfed.state.v2 import resolve_v2


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[tuple[str, str], str]],
    event_map: Mapping[str, Event],
    *,
    rejected_event_ids: Set[str] = frozenset(),
) -> dict[tuple[str, str], str]:
    """Resolve several states of a room into one.

    Args:
        room_version: the room's version; selects the algorithm.
        state_sets: the states to resolve, e.g. the states after each
            prev_event of a new event.
        event_map: every event referenced by the state sets and by their auth
            chains, by event ID. Events absent from it are treated as unknown.
        rejected_event_ids: v2/v2.1: events this server rejected; they are not
            used as auth events nor admitted into the state by the auth checks.
            Ignored by v1.

    Returns:
        The resolved state map (a new dict).
    """
    if not state_sets:
        return {}
    first = state_sets[0]
    if all(other == first for other in state_sets[1:]):
        return dict(first)
    if room_version.state_res is StateResAlgorithm.V1:
        return resolve_v1(room_version, state_sets, event_map)
    result: dict[StateKey, str] = resolve_v2(
        room_version, state_sets, event_map, rejected=rejected_event_ids
    )
    return result
