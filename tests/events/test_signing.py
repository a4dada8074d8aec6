"""Tests for matrixfed.events.signing: signing, who must sign, key validity,
verification outcomes, and the content hash check."""

from __future__ import annotations

import copy
from typing import Any

from signedjson.sign import verify_signed_json
from twisted.trial import unittest

from matrixfed.errors import SignatureError
from matrixfed.events.hashing import compute_event_id
from matrixfed.events.keys import KeyMap
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import EventFormat, RoomVersion, get_room_version
from matrixfed.events.signing import (
    check_hash_or_redact,
    key_usable_at,
    needed_keys,
    needed_keys_for_pdus,
    required_signers,
    sign_event,
    verify_event_signatures,
    verify_events_batch,
)
from tests.events.fixtures import (
    ALICE,
    ALL_VERSIONS,
    BOB,
    SERVER_A,
    SERVER_B,
    TS,
    default_keys,
    key_map,
    signed_pdu,
    signing_key,
    unsigned_pdu,
    verify_key_entry,
)

V1, V2, V4, V5, V7, V8, V12 = (get_room_version(v) for v in ("1", "2", "4", "5", "7", "8", "12"))
SERVER_C = "c.example"


def event(pdu: dict[str, Any], rv: RoomVersion) -> Event:
    return Event(pdu, rv)


