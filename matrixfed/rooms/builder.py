"""Building new events: PDU templates and the createRoom event plan.

Pure functions over plain data (no I/O, no Twisted): the engine loads the
prev events, auth events and current state and calls these.

- ``pdu_template`` lays out an unsigned PDU in the room version's format:
  prev_events/auth_events as plain IDs (v3+) or ``[id, {"sha256": ...}]``
  references (v1/v2), depth one above the deepest prev event, ``origin`` for
  v1-v10, ``redacts`` at the top level (v1-v10) or in content (v11+), and no
  ``room_id`` on a v12 create event.
- ``initial_state_plan`` lists the events the client-server ``createRoom``
  sends, in the spec's order, for a preset and the request's options.

Nothing here raises on odd content: the auth rules judge the result.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from unpaddedbase64 import encode_base64

from matrixfed.errors import MatrixError
from matrixfed.events.hashing import compute_reference_hash
from matrixfed.events.model import Event
from matrixfed.events.room_versions import EventFormat, RoomVersion

# spec: rooms/v1 "depth": an integer no larger than 2**63 - 1 (canonical JSON caps at 2**53 - 1).
MAX_DEPTH = 2**53 - 1
# spec: server-server "PDUs": at most 20 prev_events; we reference fewer so
# our events stay small while still merging forks quickly.
MAX_PREV_EVENTS_BUILT = 10
# Random part of locally minted room IDs and v1/v2 event IDs (~107 bits).
OPAQUE_ID_LENGTH = 18

_ALPHABET = string.ascii_letters

PRESETS = ("private_chat", "trusted_private_chat", "public_chat")


def random_string(length: int = OPAQUE_ID_LENGTH) -> str:
    """Letters only: valid in every identifier grammar."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_room_id(server_name: str) -> str:
    """A fresh ``!opaque:server`` room ID (room versions 1-11)."""
    return f"!{random_string()}:{server_name}"


def new_v1_event_id(server_name: str) -> str:
    """A fresh ``$opaque:server`` event ID (room versions 1 and 2)."""
    return f"${random_string()}:{server_name}"


def event_reference(event: Event) -> Any:
    """How a new event of the room version cites ``event``."""
    if event.room_version.event_format is EventFormat.V1:
        digest = compute_reference_hash(event.pdu, event.room_version)
        return [event.event_id, {"sha256": encode_base64(digest)}]
    return event.event_id


def pdu_template(
    room_version: RoomVersion,
    *,
    room_id: str | None,
    event_type: str,
    sender: str,
    content: Mapping[str, Any],
    state_key: str | None,
    redacts: str | None,
    prev_events: Sequence[Event],
    auth_events: Sequence[Event],
    origin: str,
    origin_server_ts: int,
) -> dict[str, Any]:
    """An unsigned, unhashed PDU for a new event.

    Args:
        room_version: the room's version.
        room_id: the room; None only for a v12 create event.
        event_type: ``type``.
        sender: ``sender``.
        content: ``content`` (copied).
        state_key: ``state_key``, None for a non-state event.
        redacts: for redactions, the target event ID.
        prev_events: the events it follows (the forward extremities).
        auth_events: the events it cites as auth events.
        origin: our server name (written for v1-v10 only).
        origin_server_ts: ms since the epoch.

    Returns:
        The PDU dict (no ``event_id``, ``hashes``, ``signatures``).
    """
    body = dict(content)
    depth = min(MAX_DEPTH, 1 + max((e.depth for e in prev_events), default=0))
    pdu: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "content": body,
        "depth": depth,
        "origin_server_ts": origin_server_ts,
        "prev_events": [event_reference(e) for e in prev_events],
        "auth_events": [event_reference(e) for e in auth_events],
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if not room_version.v11_top_level_keys:
        pdu["origin"] = origin
    if redacts is not None:
        if room_version.v11_top_level_keys:
            body["redacts"] = redacts
        else:
            pdu["redacts"] = redacts
    return pdu


@attrs.frozen(slots=True)
class PlannedEvent:
    """One event of a new room, before it is built."""

    type: str
    state_key: str | None
    content: Mapping[str, Any]
    sender: str


