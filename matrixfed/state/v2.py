"""State resolution v2 (room versions 2-11) and v2.1 (room version 12).

Follows rooms/fragments/v2-state-res.md and the v12 changes in rooms/v12.md:
split the state sets into unconflicted and conflicted state, build the full
conflicted set (conflicted events, auth difference and, in v2.1, the
conflicted state subgraph), order and auth-check the power events, then
order the rest by mainline and auth-check them, and finally lay the
unconflicted state over the result. v2 starts the power-event pass from the
unconflicted state, v2.1 from an empty state.

Where the spec leaves room for reading, this module does what the reference
homeserver does, because servers only converge if they compute the same
thing:
- ``m.room.create`` counts as a power event (so it sorts with them);
- step 1 adds to the power events the events of the full conflicted set
  reachable from them through auth events that are themselves in the full
  conflicted set, and the ordering DAG has those direct edges;
- a key missing from some state set is conflicted;
- events in ``rejected`` are neither used as auth events nor let into state.

Failure: never raises for missing events (they are left out of every step);
an event that fails the authorisation rules is skipped.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence, Set

from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion, StateResAlgorithm
from matrixfed.state.checks import is_allowed, state_for_check
from matrixfed.state.graph import (
    CREATE_KEY,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    AuthGraph,
    StateKey,
    StateMap,
    auth_difference,
    conflicted_subgraph,
)
from matrixfed.state.power import sender_power_level


def separate(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split state sets into the unconflicted state map and conflicted state.

    A key is unconflicted when every state set maps it to the same event;
    a key absent from some state set is conflicted.

    Returns:
        (unconflicted state map, conflicted event IDs by key).
    """
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    if not state_sets:
        return unconflicted, conflicted
    first, rest = state_sets[0], state_sets[1:]
    for key, event_id in first.items():
        if all(other.get(key) == event_id for other in rest):
            unconflicted[key] = event_id
        else:
            conflicted[key] = {s[key] for s in state_sets if key in s}
    for other in rest:
        for key in other.keys() - first.keys():
            if key not in conflicted:
                conflicted[key] = {s[key] for s in state_sets if key in s}
    return unconflicted, conflicted


def is_power_event(event: Event) -> bool:
    """Power levels, join rules, create, or a kick or ban of another user."""
    if not event.is_state():
        return False
    key = event.state_tuple
    if key in (POWER_LEVELS_KEY, JOIN_RULES_KEY, CREATE_KEY):
        return True
    if event.type == "m.room.member" and event.membership in ("leave", "ban"):
        return event.sender != event.state_key
    return False


def full_conflicted_set(
    graph: AuthGraph,
    state_sets: Sequence[StateMap],
    conflicted: Mapping[StateKey, Set[str]],
) -> set[str]:
    """The full conflicted set, limited to known state events.

    The conflicted events, the auth difference and, for v2.1, the conflicted
    state subgraph. Events absent from the event map are dropped.
    """
    conflicted_ids: set[str] = set().union(*conflicted.values())
    result = conflicted_ids | auth_difference(graph, state_sets)
    if graph.room_version.state_res is StateResAlgorithm.V2_1:
        result |= conflicted_subgraph(graph, conflicted_ids)
    known = set()
    for event_id in result:
        event = graph.get(event_id)
        if event is not None and event.is_state():
            known.add(event_id)
    return known


def lexicographical_topological_sort(
    edges: Mapping[str, Set[str]], key: Callable[[str], tuple[float, int, str]]
) -> list[str]:
    """Kahn's algorithm, smallest ``key`` first among the ready nodes.

    Args:
        edges: each node mapped to the nodes it depends on (its auth events);
            every node that appears in an edge must be a key.
        key: the tie-break among nodes whose dependencies are all emitted.

    Returns:
        The nodes, each after everything it depends on. Nodes on a cycle
        (impossible in a well-formed auth DAG) are left out.
    """
    waiting = {node: len(deps) for node, deps in edges.items()}
    dependents: dict[str, list[str]] = {node: [] for node in edges}
    for node, deps in edges.items():
        for dep in deps:
            dependents[dep].append(node)
    ready = [(key(node), node) for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        ordered.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (key(dependent), dependent))
    return ordered


def power_event_graph(
    graph: AuthGraph, power_events: Iterable[str], full_conflicted: Set[str]
) -> dict[str, set[str]]:
    """The power events plus their auth ancestors within the full conflicted set.

    Returns:
        Each event mapped to its auth events that are in the returned graph.
    """
    edges: dict[str, set[str]] = {}
    todo = [event_id for event_id in power_events]
    for event_id in todo:
        edges.setdefault(event_id, set())
    while todo:
        current = todo.pop()
        deps = edges[current]
        for aid in graph.auth_event_ids(current):
            if aid in full_conflicted:
                deps.add(aid)
                if aid not in edges:
                    edges[aid] = set()
                    todo.append(aid)
    return edges


