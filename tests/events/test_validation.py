"""Tests for matrixfed.events.validation: one test per rule, across room versions."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from twisted.trial import unittest
from unpaddedbase64 import encode_base64

from matrixfed.errors import EventSizeError, InvalidEventError
from matrixfed.events.model import Event
from matrixfed.events.room_versions import EventFormat, RoomVersion, get_room_version
from matrixfed.events.validation import (
    MAX_AUTH_EVENTS,
    MAX_PDU_BYTES,
    MAX_PREV_EVENTS,
    validate_pdu,
)
from tests.events.fixtures import ALL_VERSIONS, fake_event_id, ref, signed_pdu

V1, V3, V4, V5, V6, V10, V11, V12 = (
    get_room_version(v) for v in ("1", "3", "4", "5", "6", "10", "11", "12")
)


class ValidationTestCase(unittest.TestCase):
    def assertInvalid(
        self, pdu: Any, rv: RoomVersion, fragment: str, **kw: Any
    ) -> InvalidEventError:
        err = self.assertRaises(InvalidEventError, validate_pdu, pdu, rv, **kw)
        self.assertIn(fragment, str(err), f"room version {rv.identifier}")
        return err

    def assertValid(self, pdu: Any, rv: RoomVersion, **kw: Any) -> None:
        validate_pdu(pdu, rv, **kw)


class WellFormedTests(ValidationTestCase):
    def test_well_formed_message_and_state_events(self) -> None:
        for rv in ALL_VERSIONS:
            self.assertValid(signed_pdu(rv), rv)
            self.assertValid(
                signed_pdu(rv, event_type="m.room.topic", state_key="", content={"topic": "t"}),
                rv,
            )

    def test_from_pdu_validates(self) -> None:
        pdu = signed_pdu(V10)
        del pdu["depth"]
        self.assertRaises(InvalidEventError, Event.from_pdu, pdu, V10)

    def test_not_an_object(self) -> None:
        for value in (None, [], "event", 3, 1.5, True, [signed_pdu(V12)]):
            self.assertInvalid(value, V12, "not a JSON object")

    def test_unsigned_optional(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            del pdu["unsigned"]
            self.assertValid(pdu, rv)
            pdu["unsigned"] = []
            self.assertInvalid(pdu, rv, "unsigned")


class RequiredFieldTests(ValidationTestCase):
    common = (
        "type",
        "sender",
        "content",
        "origin_server_ts",
        "depth",
        "hashes",
        "signatures",
        "prev_events",
        "auth_events",
        "room_id",
    )

    def test_each_required_field_missing(self) -> None:
        for rv in ALL_VERSIONS:
            for key in self.common:
                pdu = signed_pdu(rv)
                del pdu[key]
                self.assertInvalid(pdu, rv, key)

    def test_event_id_required_in_v1_v2_only(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv)
            pdu.pop("event_id", None)
            if rv.event_format is EventFormat.V1:
                self.assertInvalid(pdu, rv, "event_id")
            else:
                self.assertValid(pdu, rv)

    def test_wrong_types(self) -> None:
        bad: dict[str, list[Any]] = {
            "type": [None, 1, ["m.room.message"], {}],
            "sender": [None, 1, ["@a:b"]],
            "content": [None, [], "body", 1],
            "origin_server_ts": [None, "1", 1.5, True, [1]],
            "depth": [None, "3", 3.0, False, [3]],
            "hashes": [None, [], "abc", {"sha256": 1}, {"sha512": "x"}],
            "signatures": [None, [], {"a.example": "sig"}, {"a.example": {"ed25519:1": 5}}],
            "prev_events": [None, {}, "$x"],
            "auth_events": [None, {}, "$x"],
            "room_id": [None, 5, ["!r:a.example"]],
            "state_key": [None, 0, [], {}],
        }
        for rv in ALL_VERSIONS:
            for key, values in bad.items():
                for value in values:
                    pdu = signed_pdu(rv)
                    pdu[key] = value
                    self.assertRaises(InvalidEventError, validate_pdu, pdu, rv)

    def test_redacts_must_be_a_string_before_v11(self) -> None:
        for rv in ALL_VERSIONS:
            pdu = signed_pdu(rv, event_type="m.room.redaction", content={})
            pdu["redacts"] = 7
            if rv.v11_top_level_keys:
                # Not a protocol field from v11 (content.redacts is used).
                self.assertValid(pdu, rv)
            else:
                self.assertInvalid(pdu, rv, "redacts")


class IdentifierTests(ValidationTestCase):
    def test_sender_grammar(self) -> None:
        good = [
            "@alice:a.example",
            "@:a.example",
            "@ALICE weird/ü:a.example",
            "@a:[::1]:8448",
            "@a:127.0.0.1:8448",
        ]
        bad = [
            "alice:a.example",
            "@alice",
            "@alice:",
            "@alice:bad host",
            "@al\x00ice:a.example",
            "@a:b.example:port",
            "!alice:a.example",
        ]
        for rv in (V1, V11, V12):
            for sender in good:
                self.assertValid(signed_pdu(rv, sender=sender, signers=("a.example",)), rv)
            for sender in bad:
                pdu = signed_pdu(rv)
                pdu["sender"] = sender
                self.assertInvalid(pdu, rv, "sender")

    def test_v1_event_id_shape(self) -> None:
        for rv in (V1, get_room_version("2")):
            for event_id in ("abc:a.example", "$abc", "$abc:", "$abc:bad host"):
                pdu = signed_pdu(rv)
                pdu["event_id"] = event_id
                self.assertInvalid(pdu, rv, "event_id")

    def test_room_id_shape_before_v12(self) -> None:
        for rv in ALL_VERSIONS:
            if rv.room_id_from_create:
                continue
            for room_id in ("room:a.example", "!room", "!room:", "#room:a.example"):
                pdu = signed_pdu(rv)
                pdu["room_id"] = room_id
                self.assertInvalid(pdu, rv, "room_id")

    def test_v12_room_id_is_a_hash_without_server(self) -> None:
        pdu = signed_pdu(V12)
        self.assertNotIn(":", pdu["room_id"])
        self.assertEqual(len(pdu["room_id"]), 44)
        for room_id in (
            "!room:a.example",
            pdu["room_id"] + "A",
            pdu["room_id"][:-1] + "+",
            "$" + pdu["room_id"][1:],
        ):
            bad = dict(pdu, room_id=room_id)
            self.assertInvalid(bad, V12, "room_id")
        # v11 rooms still have a server part.
        self.assertInvalid(dict(signed_pdu(V11), room_id=pdu["room_id"]), V11, "room_id")

    def test_v12_create_event_has_no_room_id(self) -> None:
        create = signed_pdu(
            V12,
            event_type="m.room.create",
            state_key="",
            content={"room_version": "12"},
            prev_events=[],
            auth_events=[],
        )
        self.assertNotIn("room_id", create)
        self.assertValid(create, V12)
        # Earlier versions require it on create events too.
        create11 = signed_pdu(V11, event_type="m.room.create", state_key="", content={})
        del create11["room_id"]
        self.assertInvalid(create11, V11, "room_id")
        # A v12 create that carries one is left to auth rule 1.2 (rejection),
        # but it must at least be a string.
        self.assertValid(dict(create, room_id="!x:a.example"), V12)
        self.assertInvalid(dict(create, room_id=5), V12, "room_id")


class ReferenceTests(ValidationTestCase):
    def test_v1_refs_accept_synapse_empty_hashes(self) -> None:
        for rv in (V1, get_room_version("2")):
            pdu = signed_pdu(rv)
            pdu["prev_events"] = [["$p1:a.example", {}]]
            pdu["auth_events"] = [["$a1:a.example", {"sha256": "abc"}], ["$a2:b.example", {}]]
            self.assertValid(pdu, rv)
            self.assertEqual(Event(pdu, rv).prev_event_ids, ("$p1:a.example",))

    def test_v1_refs_reject_other_shapes(self) -> None:
        bad = [
            "$p1:a.example",
            ["$p1:a.example"],
            ["$p1:a.example", {}, {}],
            ["$p1:a.example", None],
            ["$p1:a.example", {"sha256": 5}],
            [5, {}],
            ["p1:a.example", {}],
            ["$p1", {}],
        ]
        for item in bad:
            pdu = signed_pdu(V1)
            pdu["prev_events"] = [item]
            self.assertInvalid(pdu, V1, "prev_events")

    def test_hash_refs_per_alphabet(self) -> None:
        digest = hashlib.sha256(b"x").digest()
        std = "$" + encode_base64(digest)
        urlsafe = "$" + encode_base64(digest, urlsafe=True)
        # Pick a digest whose encodings differ so each alphabet is exercised.
        n = 0
        while std == urlsafe:
            n += 1
            digest = hashlib.sha256(str(n).encode()).digest()
            std, urlsafe = "$" + encode_base64(digest), "$" + encode_base64(digest, urlsafe=True)
        self.assertValid(dict(signed_pdu(V3), prev_events=[std]), V3)
        self.assertInvalid(dict(signed_pdu(V3), prev_events=[urlsafe]), V3, "prev_events")
        for rv in (V4, V11, V12):
            self.assertValid(dict(signed_pdu(rv), auth_events=[urlsafe]), rv)
            self.assertInvalid(dict(signed_pdu(rv), auth_events=[std]), rv, "auth_events")

    def test_hash_refs_reject_other_shapes(self) -> None:
        good = fake_event_id(V12, 5)
        for item in (good[1:], good + "A", good[:-1], "$abc:a.example", [good, {}], 5, None):
            self.assertInvalid(dict(signed_pdu(V12), prev_events=[item]), V12, "prev_events")

    def test_count_limits_unless_backfilled(self) -> None:
        for rv in ALL_VERSIONS:
            for key, limit in (("auth_events", MAX_AUTH_EVENTS), ("prev_events", MAX_PREV_EVENTS)):
                at_limit = [ref(rv, fake_event_id(rv, i)) for i in range(limit)]
                over = at_limit + [ref(rv, fake_event_id(rv, limit))]
                self.assertValid(dict(signed_pdu(rv), **{key: at_limit}), rv)
                self.assertInvalid(dict(signed_pdu(rv), **{key: over}), rv, key)
                self.assertValid(dict(signed_pdu(rv), **{key: over}), rv, backfilled=True)


class NumberTests(ValidationTestCase):
    def test_depth_range(self) -> None:
        for rv in ALL_VERSIONS:
            self.assertValid(dict(signed_pdu(rv), depth=0), rv)
            self.assertInvalid(dict(signed_pdu(rv), depth=-1), rv, "depth")
            if rv.strict_canonical_json:
                self.assertValid(dict(signed_pdu(rv), depth=2**53 - 1), rv)
                self.assertInvalid(dict(signed_pdu(rv), depth=2**53), rv, "depth")
            else:
                self.assertValid(dict(signed_pdu(rv), depth=2**63 - 1), rv)
                self.assertInvalid(dict(signed_pdu(rv), depth=2**63), rv, "depth")

    def test_origin_server_ts_range(self) -> None:
        self.assertValid(dict(signed_pdu(V5), origin_server_ts=2**60), V5)
        self.assertInvalid(dict(signed_pdu(V5), origin_server_ts=2**63), V5, "origin_server_ts")
        self.assertInvalid(dict(signed_pdu(V6), origin_server_ts=2**60), V6, "origin_server_ts")

    def test_strict_canonical_json_from_v6(self) -> None:
        cases: list[tuple[Any, bool]] = [
            (2**53 - 1, True),
            (-(2**53) + 1, True),
            (2**53, False),
            (-(2**53), False),
            (1.5, False),
            (1.0, False),
            ({"deep": [1, {"x": 2.5}]}, False),
            ([0, 2**64], False),
            ({"deep": [1, {"x": "2.5"}]}, True),
        ]
        for rv in ALL_VERSIONS:
            for value, strict_ok in cases:
                pdu = signed_pdu(rv, content={"body": "x", "value": value})
                if strict_ok or not rv.strict_canonical_json:
                    self.assertValid(pdu, rv)
                else:
                    err = self.assertInvalid(pdu, rv, "strict canonical JSON")
                    self.assertIn("content.value", str(err))

    def test_floats_anywhere_from_v6(self) -> None:
        pdu = signed_pdu(V6)
        pdu["unsigned"] = {"age": 1.5}
        self.assertInvalid(pdu, V6, "unsigned.age")
        pdu = signed_pdu(V6)
        pdu["extra"] = [1, 2, 3.25]
        self.assertInvalid(pdu, V6, "extra.2")

    def test_nan_and_infinity_never_valid(self) -> None:
        for rv in ALL_VERSIONS:
            for value in (float("nan"), float("inf"), float("-inf")):
                pdu = signed_pdu(rv)
                pdu["content"] = {"v": value}
                self.assertRaises(InvalidEventError, validate_pdu, pdu, rv)


class SizeTests(ValidationTestCase):
    def padded(self, rv: RoomVersion, total: int) -> dict[str, Any]:
        """A PDU whose canonical JSON is exactly ``total`` bytes."""
        from canonicaljson import encode_canonical_json

        pdu = signed_pdu(rv, content={"body": ""})
        size = len(encode_canonical_json(pdu))
        pdu["content"]["body"] = "x" * (total - size)
        self.assertEqual(len(encode_canonical_json(pdu)), total)
        return pdu

    def test_whole_pdu_limit(self) -> None:
        for rv in ALL_VERSIONS:
            self.assertValid(self.padded(rv, MAX_PDU_BYTES), rv)
            err = self.assertRaises(
                EventSizeError, validate_pdu, self.padded(rv, MAX_PDU_BYTES + 1), rv
            )
            self.assertFalse(err.rejectable)

    def test_limit_counts_signatures_and_unsigned(self) -> None:
        pdu = self.padded(V12, MAX_PDU_BYTES)
        pdu["unsigned"]["age"] = 50  # one more byte, in unsigned
        self.assertRaises(EventSizeError, validate_pdu, pdu, V12)

    def test_multibyte_characters_count_in_bytes(self) -> None:
        pdu = self.padded(V12, MAX_PDU_BYTES - 1)
        pdu["content"]["body"] = pdu["content"]["body"][:-1] + "é"  # 2 bytes: +1
        validate_pdu(pdu, V12)
        pdu["content"]["body"] = pdu["content"]["body"][:-2] + "éé"
        self.assertRaises(EventSizeError, validate_pdu, pdu, V12)

    def test_identifier_limits_255_bytes(self) -> None:
        for rv in ALL_VERSIONS:
            for field in ("type", "state_key", "sender", "room_id", "event_id"):
                if field == "event_id" and rv.event_format is not EventFormat.V1:
                    continue
                if field == "room_id" and rv.room_id_from_create:
                    continue
                ok, too_long = self.with_length(rv, field, 255), self.with_length(rv, field, 256)
                self.assertValid(ok, rv)
                err = self.assertRaises(EventSizeError, validate_pdu, too_long, rv)
                self.assertIn(field, str(err))
                self.assertFalse(err.rejectable)

    def with_length(self, rv: RoomVersion, field: str, n: int, char: str = "x") -> dict[str, Any]:
        pdu = signed_pdu(rv, event_type="m.room.topic", state_key="")
        if field in ("type", "state_key"):
            pdu[field] = char * n
        elif field == "sender":
            pdu["sender"] = "@" + char * (n - 1 - len(":a.example")) + ":a.example"
        elif field == "room_id":
            pdu["room_id"] = "!" + char * (n - 1 - len(":a.example")) + ":a.example"
        else:
            pdu["event_id"] = "$" + char * (n - 1 - len(":a.example")) + ":a.example"
        return pdu

    def test_bytes_not_code_points_from_v11(self) -> None:
        # 128 x "é" is 128 code points but 256 bytes.
        pdu = signed_pdu(V11, event_type="é" * 128)
        err = self.assertRaises(EventSizeError, validate_pdu, pdu, V11)
        self.assertFalse(err.rejectable)

    def test_bytes_over_code_points_under_is_rejectable_before_v11(self) -> None:
        for rv in (V1, V10):
            for field in ("type", "state_key"):
                pdu = signed_pdu(rv, event_type="m.room.topic", state_key="")
                pdu[field] = "é" * 128
                err = self.assertRaises(EventSizeError, validate_pdu, pdu, rv)
                self.assertTrue(err.rejectable, (rv.identifier, field))
                # Over in code points as well: dropped.
                pdu[field] = "é" * 256
                err = self.assertRaises(EventSizeError, validate_pdu, pdu, rv)
                self.assertFalse(err.rejectable)

    def test_rejectable_size_error_only_when_nothing_worse(self) -> None:
        pdu = signed_pdu(V10, event_type="é" * 128)
        del pdu["depth"]
        err = self.assertRaises(InvalidEventError, validate_pdu, pdu, V10)
        self.assertNotIsInstance(err, EventSizeError)


class NeverCrashesTests(ValidationTestCase):
    def test_lone_surrogates(self) -> None:
        for rv in (V5, V12):
            for key in ("type", "sender", "state_key"):
                pdu = signed_pdu(rv, event_type="m.room.topic", state_key="")
                pdu[key] = "@\ud800:a.example" if key == "sender" else "\ud800"
                self.assertRaises(InvalidEventError, validate_pdu, pdu, rv)
            pdu = signed_pdu(rv)
            pdu["content"] = {"body": "\udfff"}
            self.assertRaises(InvalidEventError, validate_pdu, pdu, rv)

    def test_non_json_values(self) -> None:
        for rv in (V5, V12):
            for value in (object(), b"bytes", {1, 2}, 1 + 2j):
                pdu = signed_pdu(rv)
                pdu["content"] = {"v": value}
                self.assertRaises(InvalidEventError, validate_pdu, pdu, rv)

    def test_mixed_key_types(self) -> None:
        pdu = signed_pdu(V5)
        pdu["content"] = {"a": 1, 2: "b"}
        self.assertRaises(InvalidEventError, validate_pdu, pdu, V5)

    def test_deep_nesting(self) -> None:
        deep: Any = "x"
        for _ in range(5000):
            deep = [deep]
        for rv in (V5, V12):
            pdu = signed_pdu(rv)
            pdu["content"] = {"deep": deep}
            self.assertRaises(InvalidEventError, validate_pdu, pdu, rv)

    def test_every_field_replaced_by_every_kind_of_value(self) -> None:
        values: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", [], [None], {}, {"a": None}]
        for rv in ALL_VERSIONS:
            base = signed_pdu(
                rv,
                event_type="m.room.member",
                state_key="@alice:a.example",
                content={"membership": "join"},
            )
            for key in list(base):
                for value in values:
                    pdu = copy.deepcopy(base)
                    pdu[key] = value
                    try:
                        validate_pdu(pdu, rv)
                    except InvalidEventError:
                        pass
