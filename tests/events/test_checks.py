"""Tests for matrixfed.events.checks: the one-pass received-PDU check gives the
same answers as the step-by-step functions."""

from __future__ import annotations

import copy
import json
from typing import Any

from canonicaljson import encode_canonical_json
from twisted.trial import unittest

from matrixfed.errors import EventSizeError, InvalidEventError, SignatureError
from matrixfed.events.checks import _whole_size, check_pdu, check_pdus
from matrixfed.events.hashing import compute_event_id
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import get_room_version
from matrixfed.events.signing import check_hash_or_redact, sign_event, verify_event_signatures
from matrixfed.events.validation import MAX_PDU_BYTES, validate_pdu
from tests.events.fixtures import (
    ALL_VERSIONS,
    SERVER_B,
    default_keys,
    load_sample,
    sample_keys,
    signed_pdu,
    signing_key,
    walk_pdus,
)

V10, V12 = get_room_version("10"), get_room_version("12")


class CheckPduTests(unittest.TestCase):
    def test_good_pdus_all_versions(self) -> None:
        for rv in ALL_VERSIONS:
            for pdu in (
                signed_pdu(rv),
                signed_pdu(
                    rv,
                    event_type="m.room.member",
                    state_key="@alice:a.example",
                    content={"membership": "join", "displayname": "Alice"},
                ),
            ):
                snapshot = copy.deepcopy(pdu)
                checked = check_pdu(pdu, rv, default_keys())
                self.assertIs(checked.pdu, pdu)
                self.assertEqual(checked.event_id, compute_event_id(pdu, rv))
                self.assertEqual(pdu, snapshot)  # input untouched
                # Same answer as the step-by-step path.
                step = Event.from_pdu(pdu, rv)
                verify_event_signatures(step, default_keys())
                self.assertIs(check_hash_or_redact(step), step)

    def test_hash_mismatch_returns_redacted_event(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            original_id = compute_event_id(pdu, rv)
            pdu["content"]["body"] = "tampered"
            checked = check_pdu(pdu, rv, default_keys())
            self.assertEqual(checked.event_id, original_id)
            self.assertEqual(checked.content, {})
            self.assertEqual(checked.pdu, redact(pdu, rv))
            self.assertEqual(checked.signatures, pdu["signatures"])

    def test_malformed_is_invalid(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            del pdu["depth"]
            self.assertRaises(InvalidEventError, check_pdu, pdu, rv, default_keys())
        for value in (None, [], "x", 5):
            self.assertRaises(InvalidEventError, check_pdu, value, V12, default_keys())
        pdu = signed_pdu(V12)
        pdu["content"] = {"x": float("nan")}
        self.assertRaises(InvalidEventError, check_pdu, pdu, V12, default_keys())
        pdu["content"] = {"x": "\ud800"}
        self.assertRaises(InvalidEventError, check_pdu, pdu, V12, default_keys())

    def test_bad_signature_is_signature_error(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            pdu["origin_server_ts"] += 1
            self.assertRaises(SignatureError, check_pdu, pdu, rv, default_keys())
            unsigned_by_sender = signed_pdu(rv, signers=(SERVER_B,))
            self.assertRaises(SignatureError, check_pdu, unsigned_by_sender, rv, default_keys())

    def test_size_limit(self) -> None:
        pdu = signed_pdu(V12, content={"body": ""})
        pdu["content"]["body"] = "x" * (MAX_PDU_BYTES - len(encode_canonical_json(pdu)) + 1)
        self.assertRaises(EventSizeError, check_pdu, pdu, V12, default_keys())

    def test_rejectable_size_error_carries_checked_event(self) -> None:
        pdu = signed_pdu(V10, event_type="é" * 128)
        err = self.assertRaises(EventSizeError, check_pdu, pdu, V10, default_keys())
        self.assertTrue(err.rejectable)
        self.assertIsInstance(err.event, Event)
        self.assertEqual(err.event.event_id, compute_event_id(pdu, V10))
        # ... and only once the signatures passed.
        pdu["origin_server_ts"] += 1
        self.assertRaises(SignatureError, check_pdu, pdu, V10, default_keys())

    def test_count_limits_and_backfill(self) -> None:
        pdu = signed_pdu(V12)
        pdu["prev_events"] = pdu["prev_events"] * 21
        sign_event(pdu, V12, "a.example", signing_key("a.example"))
        self.assertRaises(InvalidEventError, check_pdu, pdu, V12, default_keys())
        check_pdu(pdu, V12, default_keys(), backfilled=True)

    def test_v1_references_without_hashes(self) -> None:
        # Synapse cites some events in v1/v2 rooms as [event_id, {}] (INTEROP.md).
        for version in ("1", "2"):
            rv = get_room_version(version)
            pdu = signed_pdu(
                rv,
                prev_events=[["$p:a.example", {}]],
                auth_events=[["$c:a.example", {}], ["$pl:b.example", {"sha256": "x"}]],
            )
            event = check_pdu(pdu, rv, default_keys())
            self.assertEqual(event.prev_event_ids, ("$p:a.example",))
            self.assertEqual(event.auth_event_ids, ("$c:a.example", "$pl:b.example"))

    def test_synapse_samples(self) -> None:
        pdus = list(walk_pdus(load_sample("send_join_v2.json")))
        results = check_pdus(pdus, V12, sample_keys(), backfilled=True)
        for pdu, result in zip(pdus, results, strict=True):
            self.assertIsInstance(result, Event)
            assert isinstance(result, Event)
            self.assertEqual(result.event_id, compute_event_id(pdu, V12))


class CheckPdusTests(unittest.TestCase):
    def test_same_answers_as_check_pdu(self) -> None:
        tampered = signed_pdu(V12, n=4)
        tampered["content"]["body"] = "changed"  # hash mismatch: redacted
        wide = signed_pdu(V10, event_type="é" * 128)  # rejectable in v10
        cases: list[tuple[Any, Any]] = [
            (signed_pdu(V12, n=1), V12),
            (tampered, V12),
            ({"type": 5}, V12),
            (signed_pdu(V12, n=5, signers=(SERVER_B,)), V12),
            (wide, V10),
        ]
        for pdu, rv in cases:
            [batched] = check_pdus([pdu], rv, default_keys())
            try:
                single: Any = check_pdu(pdu, rv, default_keys())
            except (InvalidEventError, SignatureError) as e:
                single = e
            self.assertIs(type(batched), type(single))
            if isinstance(single, Event):
                self.assertEqual(batched.event_id, single.event_id)  # type: ignore[union-attr]
                self.assertEqual(batched.pdu, single.pdu)  # type: ignore[union-attr]
            else:
                self.assertEqual(str(batched), str(single))
        [rejectable] = check_pdus([wide], V10, default_keys())
        assert isinstance(rejectable, EventSizeError)
        self.assertTrue(rejectable.rejectable)
        self.assertEqual(rejectable.event.event_id, compute_event_id(wide, V10))

    def test_one_result_per_pdu_in_order(self) -> None:
        good = signed_pdu(V12, n=1)
        bad_sig = signed_pdu(V12, n=2)
        bad_sig["depth"] += 1
        malformed: dict[str, Any] = {"type": "x"}
        results = check_pdus([good, malformed, bad_sig, good], V12, default_keys())
        self.assertIsInstance(results[0], Event)
        self.assertIsInstance(results[1], InvalidEventError)
        self.assertIsInstance(results[2], SignatureError)
        self.assertIsInstance(results[3], Event)


class WholeSizeTests(unittest.TestCase):
    def size_of(self, pdu: dict[str, Any]) -> int:
        hashed = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures", "unsigned")}
        return _whole_size(encode_canonical_json(hashed), pdu)

    def test_matches_full_encoding(self) -> None:
        cases: list[dict[str, Any]] = [
            signed_pdu(V12),
            {k: v for k, v in signed_pdu(V12).items() if k != "unsigned"},
            {"hashes": {"sha256": "x"}},
            {"hashes": {}, "signatures": {}, "unsigned": {"a": "ü"}},
            {},
            {"a": 1, "unsigned": {}},
        ]
        for pdu in cases:
            self.assertEqual(self.size_of(pdu), len(encode_canonical_json(pdu)), json.dumps(pdu))

    def test_agrees_with_validate_pdu_at_the_limit(self) -> None:
        pdu = signed_pdu(V12, content={"body": ""})
        pdu["content"]["body"] = "x" * (MAX_PDU_BYTES - len(encode_canonical_json(pdu)))
        validate_pdu(pdu, V12)
        check_pdu(pdu, V12, default_keys())
