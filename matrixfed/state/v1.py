"""State resolution v1 (room version 1).

Follows the "State resolution" section of rooms/v1.md. Known to reset state
in some forks; that is the algorithm, and room version 1 must keep it.

R starts as the union of the state sets without the conflicted keys (a key
missing from some state set is not a conflict in v1). Then, in order:
- the conflicting power levels events, sorted by ascending depth then
  descending sha1(event_id): the first goes into R, each following one
  replaces it while it passes the authorisation rules in R; at the first
  failure the pass stops;
- the same for ``m.room.join_rules``, then for each ``m.room.member`` key
  (every member key against the same R, as the reference homeserver does,
  so the result does not depend on the order of the keys);
- every other conflicted key gets the event with the highest depth and
  lowest sha1(event_id) that passes auth in R (if none passes, the one with
  the lowest depth, as the reference homeserver does).

Events missing from the event map take no part; a key whose conflicting
events are all missing is left out of the result. Never raises for an
event that fails the rules.
"""

from __future__ import annotations

import hashlib
from collections import ChainMap
from collections.abc import Mapping, Sequence

from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion
from matrixfed.state.checks import is_allowed, state_for_check
from matrixfed.state.graph import POWER_LEVELS_KEY, AuthGraph, StateKey, StateMap


def separate_v1(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split state sets into unconflicted state and conflicting events.

    In v1 a conflict is two state sets naming different events for one key;
    a key that only some state sets have is unconflicted.

    Returns:
        (unconflicted state map, conflicting event IDs by key).
    """
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for state_set in state_sets:
        for key, event_id in state_set.items():
            seen = conflicted.get(key)
            if seen is not None:
                seen.add(event_id)
                continue
            current = unconflicted.get(key)
            if current is None:
                unconflicted[key] = event_id
            elif current != event_id:
                del unconflicted[key]
                conflicted[key] = {current, event_id}
    return unconflicted, conflicted


def _sha1_hex(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


def by_depth_then_sha1(events: Sequence[Event]) -> list[Event]:
    """Highest depth first, then lowest sha1(event_id) (the order of "normal" conflicts).

    The power levels, join rules and membership passes walk this list backwards:
    ascending depth, then descending sha1(event_id).
    """
    return sorted(events, key=lambda e: (-e.depth, _sha1_hex(e.event_id)))


def _resolve_auth_key(graph: AuthGraph, events: Sequence[Event], state: dict[StateKey, str]) -> str:
    # Only this key changes while its events are checked, so an overlay on R
    # does (copying R per member key would be quadratic in big rooms).
    ordered = list(reversed(by_depth_then_sha1(events)))
    winner = ordered[0]
    own = {winner.state_tuple: winner.event_id}
    view = ChainMap(own, state)
    for event in ordered[1:]:
        check = state_for_check(graph, event, view, fall_back_to_auth_events=False)
        if not is_allowed(event, check):
            break
        winner = event
        own[winner.state_tuple] = winner.event_id
    return winner.event_id


def _resolve_normal_key(
    graph: AuthGraph, events: Sequence[Event], state: Mapping[StateKey, str]
) -> str:
    ordered = by_depth_then_sha1(events)
    for event in ordered:
        if is_allowed(event, state_for_check(graph, event, state, fall_back_to_auth_events=False)):
            return event.event_id
    return ordered[-1].event_id


def resolve_v1(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    event_map: Mapping[str, Event],
) -> dict[StateKey, str]:
    """Resolve state sets with the room version 1 algorithm.

    Args:
        room_version: room version 1 (or any version using StateResAlgorithm.V1).
        state_sets: the state maps to resolve.
        event_map: the conflicting events and the events of the state.

    Returns:
        The resolved state map.
    """
    resolved, conflicted_ids = separate_v1(state_sets)
    if not conflicted_ids:
        return resolved
    graph = AuthGraph(room_version, event_map)
    conflicted: dict[StateKey, list[Event]] = {}
    for key in sorted(conflicted_ids):
        events = []
        for event_id in conflicted_ids[key]:
            event = graph.get(event_id)
            if event is not None and event.is_state() and event.state_tuple == key:
                events.append(event)
        if len(events) == 1:
            resolved[key] = events[0].event_id
        elif events:
            conflicted[key] = events

    # Each pass sees the results of the passes before it (join rules are
    # checked with the resolved power levels, memberships with both); within
    # a pass each key is resolved against the same R, so the result does not
    # depend on the order of the keys.
    if POWER_LEVELS_KEY in conflicted:
        resolved[POWER_LEVELS_KEY] = _resolve_auth_key(
            graph, conflicted.pop(POWER_LEVELS_KEY), resolved
        )
    for kind in ("m.room.join_rules", "m.room.member"):
        keys = [k for k in conflicted if k[0] == kind]
        winners = {key: _resolve_auth_key(graph, conflicted.pop(key), resolved) for key in keys}
        resolved.update(winners)
    # Other state does not affect authorisation, so each key is picked
    # against the same R (R as it stands after the passes above).
    normal = {
        key: _resolve_normal_key(graph, events, resolved) for key, events in conflicted.items()
    }
    resolved.update(normal)
    return resolved
