"""Power levels as the authorisation rules read them.

``PowerLevels`` is a read-only view over the ``m.room.power_levels`` and
``m.room.create`` events of one state map. It parses values lazily, one key at
a time, so a membership check in a room whose power levels list thousands of
users costs two dictionary look-ups, not a parse of the whole event.

Values are parsed per room version (rooms/fragments/v1-stringy-power-levels.md,
v1-floaty-power-levels.md, rooms/v10.md):

- integers are always accepted (JSON booleans are not integers);
- v1-v9: strings holding a base-10 integer, optionally signed and surrounded by
  whitespace ("  +050 ");
- v1-v5: finite floats, truncated toward zero.

A value that does not parse is treated as absent when read from an accepted
power levels event (its default applies); the rules in ``rules.py`` reject new
power levels events carrying such values. Defaults follow the client-server
spec: with no power levels event the room creator has 100 and everyone else 0;
``state_default`` is 50 with a power levels event and 0 without; kick, ban and
redact default to 50; invite, events_default and users_default to 0.

v12 ("privileged creators"): the sender of the create event and every user in
its ``additional_creators`` have an infinite power level.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from matrixfed.auth.selection import CREATE_KEY, POWER_LEVELS_KEY
from matrixfed.events.model import Event
from matrixfed.events.room_versions import DEFAULT_ROOM_VERSION, RoomVersion, get_room_version

# client-server spec, m.room.power_levels: defaults when a key is absent.
DEFAULT_BAN_LEVEL = 50
DEFAULT_KICK_LEVEL = 50
DEFAULT_REDACT_LEVEL = 50
DEFAULT_INVITE_LEVEL = 0
DEFAULT_EVENTS_LEVEL = 0
DEFAULT_USERS_LEVEL = 0
# state_default is 50 when a power levels event exists, 0 when none does.
DEFAULT_STATE_LEVEL = 50
DEFAULT_STATE_LEVEL_WITHOUT_EVENT = 0
# With no power levels event, the room creator gets 100.
CREATOR_LEVEL_WITHOUT_EVENT = 100
# v12: room creators outrank everyone.
INFINITE_POWER = math.inf

# The top-level integer keys of power levels content, in the spec's order.
LEVEL_KEYS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")
_NAMED_DEFAULTS: Mapping[str, int] = {
    "users_default": DEFAULT_USERS_LEVEL,
    "events_default": DEFAULT_EVENTS_LEVEL,
    "state_default": DEFAULT_STATE_LEVEL,
    "ban": DEFAULT_BAN_LEVEL,
    "redact": DEFAULT_REDACT_LEVEL,
    "kick": DEFAULT_KICK_LEVEL,
    "invite": DEFAULT_INVITE_LEVEL,
}

# Stringy power levels: optional whitespace, one optional sign, ASCII digits.
_STRINGY_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)


def parse_power_level(value: Any, room_version: RoomVersion) -> int | None:
    """Parse one power level value as the room version allows.

    Args:
        value: the JSON value.
        room_version: decides whether strings (v1-v9) and floats (v1-v5) count.

    Returns:
        The integer level, or None if the value is not a valid level in this
        room version.
    """
    if type(value) is int:
        return value
    if room_version.integer_power_levels:
        return None
    if isinstance(value, str):
        if _STRINGY_INT_RE.fullmatch(value) is None:
            return None
        return int(value)
    if isinstance(value, float) and room_version.floaty_power_levels:
        if not math.isfinite(value):
            return None
        return int(value)
    return None


def is_strict_int(value: Any) -> bool:
    """True for a JSON integer (v10+ power level values); booleans are not."""
    return type(value) is int


def creators(state: Mapping[tuple[str, str], Event]) -> set[str]:
    """The room's creators according to its create event.

    v1-v10: ``content.creator``; v11: the create event's sender; v12: the
    sender plus every string in ``content.additional_creators``.

    Args:
        state: auth state keyed by (type, state_key).

    Returns:
        The creators' user IDs; empty when the state has no create event.
    """
    create = state.get(CREATE_KEY)
    if create is None:
        return set()
    return _creators_of(create)


def _creators_of(create: Event) -> set[str]:
    rv = create.room_version
    if rv.privileged_creators:
        found = {create.sender}
        additional = create.content.get("additional_creators")
        if isinstance(additional, list):
            found.update(c for c in additional if isinstance(c, str))
        return found
    if rv.msc2175_implicit_room_creator:
        return {create.sender}
    creator = create.content.get("creator")
    return {creator} if isinstance(creator, str) else set()


class PowerLevels:
    """The power levels in force in one state map.

    Build one per auth check with ``PowerLevels.from_state``; reads are lazy.
    """

    __slots__ = ("room_version", "event", "_content", "_create", "_creator_ids")

    def __init__(
        self,
        room_version: RoomVersion,
        power_levels_event: Event | None,
        create_event: Event | None,
    ) -> None:
        self.room_version = room_version
        self.event = power_levels_event
        self._content: Mapping[str, Any] = (
            power_levels_event.content if power_levels_event is not None else {}
        )
        self._create = create_event
        # Worked out on first use: most membership checks never ask.
        self._creator_ids: set[str] | None = None

    @property
    def _creators(self) -> set[str]:
        found = self._creator_ids
        if found is None:
            create = self._create
            found = _creators_of(create) if create is not None else set()
            self._creator_ids = found
        return found

    @classmethod
    def from_state(
        cls, state: Mapping[tuple[str, str], Event], room_version: RoomVersion | None = None
    ) -> PowerLevels:
        """The view for ``state``.

        The room version defaults to that of the create event (or of the power
        levels event). With neither event in ``state`` only defaults apply, which
        are the same in every room version.
        """
        create = state.get(CREATE_KEY)
        power_levels = state.get(POWER_LEVELS_KEY)
        if room_version is None:
            if create is not None:
                room_version = create.room_version
            elif power_levels is not None:
                room_version = power_levels.room_version
            else:
                room_version = get_room_version(DEFAULT_ROOM_VERSION)
        return cls(room_version, power_levels, create)

    @property
    def creators(self) -> frozenset[str]:
        return frozenset(self._creators)

    def _parse(self, value: Any) -> int | None:
        return parse_power_level(value, self.room_version)

    def named_level(self, name: str) -> int:
        """A top-level level (``ban``, ``kick``, ``redact``, ``invite``, ``*_default``)."""
        if self.event is None:
            if name == "state_default":
                return DEFAULT_STATE_LEVEL_WITHOUT_EVENT
            return _NAMED_DEFAULTS[name]
        value = self._content.get(name)
        level = None if value is None else self._parse(value)
        return _NAMED_DEFAULTS[name] if level is None else level

    def user_level(self, user_id: str) -> int | float:
        """The user's power level: ``inf`` for v12 creators."""
        if self.room_version.privileged_creators and user_id in self._creators:
            return INFINITE_POWER
        if self.event is None:
            if user_id in self._creators:
                return CREATOR_LEVEL_WITHOUT_EVENT
            return DEFAULT_USERS_LEVEL
        users = self._content.get("users")
        if isinstance(users, dict):
            value = users.get(user_id)
            if value is not None:
                level = self._parse(value)
                if level is not None:
                    return level
        return self.named_level("users_default")

    def event_level(self, event_type: str, is_state: bool) -> int:
        """The required power level to send an event of ``event_type``."""
        events = self._content.get("events")
        if isinstance(events, dict):
            value = events.get(event_type)
            if value is not None:
                level = self._parse(value)
                if level is not None:
                    return level
        return self.named_level("state_default" if is_state else "events_default")


def user_power_level(user_id: str, state: Mapping[tuple[str, str], Event]) -> int | float:
    """The power level of ``user_id`` in ``state``.

    Args:
        user_id: the user.
        state: auth state keyed by (type, state_key).

    Returns:
        The level; ``float("inf")`` for the creators of a v12 room.
    """
    return PowerLevels.from_state(state).user_level(user_id)


def required_power_level(
    event_type: str, is_state: bool, state: Mapping[tuple[str, str], Event]
) -> int:
    """The power level needed to send an event of ``event_type`` in ``state``.

    Args:
        event_type: the event type.
        is_state: whether the event is a state event.
        state: auth state keyed by (type, state_key).
    """
    return PowerLevels.from_state(state).event_level(event_type, is_state)