def reverse_topological_power_sort(
    graph: AuthGraph, power_events: Iterable[str], full_conflicted: Set[str]
) -> list[str]:
    """Step 1: the power events and their conflicted auth ancestors, ordered.

    Earliest first: every event after its auth events, ties broken by the
    sender's power level (higher first, from the event's own auth events),
    then ``origin_server_ts``, then event ID.
    """
    edges = power_event_graph(graph, power_events, full_conflicted)
    power: dict[str, float] = {}
    for event_id in edges:
        event = graph.get(event_id)
        power[event_id] = 0 if event is None else sender_power_level(graph, event)

    def order(event_id: str) -> tuple[float, int, str]:
        event = graph.get(event_id)
        ts = 0 if event is None else event.origin_server_ts
        return (-power[event_id], ts, event_id)

    return lexicographical_topological_sort(edges, order)


def mainline(graph: AuthGraph, power_levels_id: str | None) -> list[str]:
    """The mainline of a power levels event: it, then the power levels event
    in its auth events, and so on back to the first one."""
    line: list[str] = []
    seen: set[str] = set()
    current = power_levels_id
    while current is not None and current not in seen:
        seen.add(current)
        line.append(current)
        parent = graph.auth_event_of_type(current, POWER_LEVELS_KEY)
        current = None if parent is None else parent.event_id
    return line


def mainline_sort(
    graph: AuthGraph, event_ids: Iterable[str], power_levels_id: str | None
) -> list[str]:
    """Step 3: order events by their mainline position based on a power levels event.

    An event whose chain of power levels auth events meets the mainline
    earlier (further from ``power_levels_id``) sorts first; events that never
    meet it sort before all others. Ties: ``origin_server_ts``, then event ID.

    Each power levels event's position is computed once, so sorting many
    events that share power levels history is linear.
    """
    line = mainline(graph, power_levels_id)
    # Depth from the start of the room: the oldest mainline event is 1, the
    # given power levels event len(line); 0 means "never meets the mainline"
    # and sorts first, as the spec's infinite position does.
    depth_of_pl: dict[str, int] = {pl: len(line) - i for i, pl in enumerate(line)}

    def depth(event_id: str) -> int:
        path: list[str] = []
        on_path: set[str] = set()
        current = graph.auth_event_of_type(event_id, POWER_LEVELS_KEY)
        found = 0
        while current is not None:
            known = depth_of_pl.get(current.event_id)
            if known is not None:
                found = known
                break
            if current.event_id in on_path:
                break
            path.append(current.event_id)
            on_path.add(current.event_id)
            current = graph.auth_event_of_type(current.event_id, POWER_LEVELS_KEY)
        for pl in path:
            depth_of_pl[pl] = found
        return found

    keyed = []
    for event_id in event_ids:
        event = graph.get(event_id)
        if event is None:
            continue
        keyed.append(((depth(event_id), event.origin_server_ts, event_id), event_id))
    keyed.sort()
    return [event_id for _, event_id in keyed]


def iterative_auth_checks(
    graph: AuthGraph,
    event_ids: Iterable[str],
    base_state: Mapping[StateKey, str],
    *,
    rejected: Set[str] = frozenset(),
) -> dict[StateKey, str]:
    """Apply each event in order to the state if the rules allow it there.

    A key the rules need that the state lacks is taken from the event's own
    (non-rejected) auth events.

    Args:
        graph: the auth graph of this resolution.
        event_ids: the events, in order.
        base_state: the state to start from (not modified).
        rejected: events never used as auth events nor admitted.

    Returns:
        The new state map.
    """
    state = dict(base_state)
    for event_id in event_ids:
        event = graph.get(event_id)
        if event is None or not event.is_state() or event_id in rejected:
            continue
        check_state = state_for_check(
            graph, event, state, fall_back_to_auth_events=True, rejected=rejected
        )
        if is_allowed(event, check_state):
            state[event.state_tuple] = event_id
    return state


def resolve_v2(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    event_map: Mapping[str, Event],
    *,
    rejected: Set[str] = frozenset(),
) -> dict[StateKey, str]:
    """Resolve state sets with state resolution v2 or v2.1 (per ``room_version``).

    Args:
        room_version: a room version whose ``state_res`` is V2 or V2_1.
        state_sets: the state maps to resolve.
        event_map: the events of the state sets and their auth chains.
        rejected: IDs of events the caller rejected.

    Returns:
        The resolved state map.
    """
    unconflicted, conflicted = separate(state_sets)
    if not conflicted:
        return unconflicted
    graph = AuthGraph(room_version, event_map)
    full_conflicted = full_conflicted_set(graph, state_sets, conflicted)

    power_events = [e for e in full_conflicted if _is_power(graph, e)]
    sorted_power = reverse_topological_power_sort(graph, power_events, full_conflicted)
    if room_version.state_res is StateResAlgorithm.V2_1:
        base: Mapping[StateKey, str] = {}
    else:
        base = unconflicted
    partial = iterative_auth_checks(graph, sorted_power, base, rejected=rejected)

    picked = set(sorted_power)
    others = mainline_sort(
        graph,
        (e for e in full_conflicted if e not in picked),
        partial.get(POWER_LEVELS_KEY),
    )
    resolved = iterative_auth_checks(graph, others, partial, rejected=rejected)
    resolved.update(unconflicted)
    return resolved


def _is_power(graph: AuthGraph, event_id: str) -> bool:
    event = graph.get(event_id)
    return event is not None and is_power_event(event)
