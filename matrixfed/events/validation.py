"""PDU format validation per room version.

``validate_pdu`` decides whether a PDU is well-formed for its room version:
required fields and their JSON types, identifier grammar, the spec's size and
count limits, and (room versions 6+) strict canonical JSON. It is total: for
any input (any value json.loads can produce, or anything else) it either
returns or raises ``InvalidEventError`` whose message names the field; it
never raises anything else.

What it does not decide: whether the event is genuine (signing.py), whether
its content hash matches (a mismatch means "use the redacted form", not
"invalid"), and whether the event is allowed. The auth rules own some checks
that look like format: an ``m.room.member`` without ``state_key`` or
``membership``, or a v12 ``m.room.create`` carrying a ``room_id``, is a
*rejected* event, not a malformed one, so it passes here.

Size limits of identifiers: from room version 11 they are in bytes and an
event over them is dropped. In room versions 1-10 servers long measured them
in code points, so events there that fit in code points but not in bytes are
reported as ``EventSizeError(rejectable=True)`` (keep, mark rejected) rather
than dropped; that error is raised only once every other check has passed.

Sources: server-server-api.md "PDUs"; the pdu_v1/v3/v4/v6/v11/v12 schemas
under data/api/server-server/definitions; client-server-api "Size limits";
appendices "Canonical JSON" and "Identifier Grammar"; /work/shared/INTEROP.md
for the ``[event_id, {}]`` references Synapse sends in room versions 1 and 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from matrixfed.errors import EventSizeError, InvalidEventError
from matrixfed.events.canonical import encode_canonical
from matrixfed.events.identifiers import (
    DOMAIN_ROOM_ID_RE,
    HASH_EVENT_ID_STD_RE,
    HASH_EVENT_ID_URLSAFE_RE,
    HASH_ROOM_ID_RE,
    MAX_ID_BYTES,
    USER_ID_RE,
    is_valid_v1_event_id,
    utf8_len,
)
from matrixfed.events.room_versions import EventFormat, RoomVersion

# spec: CS "Size limits": canonical JSON of the whole federation-format PDU,
# signatures included.
MAX_PDU_BYTES = 65536
# spec: PDU schemas: "Must contain less than or equal to 10 events".
MAX_AUTH_EVENTS = 10
# spec: PDU schemas: "Must contain less than or equal to 20 events".
MAX_PREV_EVENTS = 20
# spec: appendices "Canonical JSON": integers in [-(2**53)+1, (2**53)-1] (v6+).
CANONICAL_INT_MAX = 2**53 - 1
CANONICAL_INT_MIN = -(2**53) + 1
# spec: pdu_v1/v3/v4 depth below 2**63-1; origin_server_ts is int64 (v1-v5).
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# Room versions whose identifier limits were enforced in code points in
# practice (see the module docstring).
_CODEPOINT_LIMIT_VERSIONS = frozenset({"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"})

# What encoding arbitrary data as canonical JSON can raise: NaN/Infinity and
# circular data (ValueError), lone surrogates (UnicodeEncodeError, a
# ValueError), non-JSON types or mixed key types (TypeError), deep nesting.
ENCODE_ERRORS = (ValueError, TypeError, RecursionError)


# Identifiers this short cannot exceed MAX_ID_BYTES (4 bytes per code point at
# most), so their size is not computed; a lone surrogate in one is caught when
# the PDU is encoded (validate_pdu and check_pdu always encode it).
_SHORT = MAX_ID_BYTES // 4

# Top-level members whose whole value the field checks have typed as strings,
# in-range integers or lists/objects of strings (room versions 6+ only, whose
# references are event ID strings). The strict canonical JSON walk skips them.
_TYPED_MEMBERS = frozenset(
    {
        "type",
        "sender",
        "room_id",
        "state_key",
        "origin_server_ts",
        "depth",
        "signatures",
        "prev_events",
        "auth_events",
    }
)


class _NotStrict(Exception):
    """Raised by the strict canonical JSON walk; ``path`` is built leaf first."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def validate_pdu(pdu: Any, room_version: RoomVersion, *, backfilled: bool = False) -> None:
    """Check that ``pdu`` is a well-formed PDU for ``room_version``.

    Args:
        pdu: the PDU as decoded from JSON (untrusted; any type).
        room_version: the version of the room the PDU claims to belong to.
        backfilled: the PDU came from backfill, state or an auth chain, where
            the 10 auth_events / 20 prev_events limits do not apply.

    Raises:
        matrixfed.errors.InvalidEventError: the PDU is malformed; the message
            says why. ``EventSizeError`` (a subclass) for size limits.
    """
    validate_pdu_with_size(pdu, room_version, None, backfilled=backfilled)


