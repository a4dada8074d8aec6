"""Room versions 1-12 as one table of properties.

Every difference between room versions that matrixfed implements is a field
here, so the rest of the code asks ``room_version.knock_join_rule`` rather than
comparing version strings. The values follow ../shared/spec/content/rooms.
"""

from __future__ import annotations

import enum

import attrs


class EventFormat(enum.IntEnum):
    """How event IDs are formed and how references to events are written."""

    # v1, v2: event_id is in the PDU ("$opaque:server"); prev_events and
    # auth_events are lists of [event_id, {"sha256": ...}].
    V1 = 1
    # v3: event_id is "$" + standard unpadded base64 of the reference hash;
    # references are plain event ID strings.
    V2 = 2
    # v4+: as V2 with URL-safe unpadded base64.
    V3 = 3


class StateResAlgorithm(enum.IntEnum):
    V1 = 1
    V2 = 2
    # v12: v2 with the conflicted state subgraph and an empty-state start.
    V2_1 = 3


class RedactionRules(enum.IntEnum):
    V1 = 1  # v1-v5: m.room.aliases keeps `aliases`
    V6 = 6  # v6, v7: m.room.aliases no longer special
    V8 = 8  # join_rules keep `allow`
    V9 = 9  # member keeps `join_authorised_via_users_server`
    V11 = 11  # v11+: create keeps all; PL keeps `invite`; redaction keeps `redacts`; ...


@attrs.frozen(slots=True)
class RoomVersion:
    """Properties of one room version.

    Attributes:
        identifier: the version string ("1" ... "12").
        event_format: see EventFormat.
        state_res: the state resolution algorithm.
        redaction: which redaction rules apply.
        enforce_key_validity: v5+: a signing key must be valid at the event's
            origin_server_ts.
        strict_canonical_json: v6+: integers within [-(2**53)+1, 2**53-1], no
            floats; such events are rejected.
        special_case_aliases_auth: v1-v5: m.room.aliases events are allowed by
            a special auth rule (state_key must be the sender's domain).
        limit_notifications_power_levels: v6+: the `notifications` key of
            power levels is subject to the same change rules as other keys.
        knock_join_rule: v7+: `knock` join rule and knock membership.
        restricted_join_rule: v8+: `restricted` join rule.
        knock_restricted_join_rule: v10+: `knock_restricted` join rule.
        integer_power_levels: v10+: power level values must be integers (not
            strings, not floats).
        msc2175_implicit_room_creator: v11+: the create event has no `creator`
            key; the creator is the sender.
        msc2176_redaction_rules: v11+ redaction rules (see RedactionRules.V11).
        msc3821_redaction_rules / msc3989: folded into RedactionRules.V11.
        v11_top_level_keys: v11+: `origin`, `membership`, `prev_state` are not
            protocol fields (dropped by redaction).
        room_id_from_create: v12: the room ID is the create event's reference
            hash with sigil "!"; the create event has no room_id and is never
            in auth_events.
        privileged_creators: v12: creators (create sender plus
            `additional_creators`) have infinite power and cannot appear in
            power levels `users`.
        stringy_power_levels: v1-v9: power level values may be strings that
            parse as integers.
        floaty_power_levels: v1-v5: power level values may be floats (their
            integer part is used). From v6 strict canonical JSON forbids them.
    """

    identifier: str
    event_format: EventFormat
    state_res: StateResAlgorithm
    redaction: RedactionRules
    enforce_key_validity: bool
    strict_canonical_json: bool
    special_case_aliases_auth: bool
    limit_notifications_power_levels: bool
    knock_join_rule: bool
    restricted_join_rule: bool
    knock_restricted_join_rule: bool
    integer_power_levels: bool
    msc2175_implicit_room_creator: bool
    v11_top_level_keys: bool
    room_id_from_create: bool
    privileged_creators: bool

    @property
    def stringy_power_levels(self) -> bool:
        return not self.integer_power_levels

    @property
    def floaty_power_levels(self) -> bool:
        return not self.strict_canonical_json

    @property
    def event_id_in_pdu(self) -> bool:
        return self.event_format is EventFormat.V1


def _v(
    identifier: str,
    *,
    event_format: EventFormat,
    state_res: StateResAlgorithm,
    redaction: RedactionRules,
    n: int,
) -> RoomVersion:
    return RoomVersion(
        identifier=identifier,
        event_format=event_format,
        state_res=state_res,
        redaction=redaction,
        enforce_key_validity=n >= 5,
        strict_canonical_json=n >= 6,
        special_case_aliases_auth=n <= 5,
        limit_notifications_power_levels=n >= 6,
        knock_join_rule=n >= 7,
        restricted_join_rule=n >= 8,
        knock_restricted_join_rule=n >= 10,
        integer_power_levels=n >= 10,
        msc2175_implicit_room_creator=n >= 11,
        v11_top_level_keys=n >= 11,
        room_id_from_create=n >= 12,
        privileged_creators=n >= 12,
    )


_F = EventFormat
_S = StateResAlgorithm
_R = RedactionRules

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v
    for v in (
        _v("1", event_format=_F.V1, state_res=_S.V1, redaction=_R.V1, n=1),
        _v("2", event_format=_F.V1, state_res=_S.V2, redaction=_R.V1, n=2),
        _v("3", event_format=_F.V2, state_res=_S.V2, redaction=_R.V1, n=3),
        _v("4", event_format=_F.V3, state_res=_S.V2, redaction=_R.V1, n=4),
        _v("5", event_format=_F.V3, state_res=_S.V2, redaction=_R.V1, n=5),
        _v("6", event_format=_F.V3, state_res=_S.V2, redaction=_R.V6, n=6),
        _v("7", event_format=_F.V3, state_res=_S.V2, redaction=_R.V6, n=7),
        _v("8", event_format=_F.V3, state_res=_S.V2, redaction=_R.V8, n=8),
        _v("9", event_format=_F.V3, state_res=_S.V2, redaction=_R.V9, n=9),
        _v("10", event_format=_F.V3, state_res=_S.V2, redaction=_R.V9, n=10),
        _v("11", event_format=_F.V3, state_res=_S.V2, redaction=_R.V11, n=11),
        _v("12", event_format=_F.V3, state_res=_S.V2_1, redaction=_R.V11, n=12),
    )
}

# The spec recommends that new rooms use version 12; config may override it.
DEFAULT_ROOM_VERSION = "12"


def get_room_version(identifier: str) -> RoomVersion:
    """Return the RoomVersion for ``identifier``.

    Raises:
        KeyError: the version is not one matrixfed knows.
    """
    return KNOWN_ROOM_VERSIONS[identifier]
