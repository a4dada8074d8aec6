"""Redaction: the keys of an event that survive, per room version.

The redacted form is what signatures and the reference hash cover, so these
lists must match the spec exactly (content/rooms/fragments/*-redactions.md).
"""

from __future__ import annotations

from typing import Any

from matrixfed.events.room_versions import RedactionRules, RoomVersion

_TOP_LEVEL_V1 = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
# v11 drops origin, membership and prev_state from the protocol.
_TOP_LEVEL_V11 = _TOP_LEVEL_V1 - {"origin", "membership", "prev_state"}

_PL_KEYS = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)


def _content_keys(event_type: str, rules: RedactionRules) -> tuple[str, ...] | None:
    """Content keys kept for ``event_type``; None means keep all of content."""
    if event_type == "m.room.member":
        if rules >= RedactionRules.V9:
            return ("membership", "join_authorised_via_users_server")
        return ("membership",)
    if event_type == "m.room.create":
        return None if rules >= RedactionRules.V11 else ("creator",)
    if event_type == "m.room.join_rules":
        return ("join_rule", "allow") if rules >= RedactionRules.V8 else ("join_rule",)
    if event_type == "m.room.power_levels":
        return _PL_KEYS + ("invite",) if rules >= RedactionRules.V11 else _PL_KEYS
    if event_type == "m.room.aliases" and rules is RedactionRules.V1:
        return ("aliases",)
    if event_type == "m.room.history_visibility":
        return ("history_visibility",)
    if event_type == "m.room.redaction" and rules >= RedactionRules.V11:
        return ("redacts",)
    return ()


def redacted_content(
    event_type: Any, content: dict[str, Any], room_version: RoomVersion
) -> dict[str, Any] | None:
    """The content the redacted form of an event keeps.

    Args:
        event_type: the event's ``type`` (any value; only known types keep keys).
        content: the event's content object.
        room_version: the room's version.

    Returns:
        A new dict of the keys kept, or None when all of ``content`` is kept
        (v11+ ``m.room.create``): the caller then uses ``content`` itself.
    """
    rules = room_version.redaction
    keys = _content_keys(str(event_type), rules)
    if keys is None:
        return None
    new_content = {k: content[k] for k in keys if k in content}
    if (
        rules >= RedactionRules.V11
        and event_type == "m.room.member"
        and isinstance(content.get("third_party_invite"), dict)
        and "signed" in content["third_party_invite"]
    ):
        new_content["third_party_invite"] = {"signed": content["third_party_invite"]["signed"]}
    return new_content


def redact(pdu: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """Return the redacted form of ``pdu`` (a new dict; ``pdu`` is untouched).

    Redaction is idempotent: ``redact(redact(x)) == redact(x)``.
    """
    allowed = _TOP_LEVEL_V11 if room_version.v11_top_level_keys else _TOP_LEVEL_V1
    out = {k: v for k, v in pdu.items() if k in allowed}
    content = pdu.get("content")
    if not isinstance(content, dict):
        out["content"] = {}
        return out
    kept = redacted_content(pdu.get("type"), content, room_version)
    out["content"] = dict(content) if kept is None else kept
    return out