def validate_pdu_with_size(
    pdu: Any,
    room_version: RoomVersion,
    canonical_size: int | None,
    *,
    backfilled: bool = False,
) -> None:
    """``validate_pdu`` for callers that already know the PDU's encoded size.

    Args:
        pdu: as for ``validate_pdu``.
        room_version: as for ``validate_pdu``.
        canonical_size: the length in bytes of the canonical JSON of the whole
            PDU, or None to have it computed here.
        backfilled: as for ``validate_pdu``.

    Raises:
        matrixfed.errors.InvalidEventError: as for ``validate_pdu``.
    """
    if type(pdu) is not dict:
        raise InvalidEventError("PDU is not a JSON object")
    rules = _rules_for(room_version)
    # A limit exceeded in bytes only, in a room version that counted code
    # points: reported last, as a rejectable error, if nothing worse is found.
    pending: list[str] = []

    event_type = pdu.get("type")
    if type(event_type) is not str:
        raise InvalidEventError("type is missing or not a string")
    if len(event_type) > _SHORT:
        _check_id_size("type", event_type, rules.lenient, pending)

    sender = pdu.get("sender")
    if type(sender) is not str:
        raise InvalidEventError("sender is missing or not a string")
    if USER_ID_RE.fullmatch(sender) is None:
        raise InvalidEventError(f"sender {sender!r} is not a valid user ID")
    if len(sender) > _SHORT:
        _check_id_size("sender", sender, rules.lenient, pending)

    _check_room_id(pdu, event_type, rules, pending)

    if rules.v1_format:
        event_id = _str_field(pdu, "event_id")
        if not is_valid_v1_event_id(event_id, check_length=False):
            raise InvalidEventError(f"event_id {event_id!r} is not of the form $opaque:server")
        _check_id_size("event_id", event_id, rules.lenient, pending)

    if "state_key" in pdu:
        state_key = pdu["state_key"]
        if type(state_key) is not str:
            raise InvalidEventError("state_key is not a string")
        if len(state_key) > _SHORT:
            _check_id_size("state_key", state_key, rules.lenient, pending)

    if type(pdu.get("content")) is not dict:
        raise InvalidEventError("content is missing or not a JSON object")

    ts = pdu.get("origin_server_ts")
    if type(ts) is not int:
        raise InvalidEventError("origin_server_ts is missing or not an integer")
    if not rules.int_min <= ts <= rules.int_max:
        raise InvalidEventError(f"origin_server_ts {ts} is out of range")
    depth = pdu.get("depth")
    if type(depth) is not int:
        raise InvalidEventError("depth is missing or not an integer")
    if not 0 <= depth <= rules.int_max:
        raise InvalidEventError(f"depth {depth} is out of range [0, {rules.int_max}]")

    hashes = pdu.get("hashes")
    if type(hashes) is not dict:
        raise InvalidEventError("hashes is missing or not a JSON object")
    if type(hashes.get("sha256")) is not str:
        raise InvalidEventError("hashes.sha256 is missing or not a string")
    _check_signatures(pdu.get("signatures"))
    if "unsigned" in pdu and type(pdu["unsigned"]) is not dict:
        raise InvalidEventError("unsigned is not a JSON object")

    _check_refs(pdu, "auth_events", MAX_AUTH_EVENTS, rules, backfilled)
    _check_refs(pdu, "prev_events", MAX_PREV_EVENTS, rules, backfilled)

    if rules.typed_redacts and "redacts" in pdu and type(pdu["redacts"]) is not str:
        raise InvalidEventError("redacts is not a string")

    if rules.strict:
        # Members checked above hold only strings and in-range integers.
        for key, value in pdu.items():
            if key in _TYPED_MEMBERS:
                continue
            try:
                _walk_strict_value(value)
            except _NotStrict as e:
                e.path.append(str(key))
                where = ".".join(reversed(e.path))
                raise InvalidEventError(f"{where}: {e.reason} (strict canonical JSON)") from None
            except RecursionError:
                raise InvalidEventError(f"{key} is nested too deeply") from None

    if canonical_size is None:
        try:
            canonical_size = len(encode_canonical(pdu))
        except ENCODE_ERRORS as e:
            raise InvalidEventError(f"PDU cannot be encoded as canonical JSON: {e}") from None
    check_pdu_size(canonical_size)

    if pending:
        raise EventSizeError(pending[0], rejectable=True)


