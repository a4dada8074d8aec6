"""The spec's test vectors (appendices.md) and real Synapse 1.163.2 traffic.

The cryptographic vectors must reproduce byte for byte; the Synapse events
must validate, have the event IDs they are cited by, and pass the hash and
signature checks with the keys their servers published.
"""

from __future__ import annotations

import json
from typing import Any

from canonicaljson import encode_canonical_json
from signedjson.key import decode_signing_key_base64, get_verify_key
from signedjson.sign import sign_json, verify_signed_json
from twisted.trial import unittest

from matrixfed.errors import InvalidEventError, SignatureError
from matrixfed.events.checks import check_pdu
from matrixfed.events.hashing import (
    check_content_hash,
    compute_event_id,
    room_id_from_create_event_id,
)
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.events.model import Event
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from matrixfed.events.signing import (
    check_hash_or_redact,
    needed_keys,
    required_signers,
    sign_event,
    verify_event_signatures,
)
from matrixfed.events.validation import validate_pdu
from tests.events.fixtures import (
    SAMPLES,
    key_map,
    load_sample,
    sample_keys,
    signed_pdu,
    walk_pdus,
)

SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"


def spec_key() -> Any:
    return decode_signing_key_base64("ed25519", "1", SEED)


class CanonicalJsonExamplesTests(unittest.TestCase):
    """appendices.md "Canonical JSON" examples (parsed as a JSON library would)."""

    examples = [
        ("{}", b"{}"),
        ('{"one": 1, "two": "Two"}', b'{"one":1,"two":"Two"}'),
        ('{"b": "2", "a": "1"}', b'{"a":"1","b":"2"}'),
        ('{"b":"2","a":"1"}', b'{"a":"1","b":"2"}'),
        (
            '{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": '
            '{"display_name": "John Doe", "three_pids": [{"medium": "email", '
            '"address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}',
            b'{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
            b'"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
            b'{"address":"123456789","medium":"msisdn"}]},"success":true}}',
        ),
        ('{"a": "日本語"}', '{"a":"日本語"}'.encode()),
        ('{"本": 2, "日": 1}', '{"日":1,"本":2}'.encode()),
        ('{"a": "\\u65E5"}', '{"a":"日"}'.encode()),
        ('{"a": null}', b'{"a":null}'),
    ]

    def test_examples(self) -> None:
        for source, expected in self.examples:
            self.assertEqual(encode_canonical_json(json.loads(source)), expected, source)

    def test_negative_zero(self) -> None:
        # {"a": -0} -> {"a":0}; JSON parsers give the integer 0.
        self.assertEqual(encode_canonical_json(json.loads('{"a": -0}')), b'{"a":0}')

    def test_exponent_is_a_float_and_strict_rooms_refuse_it(self) -> None:
        # The spec's last example writes 1e10; Python (like Synapse) parses it
        # as a float, which strict canonical JSON (room versions 6+) forbids.
        rv = get_room_version("6")
        pdu = signed_pdu(rv)
        pdu["content"]["b"] = json.loads("1e10")
        self.assertRaises(InvalidEventError, validate_pdu, pdu, rv)


class JsonSigningVectorTests(unittest.TestCase):
    def test_empty_object(self) -> None:
        signed = sign_json({}, "domain", spec_key())
        self.assertEqual(
            signed,
            {
                "signatures": {
                    "domain": {
                        "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
                    }
                }
            },
        )

    def test_object_with_data(self) -> None:
        signed = sign_json({"one": 1, "two": "Two"}, "domain", spec_key())
        self.assertEqual(
            signed,
            {
                "one": 1,
                "signatures": {
                    "domain": {
                        "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
                    }
                },
                "two": "Two",
            },
        )
        verify_signed_json(signed, "domain", get_verify_key(spec_key()))


# Room versions whose redaction rules give the same result for the vectors
# (the vectors keep `origin`, which v11+ redaction drops).
VECTOR_VERSIONS = [v for v in KNOWN_ROOM_VERSIONS.values() if not v.v11_top_level_keys]


