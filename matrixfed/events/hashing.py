"""Content hashes, reference hashes, event IDs and v12 room IDs.

See server-server-api.md "Calculating the content hash for an event",
"Calculating the reference hash for an event" and rooms/*-event-ids.md.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from unpaddedbase64 import decode_base64, encode_base64

from matrixfed.events.canonical import encode_canonical
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import EventFormat, RoomVersion

# Keys never covered by the content hash.
_NOT_HASHED = ("unsigned", "signatures", "hashes")


def compute_content_hash(pdu: dict[str, Any]) -> bytes:
    """SHA-256 over the canonical JSON of ``pdu`` without unsigned, signatures, hashes."""
    stripped = {k: v for k, v in pdu.items() if k not in _NOT_HASHED}
    return hashlib.sha256(encode_canonical(stripped)).digest()


def check_content_hash(pdu: dict[str, Any]) -> bool:
    """True if ``pdu["hashes"]["sha256"]`` matches the computed content hash."""
    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    try:
        expected = decode_base64(claimed)
    except Exception:
        return False
    return expected == compute_content_hash(pdu)


def add_content_hash(pdu: dict[str, Any]) -> None:
    """Set ``pdu["hashes"]["sha256"]`` in place."""
    pdu["hashes"] = {"sha256": encode_base64(compute_content_hash(pdu))}


def redacted_signing_json(pdu: dict[str, Any], room_version: RoomVersion) -> bytes:
    """Canonical JSON of the redacted event without ``signatures`` and ``unsigned``.

    These are the bytes every server signature on the event covers, and their
    SHA-256 is the reference hash: compute them once per event for both.
    """
    redacted = redact(pdu, room_version)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return encode_canonical(redacted)


def compute_reference_hash(pdu: dict[str, Any], room_version: RoomVersion) -> bytes:
    """SHA-256 over the canonical JSON of the redacted event without signatures/unsigned."""
    return hashlib.sha256(redacted_signing_json(pdu, room_version)).digest()


def event_id_from_reference_hash(reference_hash: bytes, room_version: RoomVersion) -> str:
    """``$`` and the unpadded base64 of ``reference_hash`` (URL-safe from v4).

    Raises:
        ValueError: room versions 1 and 2, whose event IDs are not hashes.
    """
    # Same result as unpaddedbase64.encode_base64, without its extra copies:
    # this runs once per received event.
    if room_version.event_format is EventFormat.V3:
        return "$" + base64.urlsafe_b64encode(reference_hash).decode("ascii").rstrip("=")
    if room_version.event_format is EventFormat.V2:
        return "$" + base64.b64encode(reference_hash).decode("ascii").rstrip("=")
    raise ValueError("room versions 1 and 2 carry their event IDs in the PDU")


def compute_event_id(pdu: dict[str, Any], room_version: RoomVersion) -> str:
    """The event ID of ``pdu`` (v3+: derived from the reference hash; v1/v2: as given)."""
    if room_version.event_format is EventFormat.V1:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str):
            raise ValueError("v1/v2 event has no event_id")
        return event_id
    return event_id_from_reference_hash(compute_reference_hash(pdu, room_version), room_version)


def room_id_from_create_event_id(create_event_id: str) -> str:
    """v12: the room ID is the create event's ID with sigil "!"."""
    return "!" + create_event_id[1:]
