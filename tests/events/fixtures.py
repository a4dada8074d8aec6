"""Shared helpers for the events tests: deterministic keys, well-formed signed
PDUs for every room version, key maps, and the Synapse samples."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from signedjson.key import decode_signing_key_base64, decode_verify_key_base64, get_verify_key
from signedjson.types import SigningKey
from unpaddedbase64 import encode_base64

from matrixfed.events.hashing import room_id_from_create_event_id
from matrixfed.events.keys import KeyMap, ServerVerifyKey
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from matrixfed.events.signing import sign_event

SAMPLES = Path("/work/shared/samples/synapse-1.163.2")
ALL_VERSIONS: tuple[RoomVersion, ...] = tuple(KNOWN_ROOM_VERSIONS.values())

SERVER_A = "a.example"
SERVER_B = "b.example:8448"
ALICE = "@alice:a.example"
BOB = "@bob:b.example:8448"

# Far in the future (ms): keys valid for every test event.
FOREVER = 2**53 - 1
TS = 1_700_000_000_000


def signing_key(server_name: str, version: str = "k1") -> SigningKey:
    """A deterministic ed25519 signing key for ``server_name``."""
    seed = hashlib.sha256(f"{server_name}/{version}".encode()).digest()
    key: SigningKey = decode_signing_key_base64("ed25519", version, encode_base64(seed))
    return key


def verify_key_entry(
    server_name: str,
    key: SigningKey,
    *,
    valid_until_ts: int = FOREVER,
    expired: bool = False,
) -> ServerVerifyKey:
    vk = get_verify_key(key)
    return ServerVerifyKey(
        server_name=server_name,
        key_id=f"ed25519:{key.version}",
        verify_key=vk,  # type: ignore[arg-type]
        valid_until_ts=valid_until_ts,
        expired=expired,
    )


def key_map(*entries: ServerVerifyKey) -> KeyMap:
    out: dict[str, dict[str, ServerVerifyKey]] = {}
    for e in entries:
        out.setdefault(e.server_name, {})[e.key_id] = e
    return out


def default_keys() -> KeyMap:
    return key_map(
        verify_key_entry(SERVER_A, signing_key(SERVER_A)),
        verify_key_entry(SERVER_B, signing_key(SERVER_B)),
    )


def fake_event_id(rv: RoomVersion, n: int, server: str = SERVER_A) -> str:
    """An event ID of the right shape for ``rv`` (not of any real event)."""
    digest = hashlib.sha256(f"event {n}".encode()).digest()
    if rv.event_format is EventFormat.V1:
        return f"${n}abc:{server}"
    return "$" + encode_base64(digest, urlsafe=rv.event_format is EventFormat.V3)


def ref(rv: RoomVersion, event_id: str) -> Any:
    """A prev_events/auth_events entry for ``event_id`` in ``rv``."""
    if rv.event_format is EventFormat.V1:
        return [event_id, {"sha256": encode_base64(hashlib.sha256(event_id.encode()).digest())}]
    return event_id


def room_id_for(rv: RoomVersion) -> str:
    if rv.room_id_from_create:
        return room_id_from_create_event_id(fake_event_id(KNOWN_ROOM_VERSIONS["12"], 0))
    return "!room:a.example"


def unsigned_pdu(
    rv: RoomVersion,
    *,
    sender: str = ALICE,
    event_type: str = "m.room.message",
    content: Mapping[str, Any] | None = None,
    state_key: str | None = None,
    n: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """A well-formed PDU for ``rv`` without hashes or signatures."""
    pdu: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "content": dict(content) if content is not None else {"body": "hello", "msgtype": "m.text"},
        "origin_server_ts": TS + n,
        "depth": n + 2,
        "prev_events": [ref(rv, fake_event_id(rv, 1000 + n))],
        "auth_events": [ref(rv, fake_event_id(rv, 2000 + n)), ref(rv, fake_event_id(rv, 3000))],
    }
    if not (rv.room_id_from_create and event_type == "m.room.create"):
        pdu["room_id"] = room_id_for(rv)
    if state_key is not None:
        pdu["state_key"] = state_key
    if rv.event_format is EventFormat.V1:
        pdu["event_id"] = f"${n}ev:{sender.split(':', 1)[1]}"
    if not rv.v11_top_level_keys:
        pdu["origin"] = sender.split(":", 1)[1]
    pdu.update(extra)
    return pdu


def signed_pdu(
    rv: RoomVersion,
    *,
    signers: tuple[str, ...] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """A well-formed PDU for ``rv`` hashed and signed by the sender's server
    (or by each of ``signers``), with an ``unsigned`` section."""
    pdu = unsigned_pdu(rv, **kwargs)
    if signers is None:
        signers = (pdu["sender"].split(":", 1)[1],)
    for server in signers:
        sign_event(pdu, rv, server, signing_key(server))
    pdu["unsigned"] = {"age": 5}
    return pdu


def load_sample(name: str) -> Any:
    with open(SAMPLES / name) as f:
        return json.load(f)


def sample_keys() -> KeyMap:
    """The Synapse pair's verify keys, as their key servers published them."""
    entries = []
    for name in ("key_v2_server_A.json", "key_v2_server_B.json"):
        body = load_sample(name)
        for key_id, info in body["verify_keys"].items():
            entries.append(
                ServerVerifyKey(
                    server_name=body["server_name"],
                    key_id=key_id,
                    verify_key=decode_verify_key_base64(
                        "ed25519", key_id.split(":", 1)[1], info["key"]
                    ),
                    valid_until_ts=body["valid_until_ts"],
                )
            )
    return key_map(*entries)


def walk_pdus(value: Any) -> Iterator[dict[str, Any]]:
    """Every PDU-shaped object in a sample (a dict with type, hashes, signatures)."""
    if isinstance(value, dict):
        if {"type", "hashes", "signatures"} <= value.keys():
            yield value
            return
        for v in value.values():
            yield from walk_pdus(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_pdus(v)
