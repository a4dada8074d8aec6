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
encodes the PDU once instead of five times: its hashed part (no
hashes/signatures/unsigned) for the content hash; the small left-out members,
for the whole-PDU size; and the few content keys redaction keeps. The signed
bytes (the redacted form: reference hash, hence the event ID, and what every
signature covers) are cut out of the hashed part's text
(``_signing_json_from``). PDUs of an unusual shape have their redacted form
encoded whole, as the step-by-step functions do.

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
from matrixfed.events.redaction import redact, redacted_content
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


# Top-level keys of the PDUs ``_signing_json_from`` handles: the redacted
# form of such a PDU drops nothing but signatures and unsigned, in every room
# version (and ``origin`` too before v11). Other PDUs (v1/v2 ``event_id``,
# ``membership``/``prev_state``, unknown keys) take the general path.
_PLAIN_KEYS = frozenset(
    {
        "auth_events",
        "content",
        "depth",
        "hashes",
        "origin_server_ts",
        "prev_events",
        "room_id",
        "sender",
        "signatures",
        "state_key",
        "type",
        "unsigned",
    }
)
_PLAIN_KEYS_V1 = _PLAIN_KEYS | {"origin"}
_CONTENT_KEY = '"content":'
_DEPTH_KEY = ',"depth":'
_NEXT_KEY = ',"origin'  # "origin_server_ts", or "origin" before v11


def _signing_json_from(pdu: dict[str, Any], room_version: RoomVersion, hashed: str) -> bytes | None:
    """Canonical JSON of ``redact(pdu)`` without signatures, from ``hashed``,
    the canonical JSON text of the PDU's hashed part; None when the PDU is
    not of the shape this handles (the caller then encodes the redacted form).

    For a validated PDU of room version 3+ whose keys are all ``_PLAIN_KEYS``
    the two texts differ only in the content member (redacted) and the hashes
    member (signed, not hashed), and the members sort as auth_events,
    content, depth, [hashes], [origin], origin_server_ts, ... Every member but
    content holds only integers and strings (event IDs, identifiers; a string
    holds no unescaped quote), so the first ``"content":`` in the text starts
    the content member and the last ``,"depth":`` ends it. The signed bytes are
    the text with the content member replaced and the hashes member inserted
    after depth.
    """
    text = encode_canonical_text
    string = encode_canonical_string
    if (
        text is None
        or string is None
        or room_version.event_format is EventFormat.V1
        or not (_PLAIN_KEYS if room_version.v11_top_level_keys else _PLAIN_KEYS_V1).issuperset(
            pdu.keys()
        )
        or type(pdu.get("origin", "")) is not str
    ):
        return None
    hashes = pdu["hashes"]
    if len(hashes) != 1:  # validated: "sha256" is there, and is a string
        return None
    content_at = hashed.find(_CONTENT_KEY)
    content_end = hashed.rfind(_DEPTH_KEY)
    depth_end = content_end + len(_DEPTH_KEY) + len(int.__repr__(pdu["depth"]))
    if content_at < 0 or content_end < content_at or not hashed.startswith(_NEXT_KEY, depth_end):
        return None
    kept = redacted_content(pdu["type"], pdu["content"], room_version)
    return "".join(
        (
            hashed[: content_at + len(_CONTENT_KEY)],
            hashed[content_at + len(_CONTENT_KEY) : content_end] if kept is None else text(kept),
            hashed[content_end:depth_end],
            ',"hashes":{"sha256":',
            string(hashes["sha256"]),
            "}",
            hashed[depth_end:],
        )
    ).encode("utf-8")


def _prepare(pdu: Any, room_version: RoomVersion, backfilled: bool) -> _Prepared:
    if type(pdu) is not dict:
        raise InvalidEventError("PDU is not a JSON object")
    hashed_text: str | None = None
    try:
        hashed_part = {k: v for k, v in pdu.items() if k not in _NOT_HASHED}
        if encode_canonical_text is not None:
            hashed_text = encode_canonical_text(hashed_part)
            content_json = hashed_text.encode("utf-8")
        else:
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

    signing_json = None
    if hashed_text is not None:
        signing_json = _signing_json_from(pdu, room_version, hashed_text)
    if signing_json is None:
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
