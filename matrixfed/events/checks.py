"""The state-free checks on a received PDU, with each encoding done once.

``check_pdu`` runs steps 1-3 of server-server-api.md "Checks performed on
receipt of a PDU" for one PDU: format (``validate_pdu``), signatures
(``signing``), content hash (a mismatch yields the redacted event). It
returns the ``Event`` to process further (auth rules are the caller's next
step) or raises:

- ``InvalidEventError``: malformed; drop it. An ``EventSizeError`` with
  ``rejectable=True`` is different: its signatures and hash were checked and
  ``error.event`` holds the event, to be stored as rejected (room versions
  1-10, identifiers over 255 bytes but not over 255 code points).
- ``SignatureError``: not genuine; drop it.

It gives the same answers as calling ``validate_pdu``, ``Event(...)``,
``verify_event_signatures`` and ``check_hash_or_redact`` in turn, but
encodes each top-level member of the PDU once (``_encode_members``) and
assembles from those pieces the hashed part (content hash), the whole-PDU
size, and the redacted form (reference hash, hence the event ID, and the
bytes every signature covers), re-encoding only the redacted content. Where
that is not possible (no C encoder, or data that is not canonical JSON) it
encodes whole objects as the step-by-step functions do, and reports the
same errors.

``check_pdus`` does a list and returns one result per PDU. It prepares
every PDU first and then verifies all signatures back to back, which keeps
the ed25519 code hot and makes it markedly faster per event than a loop over
``check_pdu``: use it for transactions and join responses. It has no shared
state, so callers run chunks of a large batch on a thread pool (nacl releases
the GIL while verifying).
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from unpaddedbase64 import decode_base64

from matrixfed.errors import EventSizeError, InvalidEventError, SignatureError
from matrixfed.events.canonical import (
    encode_canonical,
    encode_canonical_string,
    encode_canonical_text,
)
from matrixfed.events.hashing import event_id_from_reference_hash
from matrixfed.events.keys import KeyMap
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact, redacted_content, top_level_keys
from matrixfed.events.room_versions import EventFormat, RoomVersion
from matrixfed.events.signing import signing_servers, verify_signatures_over
from matrixfed.events.validation import ENCODE_ERRORS, validate_pdu_with_size

# Top-level keys the content hash leaves out (spec: "Calculating the content hash").
_NOT_HASHED = ("hashes", "signatures", "unsigned")

CheckResult = Event | InvalidEventError | SignatureError


def check_pdu(
    pdu: Any,
    room_version: RoomVersion,
    keys: KeyMap,
    *,
    backfilled: bool = False,
) -> Event:
    """Validate, verify and hash-check one received PDU.

    Args:
        pdu: the PDU as decoded from JSON (untrusted).
        room_version: the version of the room it belongs to.
        keys: verify keys, at least those ``needed_keys_for_pdus`` listed.
        backfilled: the PDU came from backfill, state or an auth chain (no
            auth_events/prev_events count limits).

    Returns:
        The event, or its redacted form if the content hash did not match.

    Raises:
        matrixfed.errors.InvalidEventError: malformed (see module docstring
            for the rejectable EventSizeError).
        matrixfed.errors.SignatureError: a required signature is missing or bad.
    """
    return _finish(_prepare(pdu, room_version, backfilled), keys)


def check_pdus(
    pdus: Sequence[Any],
    room_version: RoomVersion,
    keys: KeyMap,
    *,
    backfilled: bool = False,
) -> list[CheckResult]:
    """``check_pdu`` over a list; one result per PDU, in order.

    Faster per event than calling ``check_pdu`` in a loop: it first encodes
    and validates every PDU, then verifies all signatures back to back, so
    the ed25519 code and tables stay in the CPU caches.

    Returns:
        For each PDU the Event (possibly redacted) or the InvalidEventError /
        SignatureError it raised.
    """
    prepared: list[_Prepared | InvalidEventError | SignatureError] = []
    for pdu in pdus:
        try:
            prepared.append(_prepare(pdu, room_version, backfilled))
        except (InvalidEventError, SignatureError) as e:
            prepared.append(e)
    results: list[CheckResult] = []
    for item in prepared:
        if isinstance(item, _Prepared):
            try:
                results.append(_finish(item, keys))
            except (InvalidEventError, SignatureError) as e:
                results.append(e)
        else:
            results.append(item)
    return results


class _Prepared(NamedTuple):
    """A PDU that passed validation, with what verifying it needs (a
    NamedTuple: cheap to build once per event, immutable)."""

    pdu: dict[str, Any]
    room_version: RoomVersion
    event_id: str
    content_json: bytes  # canonical JSON of the hashed part
    signatures: Any
    signing_json: bytes  # canonical JSON of the redacted form without signatures
    servers: set[str]
    any_server: bool
    rejectable: EventSizeError | None


# The JSON text of the top-level keys of the protocol, ready to prefix a
# member's value (other keys are encoded as they come; not cached, as they
# are chosen by the sender).
_KEY_TEXT = {
    key: f'"{key}":'
    for key in (
        "auth_events",
        "content",
        "depth",
        "event_id",
        "hashes",
        "membership",
        "origin",
        "origin_server_ts",
        "prev_events",
        "prev_state",
        "redacts",
        "room_id",
        "sender",
        "signatures",
        "state_key",
        "type",
        "unsigned",
    )
}
_NOT_HASHED_SET = frozenset(_NOT_HASHED)


def _encode_members(pdu: dict[str, Any]) -> tuple[bytes, int, list[tuple[str, str]]]:
    """Canonical JSON of the hashed part, the whole PDU's encoded size, and
    every top-level member's ``"key":value`` text in canonical (sorted) order.

    Each value is encoded once; the hashed part, the whole size and (later)
    the redacted form are assembled from these pieces. Canonical JSON of an
    object is "{", its members sorted by key and joined by ",", then "}", so
    the result is byte for byte what encoding the objects whole gives.

    Raises:
        ENCODE_ERRORS: something is not canonical JSON (the caller then takes
            the whole-object path, which reports it).
    """
    text = encode_canonical_text
    string = encode_canonical_string
    assert text is not None and string is not None  # checked by the caller
    members: list[tuple[str, str]] = []
    hashed: list[str] = []
    rest = 0  # bytes the left-out members add to the whole PDU, commas included
    for key in sorted(pdu):
        value = pdu[key]
        kind = type(value)
        if kind is str:
            value_text = string(value)
        elif kind is int:
            value_text = int.__repr__(value)
        else:
            value_text = text(value)
        prefix = _KEY_TEXT.get(key)
        member = (prefix if prefix is not None else string(key) + ":") + value_text
        members.append((key, member))
        if key in _NOT_HASHED_SET:
            rest += len(member.encode("utf-8")) + 1
        else:
            hashed.append(member)
    content_json = ("{" + ",".join(hashed) + "}").encode("utf-8")
    size = len(content_json) + rest
    if rest and not hashed:
        size -= 1  # no comma between "{" and the first left-out member
    return content_json, size, members


def _signing_json(
    pdu: dict[str, Any], room_version: RoomVersion, members: list[tuple[str, str]]
) -> bytes:
    """Canonical JSON of ``redact(pdu)`` without signatures, from the member
    texts of a validated PDU (its content is an object)."""
    text = encode_canonical_text
    assert text is not None  # members exist only where it does
    allowed = top_level_keys(room_version)
    kept = redacted_content(pdu["type"], pdu["content"], room_version)
    parts: list[str] = []
    for key, member in members:
        if key in allowed and key != "signatures":
            if key == "content" and kept is not None:
                member = '"content":' + text(kept)
            parts.append(member)
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def _prepare(pdu: Any, room_version: RoomVersion, backfilled: bool) -> _Prepared:
    if type(pdu) is not dict:
        raise InvalidEventError("PDU is not a JSON object")
    members: list[tuple[str, str]] | None = None
    if encode_canonical_text is not None:
        try:
            content_json, size, members = _encode_members(pdu)
        except ENCODE_ERRORS:
            members = None  # the whole-object path below names the problem
    if members is None:
        try:
            hashed_part = {k: v for k, v in pdu.items() if k not in _NOT_HASHED}
            content_json = encode_canonical(hashed_part)
            size = _whole_size(content_json, pdu)
        except ENCODE_ERRORS as e:
            raise InvalidEventError(f"PDU cannot be encoded as canonical JSON: {e}") from None

    rejectable: EventSizeError | None = None
    try:
        validate_pdu_with_size(pdu, room_version, size, backfilled=backfilled)
    except EventSizeError as e:
        if not e.rejectable:
            raise
        rejectable = e

    if members is not None:
        signing_json = _signing_json(pdu, room_version, members)
    else:
        redacted = redact(pdu, room_version)
        redacted.pop("signatures", None)
        # Redaction never keeps ``unsigned``; the remaining dict is exactly
        # what signatures cover and what the reference hash is taken over.
        signing_json = encode_canonical(redacted)
    if room_version.event_format is EventFormat.V1:
        event_id: str = pdu["event_id"]
    else:
        event_id = event_id_from_reference_hash(hashlib.sha256(signing_json).digest(), room_version)
    servers, any_server = signing_servers(pdu, room_version)
    return _Prepared(
        pdu,
        room_version,
        event_id,
        content_json,
        pdu["signatures"],
        signing_json,
        servers,
        any_server,
        rejectable,
    )


def _finish(prep: _Prepared, keys: KeyMap) -> Event:
    pdu = prep.pdu
    verify_signatures_over(
        event_id=prep.event_id,
        signatures=prep.signatures,
        servers=prep.servers,
        any_server=prep.any_server,
        message=prep.signing_json,
        origin_server_ts=pdu["origin_server_ts"],
        room_version=prep.room_version,
        keys=keys,
    )
    if _hash_matches(pdu["hashes"]["sha256"], prep.content_json):
        event = Event(pdu, prep.room_version, prep.event_id)
    else:
        event = Event(redact(pdu, prep.room_version), prep.room_version, prep.event_id)
    if prep.rejectable is not None:
        raise EventSizeError(str(prep.rejectable), rejectable=True, event=event)
    return event


def _whole_size(content_json: bytes, pdu: dict[str, Any]) -> int:
    """Length of the canonical JSON of ``pdu`` from that of its hashed part.

    Canonical JSON of an object is "{", its members sorted and joined by ",",
    then "}"; the length does not depend on the order. So the whole PDU is the
    hashed part's members plus the left-out members, encoded together as one
    small object: the two lengths minus one pair of braces, plus a comma when
    both sides have members.
    """
    rest = {key: pdu[key] for key in _NOT_HASHED if key in pdu}
    if not rest:
        return len(content_json)
    rest_len = len(encode_canonical(rest))
    if len(content_json) == 2:  # "{}"
        return rest_len
    return len(content_json) + rest_len - 1


def _hash_matches(claimed_b64: str, content_json: bytes) -> bool:
    digest = hashlib.sha256(content_json).digest()
    # Fast path: the sender wrote the hash as we would (unpadded standard base64).
    if binascii.b2a_base64(digest, newline=False).decode("ascii").rstrip("=") == claimed_b64:
        return True
    # Otherwise decode leniently, as signedjson/Synapse do, and compare bytes.
    try:
        claimed = decode_base64(claimed_b64)
    except ValueError:  # binascii.Error (bad padding) and non-ASCII input
        return False
    return bool(claimed == digest)
