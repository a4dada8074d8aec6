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

from typing import Any

from matrixfed.errors import EventSizeError, InvalidEventError
from matrixfed.events.canonical import encode_canonical
from matrixfed.events.identifiers import (
    HASH_EVENT_ID_STD_RE,
    HASH_EVENT_ID_URLSAFE_RE,
    HASH_ROOM_ID_RE,
    MAX_ID_BYTES,
    USER_ID_RE,
    is_valid_domain_room_id,
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
# most); lone surrogates in them are caught when the PDU is encoded.
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
    lenient = room_version.identifier in _CODEPOINT_LIMIT_VERSIONS
    # A limit exceeded in bytes only, in a room version that counted code
    # points: reported last, as a rejectable error, if nothing worse is found.
    pending: list[str] = []

    event_type = _str_field(pdu, "type")
    if len(event_type) > _SHORT:
        _check_id_size("type", event_type, lenient, pending)

    sender = _str_field(pdu, "sender")
    if USER_ID_RE.fullmatch(sender) is None:
        raise InvalidEventError(f"sender {sender!r} is not a valid user ID")
    _check_id_size("sender", sender, lenient, pending)

    _check_room_id(pdu, event_type, room_version, lenient, pending)

    if room_version.event_format is EventFormat.V1:
        event_id = _str_field(pdu, "event_id")
        if not is_valid_v1_event_id(event_id, check_length=False):
            raise InvalidEventError(f"event_id {event_id!r} is not of the form $opaque:server")
        _check_id_size("event_id", event_id, lenient, pending)

    if "state_key" in pdu:
        state_key = pdu["state_key"]
        if type(state_key) is not str:
            raise InvalidEventError("state_key is not a string")
        if len(state_key) > _SHORT:
            _check_id_size("state_key", state_key, lenient, pending)

    if type(pdu.get("content")) is not dict:
        raise InvalidEventError("content is missing or not a JSON object")

    if room_version.strict_canonical_json:
        int_min, int_max, depth_max = CANONICAL_INT_MIN, CANONICAL_INT_MAX, CANONICAL_INT_MAX
    else:
        int_min, int_max, depth_max = INT64_MIN, INT64_MAX, INT64_MAX
    ts = pdu.get("origin_server_ts")
    if type(ts) is not int:
        raise InvalidEventError("origin_server_ts is missing or not an integer")
    if not int_min <= ts <= int_max:
        raise InvalidEventError(f"origin_server_ts {ts} is out of range")
    depth = pdu.get("depth")
    if type(depth) is not int:
        raise InvalidEventError("depth is missing or not an integer")
    if not 0 <= depth <= depth_max:
        raise InvalidEventError(f"depth {depth} is out of range [0, {depth_max}]")

    _check_hashes(pdu.get("hashes"))
    _check_signatures(pdu.get("signatures"))
    if "unsigned" in pdu and type(pdu["unsigned"]) is not dict:
        raise InvalidEventError("unsigned is not a JSON object")

    _check_refs(pdu, "auth_events", MAX_AUTH_EVENTS, room_version, backfilled)
    _check_refs(pdu, "prev_events", MAX_PREV_EVENTS, room_version, backfilled)

    if not room_version.v11_top_level_keys and "redacts" in pdu:
        if type(pdu["redacts"]) is not str:
            raise InvalidEventError("redacts is not a string")

    if room_version.strict_canonical_json:
        try:
            # Members checked above hold only strings and in-range integers.
            _walk_strict_dict({k: v for k, v in pdu.items() if k not in _TYPED_MEMBERS})
        except _NotStrict as e:
            where = ".".join(reversed(e.path)) or "PDU"
            raise InvalidEventError(f"{where}: {e.reason} (strict canonical JSON)") from None
        except RecursionError:
            raise InvalidEventError("PDU is nested too deeply") from None

    if canonical_size is None:
        try:
            canonical_size = len(encode_canonical(pdu))
        except ENCODE_ERRORS as e:
            raise InvalidEventError(f"PDU cannot be encoded as canonical JSON: {e}") from None
    check_pdu_size(canonical_size)

    if pending:
        raise EventSizeError(pending[0], rejectable=True)


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


def _check_room_id(
    pdu: dict[str, Any],
    event_type: str,
    room_version: RoomVersion,
    lenient: bool,
    pending: list[str],
) -> None:
    if room_version.room_id_from_create:
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
    if not is_valid_domain_room_id(room_id, check_length=False):
        raise InvalidEventError(f"room_id {room_id!r} is not of the form !opaque:server")
    _check_id_size("room_id", room_id, lenient, pending)


def _check_hashes(hashes: Any) -> None:
    if type(hashes) is not dict:
        raise InvalidEventError("hashes is missing or not a JSON object")
    if type(hashes.get("sha256")) is not str:
        raise InvalidEventError("hashes.sha256 is missing or not a string")


def _check_signatures(signatures: Any) -> None:
    if type(signatures) is not dict:
        raise InvalidEventError("signatures is missing or not a JSON object")
    for server, sigs in signatures.items():
        if type(sigs) is not dict:
            raise InvalidEventError(f"signatures[{server!r}] is not a JSON object")
        for key_id, sig in sigs.items():
            if type(sig) is not str:
                raise InvalidEventError(f"signatures[{server!r}][{key_id!r}] is not a string")


def _check_refs(
    pdu: dict[str, Any],
    key: str,
    limit: int,
    room_version: RoomVersion,
    backfilled: bool,
) -> None:
    refs = pdu.get(key)
    if type(refs) is not list:
        raise InvalidEventError(f"{key} is missing or not a list")
    if len(refs) > limit and not backfilled:
        raise InvalidEventError(f"{key} has {len(refs)} entries, over the limit of {limit}")
    fmt = room_version.event_format
    if fmt is EventFormat.V1:
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
    match = (HASH_EVENT_ID_URLSAFE_RE if fmt is EventFormat.V3 else HASH_EVENT_ID_STD_RE).fullmatch
    for ref in refs:
        if type(ref) is not str or match(ref) is None:
            raise InvalidEventError(
                f"{key} entry {ref!r} is not an event ID of room version {room_version.identifier}"
            )


def _walk_strict_dict(value: dict[Any, Any]) -> None:
    for k, v in value.items():
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if v > CANONICAL_INT_MAX or v < CANONICAL_INT_MIN:
                e = _NotStrict(f"integer {v} is outside [-(2**53)+1, 2**53-1]")
                e.path.append(str(k))
                raise e
            continue
        try:
            if t is dict:
                _walk_strict_dict(v)
            elif t is list:
                _walk_strict_list(v)
            else:
                raise _NotStrict(_not_strict_reason(v))
        except _NotStrict as e:
            e.path.append(str(k))
            raise


def _walk_strict_list(value: list[Any]) -> None:
    for i, v in enumerate(value):
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if v > CANONICAL_INT_MAX or v < CANONICAL_INT_MIN:
                e = _NotStrict(f"integer {v} is outside [-(2**53)+1, 2**53-1]")
                e.path.append(str(i))
                raise e
            continue
        try:
            if t is dict:
                _walk_strict_dict(v)
            elif t is list:
                _walk_strict_list(v)
            else:
                raise _NotStrict(_not_strict_reason(v))
        except _NotStrict as e:
            e.path.append(str(i))
            raise


def _not_strict_reason(value: Any) -> str:
    if isinstance(value, float):
        return f"float {value!r} is not allowed"
    return f"{type(value).__name__} is not a JSON value"
