"""Signing events and checking that received events are genuine.

Guarantees:
- ``sign_event`` produces exactly what the spec's "Signing Events" algorithm
  does (content hash, then signedjson's ``sign_json`` over the redacted form),
  and keeps signatures already on the event.
- ``verify_event_signatures`` follows "Validating hashes and signatures on
  received events": for every server that must have signed (see
  ``required_signers``), each signature by a known, usable key must verify
  over the redacted form and at least one must exist. Signatures by keys we
  do not know are skipped, as are keys known to have expired before the
  event's ``origin_server_ts``; from room version 5 a key must also be valid
  (``valid_until_ts``) at that time. Anything else raises ``SignatureError``.
- Verification matches signedjson's ``verify_signed_json`` bit for bit: same
  canonical bytes, same lenient base64 decoding, same nacl call. It calls
  nacl directly on bytes computed once per event instead of letting
  signedjson re-encode the event per signature.

The module is pure. Every function here only reads its inputs, except
``sign_event``, which fills in ``hashes`` and ``signatures`` of the PDU it is
given. The per-event functions hold no shared state, so a caller can run
``verify_events_batch`` on chunks in a thread pool: the ed25519 work releases
the GIL.

The key material itself comes from the caller (``matrixfed.events.keys``):
the keyring above the core fetches every key ``needed_keys`` or
``needed_keys_for_pdus`` lists, in one batch, and caps ``valid_until_ts`` at
seven days after fetching as room version 5 requires.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nacl.exceptions import CryptoError
from signedjson.sign import sign_json
from signedjson.types import SigningKey
from unpaddedbase64 import decode_base64

from matrixfed.errors import SignatureError
from matrixfed.events.hashing import (
    add_content_hash,
    check_content_hash,
    redacted_signing_json,
)
from matrixfed.events.identifiers import domain_of
from matrixfed.events.keys import KeyMap, ServerVerifyKey
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import EventFormat, RoomVersion

# spec: appendices "Signing Details": the only signing algorithm.
ED25519_PREFIX = "ed25519:"
AUTHORISING_USER_KEY = "join_authorised_via_users_server"


def sign_event(
    pdu: dict[str, Any],
    room_version: RoomVersion,
    server_name: str,
    signing_key: SigningKey,
) -> None:
    """Hash and sign ``pdu`` in place, as ``server_name``.

    Sets ``hashes.sha256`` to the content hash, signs the redacted form with
    signedjson and adds the signature under ``signatures[server_name]``;
    signatures by other servers or keys stay. In room versions 1 and 2 set
    ``event_id`` before signing: it is covered by the signature.

    Args:
        pdu: the complete event (it is modified).
        room_version: the room's version (selects the redaction rules).
        server_name: our server name, the signing entity.
        signing_key: a signedjson signing key (with ``alg`` and ``version``).
    """
    add_content_hash(pdu)
    redacted = redact(pdu, room_version)
    redacted.pop("signatures", None)
    signed = sign_json(redacted, server_name, signing_key)
    existing = pdu.get("signatures")
    merged: dict[str, dict[str, str]] = {}
    if isinstance(existing, dict):
        for server, sigs in existing.items():
            if isinstance(sigs, dict):
                merged[server] = dict(sigs)
    merged.setdefault(server_name, {}).update(signed["signatures"][server_name])
    pdu["signatures"] = merged


# --- who must have signed ---------------------------------------------------


def _domain(identifier: Any, what: str) -> str:
    domain = domain_of(identifier) if isinstance(identifier, str) else None
    if not domain:
        raise SignatureError(f"{what} {identifier!r} names no server")
    return domain


def _required_servers(pdu: Mapping[str, Any], room_version: RoomVersion) -> set[str]:
    """Servers that must sign ``pdu``; empty exactly for a third-party invite."""
    content = pdu.get("content")
    if not isinstance(content, dict) or pdu.get("type") != "m.room.member":
        content = {}
    membership = content.get("membership")
    if membership == "invite" and "third_party_invite" in content:
        # A third-party invite may be sent by any server (its sender must match
        # the original invite, which the auth rules check): see signing_servers.
        return set()
    # spec: the sender's server; in v1/v2 also the server in the event ID.
    servers = {_domain(pdu.get("sender"), "sender")}
    if room_version.event_format is EventFormat.V1:
        servers.add(_domain(pdu.get("event_id"), "event_id"))
    if (
        membership == "join"
        and room_version.restricted_join_rule
        and AUTHORISING_USER_KEY in content
    ):
        # spec (v8+ auth rules): a restricted join is signed by the server of
        # the user who authorised it.
        servers.add(_domain(content[AUTHORISING_USER_KEY], AUTHORISING_USER_KEY))
    return servers


def required_signers(event: Event) -> set[str]:
    """The servers whose signatures ``event`` must carry.

    The sender's server; in room versions 1 and 2 also the server of the
    event ID; for a restricted join (v8+, ``join_authorised_via_users_server``
    in content) also the authorising user's server. A third-party invite
    (``m.room.member`` invite with ``third_party_invite`` in content) may
    come from any server: neither the sender's nor the event ID's server is
    required, and ``verify_event_signatures`` instead demands one valid
    signature from whichever servers signed it.

    Raises:
        matrixfed.errors.SignatureError: one of those IDs names no server.
    """
    return _required_servers(event.pdu, event.room_version)


def signing_servers(pdu: Mapping[str, Any], room_version: RoomVersion) -> tuple[set[str], bool]:
    """Which signatures of a (raw) PDU are checked.

    Returns:
        (servers, any_server): with any_server False each server in servers
        must have signed (``required_signers``); with any_server True (a
        third-party invite) servers is every server that signed, and one
        valid signature among them suffices.

    Raises:
        matrixfed.errors.SignatureError: as ``required_signers``.
    """
    required = _required_servers(pdu, room_version)
    if required:
        return required, False
    signatures = pdu.get("signatures")
    return (set(signatures) if isinstance(signatures, dict) else set()), True


def _ed25519_key_ids(signatures: Any, server: str) -> set[str]:
    sigs = signatures.get(server) if isinstance(signatures, dict) else None
    if not isinstance(sigs, dict):
        return set()
    return {k for k in sigs if isinstance(k, str) and k.startswith(ED25519_PREFIX)}


def needed_keys(event: Event) -> dict[str, set[str]]:
    """The keys to fetch before verifying ``event``: server name -> key IDs.

    Only ed25519 keys named by the signatures of servers whose signatures are
    checked appear; a server that must sign but did not is absent (the
    event fails verification whatever keys are fetched).

    Raises:
        matrixfed.errors.SignatureError: as ``required_signers``.
    """
    servers, _ = signing_servers(event.pdu, event.room_version)
    signatures = event.pdu.get("signatures")
    out: dict[str, set[str]] = {}
    for server in servers:
        key_ids = _ed25519_key_ids(signatures, server)
        if key_ids:
            out[server] = key_ids
    return out


def needed_keys_for_pdus(
    pdus: Iterable[Any], room_version: RoomVersion
) -> dict[str, dict[str, int]]:
    """Every key a batch of received PDUs needs, for one key fetch.

    Works on raw PDUs (before validation) so that a join or a transaction can
    fetch all keys first and then check every event in one pass. PDUs too
    malformed to name their signers are skipped: they will fail the check.

    Returns:
        server name -> key ID -> the ``minimum_valid_until_ts`` to ask a
        notary for (the latest ``origin_server_ts`` of an event needing the
        key in room versions 5+, else 0).
    """
    out: dict[str, dict[str, int]] = {}
    enforce = room_version.enforce_key_validity
    for pdu in pdus:
        if not isinstance(pdu, dict):
            continue
        try:
            servers, _ = signing_servers(pdu, room_version)
        except SignatureError:
            continue
        ts = pdu.get("origin_server_ts")
        minimum = ts if enforce and type(ts) is int else 0
        signatures = pdu.get("signatures")
        for server in servers:
            for key_id in _ed25519_key_ids(signatures, server):
                per_server = out.setdefault(server, {})
                if per_server.get(key_id, -1) < minimum:
                    per_server[key_id] = minimum
    return out


# --- verification -------------------------------------------------------------


def key_usable_at(key: ServerVerifyKey, ts: int, room_version: RoomVersion) -> bool:
    """Whether ``key`` may verify an event sent at ``ts`` (ms) in ``room_version``.

    An old key (``expired``) only covers events up to its ``expired_ts``
    (spec: keys known to have expired before the event are ignored). From room
    version 5 a current key must be valid until at least ``ts``.
    """
    if key.expired or room_version.enforce_key_validity:
        return key.valid_until_ts >= ts
    return True


def verify_signatures_over(
    *,
    event_id: str,
    signatures: Any,
    servers: set[str],
    any_server: bool,
    message: bytes,
    origin_server_ts: int,
    room_version: RoomVersion,
    keys: KeyMap,
) -> None:
    """Check the signatures of one event over its precomputed signing bytes.

    The building block of ``verify_event_signatures`` for callers (the
    received-PDU pipeline) that already hold ``redacted_signing_json``.

    Args:
        event_id: for error messages.
        signatures: the event's ``signatures`` object.
        servers: the servers whose signatures are checked.
        any_server: False: each of ``servers`` needs a valid signature. True
            (third-party invites): one valid signature from any of them will do.
        message: ``redacted_signing_json`` of the event.
        origin_server_ts: the event's timestamp, for key validity.
        room_version: the room's version.
        keys: the verify keys known to the caller.

    Raises:
        matrixfed.errors.SignatureError: a signature by a known usable key is
            bad, or a server (any_server: every server) has no such signature.
    """
    if not isinstance(signatures, dict):
        signatures = {}
    enforce_validity = room_version.enforce_key_validity
    verified_any = False
    for server in sorted(servers) if len(servers) > 1 else servers:
        problems: list[str] = []
        sigs = signatures.get(server)
        server_keys = keys.get(server)
        verified = 0
        if isinstance(sigs, dict) and server_keys is not None:
            for key_id, sig_b64 in sigs.items():
                if not isinstance(key_id, str) or not key_id.startswith(ED25519_PREFIX):
                    continue  # spec: algorithms we do not understand are ignored
                key = server_keys.get(key_id)
                if key is None:
                    continue  # spec: unknown keys are skipped
                # key_usable_at, inlined: this runs for every received event.
                if (key.expired or enforce_validity) and key.valid_until_ts < origin_server_ts:
                    problems.append(
                        f"{server} key {key_id} is valid until {key.valid_until_ts},"
                        f" before the event's origin_server_ts {origin_server_ts}"
                    )
                    continue
                if not _signature_ok(key, sig_b64, message):
                    raise SignatureError(
                        f"event {event_id}: bad signature from {server} with {key_id}"
                    )
                verified += 1
        if verified:
            verified_any = True
        elif not any_server:
            detail = "; ".join(problems) if problems else "no signature by a known key"
            raise SignatureError(f"event {event_id}: not signed by {server} ({detail})")
    if any_server and not verified_any:
        raise SignatureError(
            f"event {event_id}: third-party invite carries no signature by a known key"
        )


def _signature_ok(key: ServerVerifyKey, sig_b64: Any, message: bytes) -> bool:
    # As signedjson.verify_signed_json: lenient unpadded base64, nacl verify.
    if not isinstance(sig_b64, str):
        return False
    try:
        signature = decode_base64(sig_b64)
        key.verify_key.verify(message, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def verify_event_signatures(event: Event, keys: KeyMap) -> None:
    """Check that ``event`` is signed by every server that must sign it.

    Args:
        event: the event as received (full or already redacted: signatures
            cover the redacted form, so both verify).
        keys: verify keys, at least those ``needed_keys(event)`` names.

    Raises:
        matrixfed.errors.SignatureError: see ``verify_signatures_over``.
    """
    pdu = event.pdu
    servers, any_server = signing_servers(pdu, event.room_version)
    try:
        message = redacted_signing_json(pdu, event.room_version)
    except (ValueError, TypeError, RecursionError) as e:
        raise SignatureError(f"event {event.event_id} cannot be encoded: {e}") from None
    verify_signatures_over(
        event_id=event.event_id,
        signatures=pdu.get("signatures"),
        servers=servers,
        any_server=any_server,
        message=message,
        origin_server_ts=event.origin_server_ts,
        room_version=event.room_version,
        keys=keys,
    )


def verify_events_batch(events: Sequence[Event], keys: KeyMap) -> list[SignatureError | None]:
    """``verify_event_signatures`` over many events; one result per event.

    Pure and free of shared state: callers split large batches into chunks and
    run each chunk on a thread pool (nacl releases the GIL while verifying).

    Returns:
        For each event, in order, None if it verified or the SignatureError.
    """
    results: list[SignatureError | None] = []
    for event in events:
        try:
            verify_event_signatures(event, keys)
        except SignatureError as e:
            results.append(e)
        else:
            results.append(None)
    return results


def check_hash_or_redact(event: Event) -> Event:
    """Apply the content hash check of received events.

    Returns:
        ``event`` if its content hash matches, otherwise the redacted event
        (same event ID): spec, "the redacted copy is used".
    """
    if check_content_hash(event.pdu):
        return event
    return Event(redact(event.pdu, event.room_version), event.room_version, event.event_id)
