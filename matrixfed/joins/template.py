"""Checking a make_join/make_leave template and turning it into our signed event.

Guarantees: ``build_membership_event`` returns an event that passed the
template checks of the spec ("The joining server MUST also verify that the
type, room_id, sender, state_key and content.membership fields have the
expected values"), the room version is one we support, the result is a valid
PDU for that version (``Event.from_pdu``), hashed and signed by us, with our
``origin``, ``origin_server_ts`` and, for room versions 1 and 2, an event ID
of ours. Anything else raises ``AttemptError`` (the coordinator then tries
the next server). No I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from typing import Any

from signedjson.types import SigningKey

from matrixfed.errors import InvalidEventError
from matrixfed.events.model import Event
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from matrixfed.events.signing import sign_event
from matrixfed.joins.api import AttemptError

MEMBER = "m.room.member"
# spec (make_join): "If not provided, the room version is assumed to be either
# "1" or "2""; both share the event format, "1" is what Synapse assumes.
ROOM_VERSION_IF_MISSING = "1"
# Keys of the template that are ours to fill in, never the resident's.
_OURS = ("hashes", "signatures", "unsigned", "event_id")


def room_version_of_template(
    response: Mapping[str, Any], supported: Collection[str]
) -> RoomVersion:
    """The room version a make_join/make_leave answer names, if we support it.

    Raises:
        AttemptError: not a string, unknown, or not supported by us.
    """
    if not isinstance(response, Mapping):
        raise AttemptError(f"the answer is not a JSON object: {type(response).__name__}")
    version = response.get("room_version", ROOM_VERSION_IF_MISSING)
    if not isinstance(version, str):
        raise AttemptError(f"room_version is not a string: {version!r}")
    if version not in KNOWN_ROOM_VERSIONS or version not in supported:
        raise AttemptError(
            f"room version {version!r} is not supported", errcode="M_INCOMPATIBLE_ROOM_VERSION"
        )
    return KNOWN_ROOM_VERSIONS[version]


def build_membership_event(
    response: Mapping[str, Any],
    *,
    room_id: str,
    user_id: str,
    membership: str,
    room_version: RoomVersion,
    server_name: str,
    signing_key: SigningKey,
    now_ms: int,
) -> Event:
    """Check the template in ``response["event"]`` and build our signed event.

    Args:
        response: the make_join / make_leave answer.
        room_id: the room we asked about.
        user_id: the local user joining or leaving.
        membership: "join" or "leave".
        room_version: from ``room_version_of_template``.
        server_name: our server name (origin, signer, v1/v2 event ID domain).
        signing_key: our signing key.
        now_ms: origin_server_ts.

    Raises:
        AttemptError: the template is unusable (the message says why).
    """
    template = response.get("event")
    if not isinstance(template, dict):
        raise AttemptError("the answer has no event template")
    checks = (
        ("type", MEMBER),
        ("room_id", room_id),
        ("sender", user_id),
        ("state_key", user_id),
    )
    for key, expected in checks:
        if template.get(key) != expected:
            raise AttemptError(f"template {key} is {template.get(key)!r}, expected {expected!r}")
    content = template.get("content")
    if not isinstance(content, dict) or content.get("membership") != membership:
        got = content.get("membership") if isinstance(content, dict) else content
        raise AttemptError(f"template membership is {got!r}, expected {membership!r}")

    pdu: dict[str, Any] = {k: v for k, v in template.items() if k not in _OURS}
    pdu["content"] = dict(content)
    pdu["origin"] = server_name
    pdu["origin_server_ts"] = now_ms
    event_id: str | None = None
    if room_version.event_format is EventFormat.V1:
        event_id = f"${secrets.token_urlsafe(18)}:{server_name}"
        pdu["event_id"] = event_id
    try:
        sign_event(pdu, room_version, server_name, signing_key)
        return Event.from_pdu(pdu, room_version)
    except (InvalidEventError, ValueError, TypeError) as e:
        raise AttemptError(f"template is not a valid event: {e}") from None


def same_event_but_signatures(ours: Mapping[str, Any], theirs: Any) -> bool:
    """Whether ``theirs`` is ``ours`` with at most signatures (and unsigned) added.

    Our own signatures must still be there unchanged: the resident may only add.
    """
    if not isinstance(theirs, dict):
        return False
    skip = ("signatures", "unsigned")
    if {k: v for k, v in ours.items() if k not in skip} != {
        k: v for k, v in theirs.items() if k not in skip
    }:
        return False
    their_sigs = theirs.get("signatures")
    if not isinstance(their_sigs, dict):
        return False
    for server, sigs in ours.get("signatures", {}).items():
        got = their_sigs.get(server)
        if not isinstance(got, dict) or any(got.get(k) != v for k, v in sigs.items()):
            return False
    return True
