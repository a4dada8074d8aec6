"""Tests for matrixfed.events.hashing: content and reference hashes, the event
ID formats of room versions 1, 3 and 4+, and v12 room IDs."""

from __future__ import annotations

import hashlib

from canonicaljson import encode_canonical_json
from twisted.trial import unittest
from unpaddedbase64 import decode_base64, encode_base64

from matrixfed.events.hashing import (
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    redacted_signing_json,
    room_id_from_create_event_id,
)
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import get_room_version
from tests.events.fixtures import ALL_VERSIONS, signed_pdu

V1, V2, V3, V4, V11, V12 = (get_room_version(v) for v in ("1", "2", "3", "4", "11", "12"))


def manual_reference_hash(pdu: dict[str, object], rv_id: str) -> bytes:
    redacted = redact(pdu, get_room_version(rv_id))  # type: ignore[arg-type]
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return hashlib.sha256(encode_canonical_json(redacted)).digest()


class ContentHashTests(unittest.TestCase):
    def test_definition(self) -> None:
        pdu = signed_pdu(V12)
        stripped = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
        self.assertEqual(
            compute_content_hash(pdu), hashlib.sha256(encode_canonical_json(stripped)).digest()
        )
        self.assertEqual(decode_base64(pdu["hashes"]["sha256"]), compute_content_hash(pdu))

    def test_ignores_unsigned_signatures_hashes_only(self) -> None:
        pdu = signed_pdu(V12)
        h = compute_content_hash(pdu)
        pdu["unsigned"] = {"age": 1, "x": [1]}
        pdu["signatures"] = {"z.example": {"ed25519:1": "x"}}
        pdu["hashes"] = {"sha256": "other", "sha512": "x"}
        self.assertEqual(compute_content_hash(pdu), h)
        pdu["content"]["body"] = "changed"
        self.assertNotEqual(compute_content_hash(pdu), h)

    def test_check(self) -> None:
        pdu = signed_pdu(V12)
        self.assertTrue(check_content_hash(pdu))
        for hashes in ({}, {"sha256": 1}, {"sha256": "&&&"}, "x"):
            self.assertFalse(check_content_hash(dict(pdu, hashes=hashes)))


class EventIdFormatTests(unittest.TestCase):
    def test_v1_v2_use_the_pdu_event_id(self) -> None:
        for rv in (V1, V2):
            pdu = signed_pdu(rv, event_id="$opaque:a.example")
            self.assertEqual(compute_event_id(pdu, rv), "$opaque:a.example")
            self.assertEqual(Event(pdu, rv).event_id, "$opaque:a.example")
            del pdu["event_id"]
            self.assertRaises(ValueError, compute_event_id, pdu, rv)

    def find_pdu_with_special_chars(self) -> dict[str, object]:
        for n in range(200):
            pdu = signed_pdu(V3, n=n)
            std = encode_base64(manual_reference_hash(pdu, "3"))
            if "+" in std or "/" in std:
                return pdu
        raise AssertionError("no hash with + or / in 200 tries")

    def test_v3_standard_base64(self) -> None:
        pdu = self.find_pdu_with_special_chars()
        event_id = compute_event_id(pdu, V3)  # type: ignore[arg-type]
        self.assertEqual(event_id, "$" + encode_base64(manual_reference_hash(pdu, "3")))
        self.assertEqual(len(event_id), 44)
        self.assertTrue(set(event_id[1:]) & set("+/"))

    def test_v4_onwards_urlsafe_base64(self) -> None:
        pdu = self.find_pdu_with_special_chars()
        for rv in ALL_VERSIONS[3:]:
            event_id = compute_event_id(pdu, rv)  # type: ignore[arg-type]
            digest = manual_reference_hash(pdu, rv.identifier)
            self.assertEqual(event_id, "$" + encode_base64(digest, urlsafe=True))
            self.assertFalse(set(event_id) & set("+/="))

    def test_reference_hash_is_what_signatures_cover(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            self.assertEqual(
                compute_reference_hash(pdu, rv),
                hashlib.sha256(redacted_signing_json(pdu, rv)).digest(),
            )
            self.assertEqual(
                compute_reference_hash(pdu, rv), manual_reference_hash(pdu, rv.identifier)
            )

    def test_reference_hash_ignores_unsigned_signatures_and_unredacted_content(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            h = compute_reference_hash(pdu, rv)
            pdu["unsigned"] = {"age": 77}
            pdu["signatures"]["z.example"] = {"ed25519:9": "x"}
            pdu["content"]["body"] = "edited"
            self.assertEqual(compute_reference_hash(pdu, rv), h)
            pdu["hashes"]["sha256"] = "different"
            self.assertNotEqual(compute_reference_hash(pdu, rv), h)


class V12RoomIdTests(unittest.TestCase):
    def test_room_id_is_create_event_id_with_bang(self) -> None:
        create = signed_pdu(
            V12,
            event_type="m.room.create",
            state_key="",
            content={"room_version": "12"},
            prev_events=[],
            auth_events=[],
        )
        event = Event(create, V12)
        self.assertTrue(event.event_id.startswith("$"))
        self.assertEqual(event.room_id, "!" + event.event_id[1:])
        self.assertEqual(room_id_from_create_event_id(event.event_id), event.room_id)
        self.assertNotIn(":", event.room_id)

    def test_earlier_create_events_name_their_room(self) -> None:
        create = signed_pdu(V11, event_type="m.room.create", state_key="", content={})
        self.assertEqual(Event(create, V11).room_id, "!room:a.example")
