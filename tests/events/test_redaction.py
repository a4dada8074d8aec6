"""Tests for matrixfed.events.redaction: the kept keys of every room version,
written out from the spec's redaction lists (rooms/fragments/*-redactions.md)."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import RoomVersion, get_room_version
from tests.events.fixtures import ALL_VERSIONS

TOP_V1 = {
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
    "signatures", "depth", "prev_events", "prev_state", "auth_events", "origin",
    "origin_server_ts", "membership",
}  # fmt: skip
TOP_V11 = TOP_V1 - {"origin", "membership", "prev_state"}
PL_V1 = {"ban", "events", "events_default", "kick", "redact", "state_default", "users",
         "users_default"}  # fmt: skip


def n(rv: RoomVersion) -> int:
    return int(rv.identifier)


def expected_content_keys(event_type: str, rv: RoomVersion) -> set[str] | None:
    """Content keys the spec keeps for ``event_type`` in ``rv``; None = all."""
    v = n(rv)
    if event_type == "m.room.member":
        return {"membership", "join_authorised_via_users_server"} if v >= 9 else {"membership"}
    if event_type == "m.room.create":
        return None if v >= 11 else {"creator"}
    if event_type == "m.room.join_rules":
        return {"join_rule", "allow"} if v >= 8 else {"join_rule"}
    if event_type == "m.room.power_levels":
        return PL_V1 | {"invite"} if v >= 11 else PL_V1
    if event_type == "m.room.aliases":
        return {"aliases"} if v <= 5 else set()
    if event_type == "m.room.history_visibility":
        return {"history_visibility"}
    if event_type == "m.room.redaction":
        return {"redacts"} if v >= 11 else set()
    return set()


CANDIDATE_CONTENT = {
    "membership": "join",
    "join_authorised_via_users_server": "@u:a.example",
    "creator": "@u:a.example",
    "room_version": "9",
    "join_rule": "restricted",
    "allow": [{"type": "m.room_membership", "room_id": "!x:a.example"}],
    "invite": 0,
    "aliases": ["#a:a.example"],
    "history_visibility": "shared",
    "redacts": "$abc",
    "displayname": "junk",
    "body": "junk",
    **{k: 50 for k in PL_V1},
}
TYPES = (
    "m.room.member",
    "m.room.create",
    "m.room.join_rules",
    "m.room.power_levels",
    "m.room.aliases",
    "m.room.history_visibility",
    "m.room.redaction",
    "m.room.message",
    "m.room.topic",
)


def full_event(event_type: str) -> dict[str, Any]:
    pdu: dict[str, Any] = {k: f"value-{k}" for k in TOP_V1}
    pdu.update(
        type=event_type,
        content=dict(CANDIDATE_CONTENT),
        unsigned={"age": 1},
        age_ts=5,
        redacts="$top",
        extra_top_level="junk",
        signatures={"a.example": {"ed25519:1": "sig"}},
        hashes={"sha256": "h"},
    )
    return pdu


class RedactionListTests(unittest.TestCase):
    def test_top_level_keys(self) -> None:
        for rv in ALL_VERSIONS:
            expected = TOP_V11 if n(rv) >= 11 else TOP_V1
            redacted = redact(full_event("m.room.message"), rv)
            self.assertEqual(set(redacted), expected, rv.identifier)

    def test_content_keys_per_type_and_version(self) -> None:
        for rv in ALL_VERSIONS:
            for event_type in TYPES:
                redacted = redact(full_event(event_type), rv)
                keep = expected_content_keys(event_type, rv)
                wanted = set(CANDIDATE_CONTENT) if keep is None else keep
                self.assertEqual(set(redacted["content"]), wanted, f"v{rv.identifier} {event_type}")
                for k in wanted:
                    self.assertEqual(redacted["content"][k], CANDIDATE_CONTENT[k])

    def test_third_party_invite_signed_kept_from_v11(self) -> None:
        signed = {"mxid": "@u:a.example", "token": "t", "signatures": {}}
        content = {
            "membership": "invite",
            "third_party_invite": {"display_name": "junk", "signed": signed},
        }
        for rv in ALL_VERSIONS:
            redacted = redact({"type": "m.room.member", "content": content}, rv)
            if n(rv) >= 11:
                self.assertEqual(
                    redacted["content"],
                    {"membership": "invite", "third_party_invite": {"signed": signed}},
                )
            else:
                self.assertEqual(redacted["content"], {"membership": "invite"})
        # Without a `signed` key nothing of third_party_invite survives.
        bare = {"type": "m.room.member", "content": {"third_party_invite": {"x": 1}}}
        self.assertEqual(redact(bare, get_room_version("11"))["content"], {})

    def test_state_key_of_non_member_events_survives(self) -> None:
        pdu = {"type": "m.room.topic", "state_key": "", "content": {"topic": "t"}}
        for rv in ALL_VERSIONS:
            self.assertEqual(
                redact(pdu, rv), {"type": "m.room.topic", "state_key": "", "content": {}}
            )

    def test_input_untouched_and_result_independent(self) -> None:
        pdu = full_event("m.room.member")
        before = repr(pdu)
        out = redact(pdu, get_room_version("12"))
        out["content"]["membership"] = "leave"
        self.assertEqual(repr(pdu), before)

    def test_content_not_an_object(self) -> None:
        for value in (None, [], "x"):
            self.assertEqual(
                redact({"type": "m.room.member", "content": value}, ALL_VERSIONS[0])["content"], {}
            )

    def test_idempotent(self) -> None:
        for rv in ALL_VERSIONS:
            for event_type in TYPES:
                once = redact(full_event(event_type), rv)
                self.assertEqual(redact(once, rv), once)
