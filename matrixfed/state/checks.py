"""The bridge from state resolution to the authorisation rules.

State resolution asks one question many times: "is this event allowed in
this state?". This module builds the state the rules look at and calls
``matrixfed.auth.rules.check_auth``. It never raises for an event that is
not allowed: it answers False.

The state handed to ``check_auth`` is the event's own auth events (v2
iterative auth checks only; in room version 12 these include the create
event, which the rules need and no v12 event lists), overridden by the
resolved state for the keys the rules may read for that event
(``matrixfed.auth.selection.auth_types_for_event``, plus the create event).
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from matrixfed.auth.rules import check_auth
from matrixfed.auth.selection import auth_types_for_event
from matrixfed.errors import AuthError
from matrixfed.events.model import Event
from matrixfed.state.graph import CREATE_KEY, AuthGraph, StateKey


def auth_types(graph: AuthGraph, event: Event) -> set[StateKey]:
    """The state keys the authorisation rules may read for ``event``."""
    keys = auth_types_for_event(
        graph.room_version, event.type, event.sender, event.state_key, dict(event.content)
    )
    keys.add(CREATE_KEY)
    return keys


def is_allowed(event: Event, state: Mapping[StateKey, Event]) -> bool:
    """Whether the authorisation rules allow ``event`` in ``state``."""
    try:
        check_auth(event, state)
    except AuthError:
        return False
    return True


def state_for_check(
    graph: AuthGraph,
    event: Event,
    state: Mapping[StateKey, str],
    *,
    fall_back_to_auth_events: bool,
    rejected: Set[str] = frozenset(),
) -> dict[StateKey, Event]:
    """The state the rules read for ``event`` against the state map ``state``.

    Args:
        graph: the auth graph of this resolution.
        event: the event to check.
        state: the (partially) resolved state, as event IDs.
        fall_back_to_auth_events: v2 iterative auth checks: a key the rules
            need that ``state`` lacks is taken from the event's own auth
            events. v1 resolution checks against the state alone (the
            create event excepted, see below).
        rejected: event IDs never to use as auth events.

    Returns:
        The event's usable auth events (when falling back), overridden by
        the entries of ``state`` for the keys the rules need.
    """
    needed = auth_types(graph, event)
    result: dict[StateKey, Event] = {}
    if fall_back_to_auth_events:
        for auth_event in graph.auth_events(event.event_id):
            if auth_event.is_state() and auth_event.event_id not in rejected:
                result.setdefault(auth_event.state_tuple, auth_event)
    for key in needed:
        event_id = state.get(key)
        if event_id is None or event_id in rejected:
            continue
        found = graph.get(event_id)
        if found is not None:
            result[key] = found
    return result