class SignEventTests(unittest.TestCase):
    def test_signature_covers_redacted_form_via_signedjson(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            redacted = redact(pdu, rv)
            verify_signed_json(
                redacted, SERVER_A, verify_key_entry(SERVER_A, signing_key(SERVER_A)).verify_key
            )

    def test_existing_signatures_are_kept(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = unsigned_pdu(rv)
            sign_event(pdu, rv, SERVER_A, signing_key(SERVER_A))
            before = copy.deepcopy(pdu["signatures"])
            sign_event(pdu, rv, SERVER_B, signing_key(SERVER_B))
            sign_event(pdu, rv, SERVER_A, signing_key(SERVER_A, "k2"))
            self.assertEqual(set(pdu["signatures"]), {SERVER_A, SERVER_B})
            self.assertEqual(set(pdu["signatures"][SERVER_A]), {"ed25519:k1", "ed25519:k2"})
            self.assertEqual(
                pdu["signatures"][SERVER_A]["ed25519:k1"], before[SERVER_A]["ed25519:k1"]
            )
            keys = key_map(
                verify_key_entry(SERVER_A, signing_key(SERVER_A)),
                verify_key_entry(SERVER_A, signing_key(SERVER_A, "k2")),
            )
            verify_event_signatures(event(pdu, rv), keys)

    def test_hash_is_set_and_replaced(self) -> None:
        pdu = unsigned_pdu(V12)
        pdu["hashes"] = {"sha256": "stale", "other": "x"}
        sign_event(pdu, V12, SERVER_A, signing_key(SERVER_A))
        self.assertEqual(set(pdu["hashes"]), {"sha256"})
        self.assertNotEqual(pdu["hashes"]["sha256"], "stale")
        self.assertIs(check_hash_or_redact(event(pdu, V12)).pdu, pdu)

    def test_event_id_unchanged_by_signing(self) -> None:
        pdu = unsigned_pdu(V12)
        sign_event(pdu, V12, SERVER_A, signing_key(SERVER_A))
        first = compute_event_id(pdu, V12)
        sign_event(pdu, V12, SERVER_B, signing_key(SERVER_B))
        self.assertEqual(compute_event_id(pdu, V12), first)


class RequiredSignersTests(unittest.TestCase):
    def test_sender_server_from_v3(self) -> None:
        for rv in ALL_VERSIONS:
            if rv.event_format is EventFormat.V1:
                continue
            self.assertEqual(required_signers(event(signed_pdu(rv, sender=BOB), rv)), {SERVER_B})

    def test_event_id_server_in_v1_v2(self) -> None:
        for rv in (V1, V2):
            pdu = signed_pdu(
                rv, sender=BOB, event_id="$abc:c.example", signers=(SERVER_B, SERVER_C)
            )
            self.assertEqual(required_signers(event(pdu, rv)), {SERVER_B, SERVER_C})
            same = signed_pdu(rv, sender=BOB)
            self.assertEqual(required_signers(event(same, rv)), {SERVER_B})

    def restricted_join(self, rv: RoomVersion, membership: str = "join") -> dict[str, Any]:
        return signed_pdu(
            rv,
            sender=BOB,
            event_type="m.room.member",
            state_key=BOB,
            content={
                "membership": membership,
                "join_authorised_via_users_server": "@mod:c.example",
            },
            signers=(SERVER_B, SERVER_C),
        )

    def test_authorising_server_for_restricted_joins_from_v8(self) -> None:
        for rv in ALL_VERSIONS:
            signers = required_signers(event(self.restricted_join(rv), rv))
            if rv.restricted_join_rule:
                self.assertIn(SERVER_C, signers)
            else:
                self.assertNotIn(SERVER_C, signers)
            # Only joins: the key on another membership adds no signer.
            self.assertNotIn(
                SERVER_C, required_signers(event(self.restricted_join(rv, "leave"), rv))
            )

    def test_malformed_authorising_user(self) -> None:
        for value in ("nobody", 5, None):
            pdu = self.restricted_join(V8)
            pdu["content"]["join_authorised_via_users_server"] = value
            self.assertRaises(SignatureError, required_signers, event(pdu, V8))
            self.assertRaises(
                SignatureError, verify_event_signatures, event(pdu, V8), default_keys()
            )

    def test_third_party_invite_needs_no_particular_server(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(
                rv,
                sender=ALICE,
                event_type="m.room.member",
                state_key="@carol:c.example",
                content={"membership": "invite", "third_party_invite": {"signed": {}}},
                signers=(SERVER_B,),
            )
            self.assertEqual(required_signers(event(pdu, rv)), set())
            # Whoever signed it is checked instead.
            self.assertEqual(needed_keys(event(pdu, rv)), {SERVER_B: {"ed25519:k1"}})
            verify_event_signatures(event(pdu, rv), default_keys())
            self.assertRaises(
                SignatureError,
                verify_event_signatures,
                event(pdu, rv),
                key_map(verify_key_entry(SERVER_A, signing_key(SERVER_A))),
            )


class NeededKeysTests(unittest.TestCase):
    def test_only_required_servers_and_ed25519(self) -> None:
        pdu = signed_pdu(V12, signers=(SERVER_A, SERVER_B))
        pdu["signatures"][SERVER_A]["curve25519:x"] = "abc"
        self.assertEqual(needed_keys(event(pdu, V12)), {SERVER_A: {"ed25519:k1"}})

    def test_missing_required_signature_needs_nothing(self) -> None:
        pdu = signed_pdu(V12, signers=(SERVER_B,))
        self.assertEqual(needed_keys(event(pdu, V12)), {})

    def test_batch_minimum_valid_until(self) -> None:
        early = signed_pdu(V5, n=1)
        late = signed_pdu(V5, n=9)
        other = signed_pdu(V5, sender=BOB, n=3)
        wanted = needed_keys_for_pdus([early, late, other, "junk", {"sender": 5}], V5)
        self.assertEqual(
            wanted,
            {SERVER_A: {"ed25519:k1": TS + 9}, SERVER_B: {"ed25519:k1": TS + 3}},
        )
        # Before v5 key validity is not enforced: any key will do.
        early4 = signed_pdu(V4, n=1)
        self.assertEqual(needed_keys_for_pdus([early4], V4), {SERVER_A: {"ed25519:k1": 0}})


class VerificationTests(unittest.TestCase):
    def assertFails(
        self, pdu: dict[str, Any], rv: RoomVersion, keys: KeyMap, fragment: str
    ) -> None:
        err = self.assertRaises(SignatureError, verify_event_signatures, event(pdu, rv), keys)
        self.assertIn(fragment, str(err))

    def test_good_event_all_versions(self) -> None:
        for rv in ALL_VERSIONS:
            verify_event_signatures(event(signed_pdu(rv), rv), default_keys())

    def test_redacted_copy_still_verifies(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            verify_event_signatures(event(redact(pdu, rv), rv), default_keys())

    def test_unsigned_may_change(self) -> None:
        pdu = signed_pdu(V12)
        pdu["unsigned"] = {"age": 99999, "anything": ["else"]}
        verify_event_signatures(event(pdu, V12), default_keys())

    def test_missing_signature(self) -> None:
        pdu = signed_pdu(V12, signers=(SERVER_B,))
        self.assertFails(pdu, V12, default_keys(), f"not signed by {SERVER_A}")
        pdu["signatures"] = {}
        self.assertFails(pdu, V12, default_keys(), f"not signed by {SERVER_A}")

    def test_unknown_keys_are_skipped(self) -> None:
        pdu = signed_pdu(V12)
        pdu["signatures"][SERVER_A]["ed25519:unknown"] = "garbage"
        verify_event_signatures(event(pdu, V12), default_keys())
        # ... but a signature by an unknown key alone is not enough.
        only_unknown = signed_pdu(V12)
        only_unknown["signatures"][SERVER_A] = {"ed25519:unknown": "garbage"}
        self.assertFails(only_unknown, V12, default_keys(), "no signature by a known key")
        self.assertFails(signed_pdu(V12), V12, key_map(), "no signature by a known key")

    def test_every_known_key_signature_must_verify(self) -> None:
        pdu = signed_pdu(V12)
        sign_event(pdu, V12, SERVER_A, signing_key(SERVER_A, "k2"))
        keys = key_map(
            verify_key_entry(SERVER_A, signing_key(SERVER_A)),
            verify_key_entry(SERVER_A, signing_key(SERVER_A, "k2")),
        )
        verify_event_signatures(event(pdu, V12), keys)
        pdu["signatures"][SERVER_A]["ed25519:k2"] = pdu["signatures"][SERVER_A]["ed25519:k1"]
        self.assertFails(pdu, V12, keys, "bad signature from a.example with ed25519:k2")

    def test_bad_signature_encodings(self) -> None:
        good = signed_pdu(V12)["signatures"][SERVER_A]["ed25519:k1"]
        for bad in ("", "!!!!", good[:-2], good + "AAAA", "A" * 86):
            pdu = signed_pdu(V12)
            pdu["signatures"][SERVER_A]["ed25519:k1"] = bad
            self.assertFails(pdu, V12, default_keys(), "bad signature")

    def test_other_servers_signatures_are_not_checked(self) -> None:
        pdu = signed_pdu(V12)
        pdu["signatures"][SERVER_B] = {"ed25519:k1": "A" * 86}
        verify_event_signatures(event(pdu, V12), default_keys())

    def test_signed_by_wrong_server(self) -> None:
        # Signed with A's key but filed under B, for a sender on B.
        pdu = signed_pdu(V12, sender=BOB, signers=(SERVER_A,))
        pdu["signatures"] = {SERVER_B: pdu["signatures"][SERVER_A]}
        self.assertFails(pdu, V12, default_keys(), "bad signature")

    def test_v1_event_id_server_must_sign(self) -> None:
        for rv in (V1, V2):
            pdu = signed_pdu(rv, sender=BOB, event_id="$abc:a.example", signers=(SERVER_B,))
            self.assertFails(pdu, rv, default_keys(), f"not signed by {SERVER_A}")
            sign_event(pdu, rv, SERVER_A, signing_key(SERVER_A))
            verify_event_signatures(event(pdu, rv), default_keys())

    def test_restricted_join_needs_authorising_server(self) -> None:
        content = {"membership": "join", "join_authorised_via_users_server": "@mod:a.example"}
        pdu = signed_pdu(
            V8,
            sender=BOB,
            event_type="m.room.member",
            state_key=BOB,
            content=content,
            signers=(SERVER_B,),
        )
        self.assertFails(pdu, V8, default_keys(), f"not signed by {SERVER_A}")
        sign_event(pdu, V8, SERVER_A, signing_key(SERVER_A))
        verify_event_signatures(event(pdu, V8), default_keys())
        # v7 has no restricted joins: the key is ignored.
        pdu7 = signed_pdu(
            V7,
            sender=BOB,
            event_type="m.room.member",
            state_key=BOB,
            content=content,
            signers=(SERVER_B,),
        )
        verify_event_signatures(event(pdu7, V7), default_keys())

    def test_tampered_signed_field(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            pdu["depth"] += 1
            self.assertRaises(
                SignatureError, verify_event_signatures, event(pdu, rv), default_keys()
            )


class KeyValidityTests(unittest.TestCase):
    def keys(self, valid_until_ts: int, expired: bool = False) -> KeyMap:
        return key_map(
            verify_key_entry(
                SERVER_A, signing_key(SERVER_A), valid_until_ts=valid_until_ts, expired=expired
            )
        )

    def test_enforced_from_v5(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv, n=1)
            ts = pdu["origin_server_ts"]
            verify_event_signatures(event(pdu, rv), self.keys(ts))
            if rv.enforce_key_validity:
                err = self.assertRaises(
                    SignatureError, verify_event_signatures, event(pdu, rv), self.keys(ts - 1)
                )
                self.assertIn("valid until", str(err))
            else:
                verify_event_signatures(event(pdu, rv), self.keys(ts - 1))

    def test_old_keys_only_cover_events_before_expiry(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv, n=1)
            ts = pdu["origin_server_ts"]
            verify_event_signatures(event(pdu, rv), self.keys(ts, expired=True))
            self.assertRaises(
                SignatureError,
                verify_event_signatures,
                event(pdu, rv),
                self.keys(ts - 1, expired=True),
            )

    def test_expired_key_skipped_when_another_is_valid(self) -> None:
        pdu = signed_pdu(V12, n=1)
        sign_event(pdu, V12, SERVER_A, signing_key(SERVER_A, "k2"))
        ts = pdu["origin_server_ts"]
        keys = key_map(
            verify_key_entry(SERVER_A, signing_key(SERVER_A), valid_until_ts=ts - 1, expired=True),
            verify_key_entry(SERVER_A, signing_key(SERVER_A, "k2"), valid_until_ts=ts),
        )
        verify_event_signatures(event(pdu, V12), keys)

    def test_key_usable_at(self) -> None:
        entry = verify_key_entry(SERVER_A, signing_key(SERVER_A), valid_until_ts=100)
        old = verify_key_entry(SERVER_A, signing_key(SERVER_A), valid_until_ts=100, expired=True)
        self.assertTrue(key_usable_at(entry, 100, V5))
        self.assertFalse(key_usable_at(entry, 101, V5))
        self.assertTrue(key_usable_at(entry, 101, V4))
        self.assertFalse(key_usable_at(old, 101, V4))


class BatchTests(unittest.TestCase):
    def test_results_in_order(self) -> None:
        good = event(signed_pdu(V12, n=1), V12)
        bad_pdu = signed_pdu(V12, n=2)
        bad_pdu["content"]["membership"] = "x"
        bad_pdu["type"] = "m.room.member"
        bad = event(bad_pdu, V12)
        unsigned = event(signed_pdu(V12, n=3, signers=(SERVER_B,)), V12)
        results = verify_events_batch([good, bad, unsigned, good], default_keys())
        self.assertIsNone(results[0])
        self.assertIsInstance(results[1], SignatureError)
        self.assertIsInstance(results[2], SignatureError)
        self.assertIsNone(results[3])
        self.assertEqual(verify_events_batch([], default_keys()), [])


class HashCheckTests(unittest.TestCase):
    def test_matching_hash_keeps_event(self) -> None:
        for rv in ALL_VERSIONS:
            e = event(signed_pdu(rv), rv)
            self.assertIs(check_hash_or_redact(e), e)

    def test_unsigned_is_not_hashed(self) -> None:
        pdu = signed_pdu(V12)
        pdu["unsigned"]["age"] = 123456
        e = event(pdu, V12)
        self.assertIs(check_hash_or_redact(e), e)

    def test_mismatch_uses_redacted_form(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            original_id = compute_event_id(pdu, rv)
            pdu["content"]["body"] = "changed in transit"
            e = event(pdu, rv)
            self.assertEqual(e.event_id, original_id)  # body is not in the reference hash
            used = check_hash_or_redact(e)
            self.assertIsNot(used, e)
            self.assertEqual(used.event_id, original_id)
            self.assertEqual(used.content, {})
            self.assertEqual(used.pdu, redact(pdu, rv))
            self.assertEqual(pdu["content"]["body"], "changed in transit")  # input untouched
            verify_event_signatures(used, default_keys())

    def test_missing_or_garbage_hash_redacts(self) -> None:
        for hashes in ({}, {"sha256": "!!"}, {"sha256": 5}, None):
            pdu = signed_pdu(V12)
            pdu["hashes"] = hashes
            used = check_hash_or_redact(Event(pdu, V12))
            self.assertEqual(used.content, {})