class EventSigningVectorTests(unittest.TestCase):
    def minimal_event(self) -> dict[str, Any]:
        return {
            "room_id": "!x:domain",
            "sender": "@a:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "signatures": {},
            "hashes": {},
            "type": "X",
            "content": {},
            "prev_events": [],
            "auth_events": [],
            "depth": 3,
            "unsigned": {"age_ts": 1000000},
        }

    def redactable_event(self) -> dict[str, Any]:
        return {
            "content": {"body": "Here is the message content"},
            "event_id": "$0:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "type": "m.room.message",
            "room_id": "!r:domain",
            "sender": "@u:domain",
            "signatures": {},
            "unsigned": {"age_ts": 1000000},
        }

    def test_minimal_event(self) -> None:
        for rv in VECTOR_VERSIONS:
            pdu = self.minimal_event()
            sign_event(pdu, rv, "domain", spec_key())
            self.assertEqual(
                pdu,
                {
                    "auth_events": [],
                    "content": {},
                    "depth": 3,
                    "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
                    "origin": "domain",
                    "origin_server_ts": 1000000,
                    "prev_events": [],
                    "room_id": "!x:domain",
                    "sender": "@a:domain",
                    "signatures": {
                        "domain": {
                            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
                        }
                    },
                    "type": "X",
                    "unsigned": {"age_ts": 1000000},
                },
                rv.identifier,
            )

    def test_redactable_event(self) -> None:
        for rv in VECTOR_VERSIONS:
            pdu = self.redactable_event()
            sign_event(pdu, rv, "domain", spec_key())
            self.assertEqual(
                pdu,
                {
                    "content": {"body": "Here is the message content"},
                    "event_id": "$0:domain",
                    "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
                    "origin": "domain",
                    "origin_server_ts": 1000000,
                    "type": "m.room.message",
                    "room_id": "!r:domain",
                    "sender": "@u:domain",
                    "signatures": {
                        "domain": {
                            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
                        }
                    },
                    "unsigned": {"age_ts": 1000000},
                },
                rv.identifier,
            )

    def test_vectors_verify_and_tampering_fails(self) -> None:
        rv = get_room_version("1")
        pdu = self.redactable_event()
        sign_event(pdu, rv, "domain", spec_key())
        keys = key_map(
            ServerVerifyKey("domain", "ed25519:1", get_verify_key(spec_key()), 2**40)  # type: ignore[arg-type]
        )
        event = Event(pdu, rv)
        verify_event_signatures(event, keys)
        self.assertIs(check_hash_or_redact(event), event)
        # The body is not signed (redacted away) but is hashed: a changed body
        # keeps the signature valid and fails the hash, so the redacted copy wins.
        pdu["content"]["body"] = "Something else"
        verify_event_signatures(event, keys)
        used = check_hash_or_redact(event)
        self.assertEqual(used.content, {})
        self.assertEqual(used.event_id, "$0:domain")


def _room_version_of_samples() -> str:
    for pdu in walk_pdus(load_sample("send_join_v2.json")):
        if pdu["type"] == "m.room.create":
            return str(pdu["content"]["room_version"])
    raise AssertionError("no create event in send_join_v2.json")


SAMPLE_FILES = (
    "send_join_v2.json",
    "send_join_v2_full_state_direct.json",
    "send_txn_A_to_B_message.json",
    "send_txn_B_to_A_message.json",
    "backfill.json",
)


class SynapseSampleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.rv = get_room_version(_room_version_of_samples())
        self.keys = sample_keys()

    def sample_pdus(self) -> list[dict[str, Any]]:
        pdus = []
        for name in SAMPLE_FILES:
            pdus.extend(walk_pdus(load_sample(name)))
        # Every request and response the two Synapse servers exchanged.
        for name in ("fedlog_inbound_to_A.jsonl", "fedlog_inbound_to_B.jsonl"):
            with open(SAMPLES / name) as f:
                for line in f:
                    pdus.extend(walk_pdus(json.loads(line)))
        return pdus

    def test_samples_present(self) -> None:
        pdus = self.sample_pdus()
        self.assertGreater(len(pdus), 60)
        self.assertEqual(self.rv.identifier, "12")

    def test_every_event_validates_and_verifies(self) -> None:
        for pdu in self.sample_pdus():
            validate_pdu(pdu, self.rv, backfilled=True)
            event = Event.from_pdu(pdu, self.rv, backfilled=True)
            self.assertTrue(check_content_hash(pdu), event)
            self.assertIs(check_hash_or_redact(event), event)
            verify_event_signatures(event, self.keys)
            self.assertEqual(required_signers(event), {event.sender_domain()})
            self.assertEqual(set(needed_keys(event)), {event.sender_domain()})
            checked = check_pdu(pdu, self.rv, self.keys, backfilled=True)
            self.assertEqual(checked.event_id, event.event_id)
            self.assertIs(checked.pdu, pdu)

    def test_event_ids_match_their_citations(self) -> None:
        """Every event ID cited by a sample (prev/auth events, request paths,
        state_ids) that names a sample event is that event's computed ID."""
        computed = {compute_event_id(p, self.rv) for p in self.sample_pdus()}
        join = load_sample("send_join_v2.json")
        # The join event's ID is in the send_join request path.
        join_id = compute_event_id(join["request"]["body"], self.rv)
        self.assertIn("%24" + join_id[1:], join["request"]["path"])
        cited_auth: set[str] = set()
        cited: set[str] = set()
        for pdu in self.sample_pdus():
            cited_auth.update(pdu["auth_events"])
            cited.update(pdu["auth_events"], pdu["prev_events"])
        create = next(p for p in self.sample_pdus() if p["type"] == "m.room.create")
        create_id = compute_event_id(create, self.rv)
        # v12: the create event is never an auth event; its ID is the room ID.
        self.assertIn(create_id, cited)
        self.assertNotIn(create_id, cited_auth)
        self.assertEqual(
            room_id_from_create_event_id(create_id),
            join["request"]["body"]["room_id"],
        )
        self.assertEqual(Event(create, self.rv).room_id, join["request"]["body"]["room_id"])
        # Cited events present in the samples: all found by computed ID.
        self.assertGreater(len(cited & computed), 5)
        state_ids = load_sample("state_ids.json")["response"]["body"]
        for event_id in state_ids["pdu_ids"] + state_ids["auth_chain_ids"]:
            self.assertIn(event_id, computed)

    def test_tampered_sample_fails(self) -> None:
        pdu = json.loads(json.dumps(next(iter(self.sample_pdus()))))
        pdu["origin_server_ts"] += 1
        event = Event.from_pdu(pdu, self.rv)
        self.assertRaises(SignatureError, verify_event_signatures, event, self.keys)