@attrs.frozen(slots=True)
class _Rules:
    """What validation needs from a room version, looked up once per version."""

    lenient: bool  # identifier limits in code points (see module docstring)
    strict: bool  # strict canonical JSON
    int_min: int  # range of origin_server_ts; int_max also bounds depth
    int_max: int
    v1_format: bool  # event_id in the PDU, [id, hashes] references
    hash_room_ids: bool  # v12 room IDs
    typed_redacts: bool  # top-level redacts is a protocol field (v1-v10)
    ref_match: Callable[[str], re.Match[str] | None]


# Keyed by object identity (hashing a RoomVersion hashes all of its fields);
# the entry keeps the RoomVersion alive, so its id is never reused.
_RULES: dict[int, tuple[RoomVersion, _Rules]] = {}


def _rules_for(room_version: RoomVersion) -> _Rules:
    entry = _RULES.get(id(room_version))
    if entry is not None:
        return entry[1]
    strict = room_version.strict_canonical_json
    fmt = room_version.event_format
    rules = _Rules(
        lenient=room_version.identifier in _CODEPOINT_LIMIT_VERSIONS,
        strict=strict,
        int_min=CANONICAL_INT_MIN if strict else INT64_MIN,
        int_max=CANONICAL_INT_MAX if strict else INT64_MAX,
        v1_format=fmt is EventFormat.V1,
        hash_room_ids=room_version.room_id_from_create,
        typed_redacts=not room_version.v11_top_level_keys,
        ref_match=(
            HASH_EVENT_ID_URLSAFE_RE if fmt is EventFormat.V3 else HASH_EVENT_ID_STD_RE
        ).fullmatch,
    )
    _RULES[id(room_version)] = (room_version, rules)
    return rules


def check_pdu_size(canonical_size: int) -> None:
    """Raise ``EventSizeError`` if a PDU of ``canonical_size`` bytes is too large."""
    if canonical_size > MAX_PDU_BYTES:
        raise EventSizeError(
            f"PDU is {canonical_size} bytes as canonical JSON, over the {MAX_PDU_BYTES} limit"
        )


def _str_field(pdu: dict[str, Any], key: str) -> str:
    value = pdu.get(key)
    if type(value) is not str:
        raise InvalidEventError(f"{key} is missing or not a string")
    return value


def _check_id_size(field: str, value: str, lenient: bool, pending: list[str]) -> None:
    n = utf8_len(value)
    if n < 0:
        raise InvalidEventError(f"{field} is not valid Unicode (lone surrogate)")
    if n <= MAX_ID_BYTES:
        return
    message = f"{field} is {n} bytes, over the {MAX_ID_BYTES}-byte limit"
    if lenient and len(value) <= MAX_ID_BYTES:
        pending.append(message)
        return
    raise EventSizeError(message)


