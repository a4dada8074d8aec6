"""Auth events selection (server-server-api.md, "Auth events selection").

Which (type, state_key) pairs of the room state an event must cite as its
``auth_events``. The same function serves both directions: building a new event
(``select_auth_event_ids`` over the current state) and checking a received one
(``matrixfed.auth.rules.check_auth_events_refs`` rejects entries outside this set).

Guarantees: pure and deterministic; ``select_auth_event_ids`` returns IDs in a
fixed order (create, power levels, sender, target, join rules, third-party
invite, join authoriser) without duplicates. Nothing here raises on malformed
content: odd values simply select nothing extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matrixfed.events.room_versions import RoomVersion

CREATE = "m.room.create"
POWER_LEVELS = "m.room.power_levels"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"

CREATE_KEY = (CREATE, "")
POWER_LEVELS_KEY = (POWER_LEVELS, "")
JOIN_RULES_KEY = (JOIN_RULES, "")

# Memberships whose auth depends on the join rules.
_JOIN_RULE_MEMBERSHIPS = ("join", "invite", "knock")


def _ordered_auth_types(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> list[tuple[str, str]]:
    if event_type == CREATE:
        # The create event has no auth events.
        return []
    types: list[tuple[str, str]] = []
    if not room_version.room_id_from_create:
        # v12: the room ID implies the create event, which must not be cited.
        types.append(CREATE_KEY)
    types.append(POWER_LEVELS_KEY)
    types.append((MEMBER, sender))
    if event_type == MEMBER and isinstance(state_key, str):
        if state_key != sender:
            types.append((MEMBER, state_key))
        membership = content.get("membership")
        if membership in _JOIN_RULE_MEMBERSHIPS:
            types.append(JOIN_RULES_KEY)
        if membership == "invite" and "third_party_invite" in content:
            tpi = content.get("third_party_invite")
            signed = tpi.get("signed") if isinstance(tpi, dict) else None
            token = signed.get("token") if isinstance(signed, dict) else None
            if isinstance(token, str):
                types.append((THIRD_PARTY_INVITE, token))
        if membership == "join" and room_version.restricted_join_rule:
            authoriser = content.get("join_authorised_via_users_server")
            if isinstance(authoriser, str) and authoriser not in (sender, state_key):
                types.append((MEMBER, authoriser))
    return types


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> set[tuple[str, str]]:
    """The (type, state_key) pairs an event of this shape may cite as auth events.

    Args:
        room_version: the room's version (v12 never selects the create event).
        event_type: the event's ``type``.
        sender: the event's ``sender``.
        state_key: the event's ``state_key`` or None for a non-state event.
        content: the event's ``content``.

    Returns:
        The set of state keys; empty for ``m.room.create``.
    """
    return set(_ordered_auth_types(room_version, event_type, sender, state_key, content))


def select_auth_event_ids(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    state: Mapping[tuple[str, str], str],
) -> list[str]:
    """Pick the auth event IDs for a new event from a state map.

    Args:
        room_version: the room's version.
        event_type: the new event's ``type``.
        sender: the new event's ``sender``.
        state_key: the new event's ``state_key`` or None.
        content: the new event's ``content``.
        state: the room state the event is built on, (type, state_key) -> event ID.

    Returns:
        The event IDs of the selected state entries that exist, in a fixed order
        (create, power levels, sender's membership, target's membership, join
        rules, third-party invite, join authoriser), without duplicates.
    """
    ids: list[str] = []
    for key in _ordered_auth_types(room_version, event_type, sender, state_key, content):
        event_id = state.get(key)
        if event_id is not None and event_id not in ids:
            ids.append(event_id)
    return ids
