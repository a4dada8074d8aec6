"""The power level of an event's sender, for the reverse topological power ordering.

Spec (v2 state resolution): the sender's power level "when looking at their
respective auth_events", i.e. from the power levels and create events the
event itself cites (in v12, the room's create event, which is implied), not
from any resolved state. The levels are read the way the authorisation rules
read them (``matrixfed.auth.power_levels``): with no power levels event the
creator has 100 and everyone else 0; room version 12 creators are infinitely
powerful and sort before everybody.

Never raises: a missing or malformed value counts as the default.
"""

from __future__ import annotations

from matrixfed.auth.power_levels import user_power_level
from matrixfed.events.model import Event
from matrixfed.state.graph import CREATE_KEY, POWER_LEVELS_KEY, AuthGraph, StateKey


def sender_power_level(graph: AuthGraph, event: Event) -> int | float:
    """The power level of ``event.sender`` according to ``event``'s auth events."""
    state: dict[StateKey, Event] = {}
    for key in (CREATE_KEY, POWER_LEVELS_KEY):
        found = graph.auth_event_of_type(event.event_id, key)
        if found is not None:
            state[key] = found
    return user_power_level(event.sender, state)