def _check_room_id(pdu: dict[str, Any], event_type: str, rules: _Rules, pending: list[str]) -> None:
    if rules.hash_room_ids:
        if event_type == "m.room.create":
            # The create event names no room (its ID is the room's). One that
            # does anyway is rejected by auth rule 1.2, so only the type
            # matters here.
            if "room_id" in pdu:
                _check_id_size("room_id", _str_field(pdu, "room_id"), False, pending)
            return
        room_id = _str_field(pdu, "room_id")
        if HASH_ROOM_ID_RE.fullmatch(room_id) is None:
            raise InvalidEventError(
                f"room_id {room_id!r} is not '!' and the URL-safe base64 hash of a create event"
            )
        return
    room_id = _str_field(pdu, "room_id")
    if DOMAIN_ROOM_ID_RE.fullmatch(room_id) is None:
        raise InvalidEventError(f"room_id {room_id!r} is not of the form !opaque:server")
    if len(room_id) > _SHORT:
        _check_id_size("room_id", room_id, rules.lenient, pending)


def _check_signatures(signatures: Any) -> None:
    if type(signatures) is not dict:
        raise InvalidEventError("signatures is missing or not a JSON object")
    for server, sigs in signatures.items():
        if type(sigs) is not dict:
            raise InvalidEventError(f"signatures[{server!r}] is not a JSON object")
        for key_id, sig in sigs.items():
            if type(sig) is not str:
                raise InvalidEventError(f"signatures[{server!r}][{key_id!r}] is not a string")


def _check_refs(pdu: dict[str, Any], key: str, limit: int, rules: _Rules, backfilled: bool) -> None:
    refs = pdu.get(key)
    if type(refs) is not list:
        raise InvalidEventError(f"{key} is missing or not a list")
    if len(refs) > limit and not backfilled:
        raise InvalidEventError(f"{key} has {len(refs)} entries, over the limit of {limit}")
    if rules.v1_format:
        for ref in refs:
            # [event_id, {"sha256": ...}]; Synapse sends {} for the hashes of
            # some events (INTEROP.md), which is accepted.
            if type(ref) is not list or len(ref) != 2:
                raise InvalidEventError(f"{key} entry {ref!r} is not [event_id, hashes]")
            event_id, hashes = ref
            if type(event_id) is not str or not is_valid_v1_event_id(event_id):
                raise InvalidEventError(f"{key} entry {event_id!r} is not a v1 event ID")
            if type(hashes) is not dict:
                raise InvalidEventError(f"{key} entry for {event_id} has no hashes object")
            if "sha256" in hashes and type(hashes["sha256"]) is not str:
                raise InvalidEventError(f"{key} entry for {event_id} has a non-string sha256")
        return
    match = rules.ref_match
    for ref in refs:
        if type(ref) is not str or match(ref) is None:
            raise InvalidEventError(f"{key} entry {ref!r} is not an event ID of this room version")


def _walk_strict_value(value: Any) -> None:
    """Raise _NotStrict if ``value`` holds a float, an integer out of range or
    anything that is not JSON."""
    t = type(value)
    if t is dict:
        items: Any = value.items()
    elif t is list:
        items = enumerate(value)
    elif t is str or t is bool or value is None:
        return
    elif t is int:
        if value > CANONICAL_INT_MAX or value < CANONICAL_INT_MIN:
            raise _NotStrict(f"integer {value} is outside [-(2**53)+1, 2**53-1]")
        return
    else:
        raise _NotStrict(_not_strict_reason(value))
    for k, v in items:
        tv = type(v)
        if tv is str or tv is bool or v is None:
            continue
        if tv is int and CANONICAL_INT_MIN <= v <= CANONICAL_INT_MAX:
            continue
        try:
            _walk_strict_value(v)
        except _NotStrict as e:
            e.path.append(str(k))
            raise


def _not_strict_reason(value: Any) -> str:
    if isinstance(value, float):
        return f"float {value!r} is not allowed"
    return f"{type(value).__name__} is not a JSON value"