# Client-server spec, createRoom: "The power levels ... default to" these
# event levels (as Synapse creates them).
_DEFAULT_EVENT_LEVELS = {
    "m.room.name": 50,
    "m.room.power_levels": 100,
    "m.room.history_visibility": 100,
    "m.room.canonical_alias": 50,
    "m.room.avatar": 50,
    "m.room.tombstone": 100,
    "m.room.server_acl": 100,
    "m.room.encryption": 100,
}


def _preset_state(preset: str) -> list[tuple[str, dict[str, Any]]]:
    if preset == "public_chat":
        return [
            ("m.room.join_rules", {"join_rule": "public"}),
            ("m.room.history_visibility", {"history_visibility": "shared"}),
        ]
    return [
        ("m.room.join_rules", {"join_rule": "invite"}),
        ("m.room.history_visibility", {"history_visibility": "shared"}),
        ("m.room.guest_access", {"guest_access": "can_join"}),
    ]


def initial_state_plan(
    room_version: RoomVersion,
    creator: str,
    *,
    preset: str,
    name: str | None,
    topic: str | None,
    alias: str | None,
    initial_state: Sequence[Mapping[str, Any]],
    power_level_content_override: Mapping[str, Any] | None,
    invite: Sequence[str],
    creation_content: Mapping[str, Any] | None,
) -> list[PlannedEvent]:
    """The events of ``createRoom`` in the order the client-server spec gives.

    create, the creator's join, power levels (with the override merged in),
    canonical alias, the preset's join rules / history visibility / guest
    access, ``initial_state`` (replacing preset events of the same key), name,
    topic, then one invite per invitee.

    Raises:
        MatrixError: 400 M_INVALID_PARAM for an unknown preset or malformed
            initial_state entry.
    """
    if preset not in PRESETS:
        raise MatrixError(400, "M_INVALID_PARAM", f"unknown preset {preset!r}")
    create_content: dict[str, Any] = dict(creation_content or {})
    create_content["room_version"] = room_version.identifier
    trusted = preset == "trusted_private_chat"
    if room_version.msc2175_implicit_room_creator:
        create_content.pop("creator", None)
    else:
        create_content["creator"] = creator
    if room_version.privileged_creators and trusted and invite:
        extra = [u for u in create_content.get("additional_creators", ()) if isinstance(u, str)]
        create_content["additional_creators"] = list(dict.fromkeys([*extra, *invite]))

    plan = [
        PlannedEvent("m.room.create", "", create_content, creator),
        PlannedEvent("m.room.member", creator, {"membership": "join"}, creator),
    ]

    users: dict[str, Any] = {}
    if not room_version.privileged_creators:
        users[creator] = 100
        if trusted:
            users.update(dict.fromkeys(invite, 100))
    power: dict[str, Any] = {
        "users": users,
        "users_default": 0,
        "events": dict(_DEFAULT_EVENT_LEVELS),
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50 if preset == "public_chat" else 0,
    }
    if power_level_content_override:
        power.update(power_level_content_override)
    plan.append(PlannedEvent("m.room.power_levels", "", power, creator))

    if alias is not None:
        plan.append(PlannedEvent("m.room.canonical_alias", "", {"alias": alias}, creator))

    overrides: dict[tuple[str, str], Mapping[str, Any]] = {}
    for entry in initial_state:
        etype = entry.get("type")
        state_key = entry.get("state_key", "")
        content = entry.get("content")
        if not isinstance(etype, str) or not isinstance(state_key, str):
            raise MatrixError(400, "M_INVALID_PARAM", "initial_state entries need a type")
        if not isinstance(content, Mapping):
            raise MatrixError(400, "M_INVALID_PARAM", "initial_state entries need a content")
        if etype in ("m.room.create", "m.room.member", "m.room.power_levels"):
            raise MatrixError(400, "M_INVALID_PARAM", f"{etype} cannot be set in initial_state")
        overrides[(etype, state_key)] = content
    for etype, content in _preset_state(preset):
        if (etype, "") not in overrides:
            plan.append(PlannedEvent(etype, "", content, creator))
    for (etype, state_key), content in overrides.items():
        plan.append(PlannedEvent(etype, state_key, dict(content), creator))
    if name is not None:
        plan.append(PlannedEvent("m.room.name", "", {"name": name}, creator))
    if topic is not None:
        plan.append(PlannedEvent("m.room.topic", "", {"topic": topic}, creator))
    for invitee in dict.fromkeys(invite):
        plan.append(PlannedEvent("m.room.member", invitee, {"membership": "invite"}, creator))
    return plan
