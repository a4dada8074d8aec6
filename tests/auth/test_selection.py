"""Tests for matrixfed.auth.selection: which state an event cites as auth_events."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from matrixfed.auth.selection import auth_types_for_event, select_auth_event_ids
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.auth.roombuilder import ALICE, BOB, CAROL

CREATE = ("m.room.create", "")
PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")


def _types(
    version: str, event_type: str, sender: str, state_key: str | None, content: dict[str, Any]
) -> set[tuple[str, str]]:
    return auth_types_for_event(
        KNOWN_ROOM_VERSIONS[version], event_type, sender, state_key, content
    )


class AuthTypesTests(SynchronousTestCase):
    def test_create_event_has_no_auth_events(self) -> None:
        for version in KNOWN_ROOM_VERSIONS:
            self.assertEqual(_types(version, "m.room.create", ALICE, "", {}), set())

    def test_message_cites_create_power_levels_and_sender(self) -> None:
        for version in KNOWN_ROOM_VERSIONS:
            expected = {PL, ("m.room.member", ALICE)}
            if version != "12":
                expected.add(CREATE)
            self.assertEqual(
                _types(version, "m.room.message", ALICE, None, {"body": "hi"}), expected, version
            )

    def test_v12_never_selects_create(self) -> None:
        types = _types("12", "m.room.member", BOB, BOB, {"membership": "join"})
        self.assertNotIn(CREATE, types)
        self.assertEqual(types, {PL, ("m.room.member", BOB), JR})

    def test_join_invite_knock_cite_join_rules_leave_and_ban_do_not(self) -> None:
        for membership, wants_jr in (
            ("join", True),
            ("invite", True),
            ("knock", True),
            ("leave", False),
            ("ban", False),
        ):
            types = _types("10", "m.room.member", ALICE, BOB, {"membership": membership})
            self.assertEqual(JR in types, wants_jr, membership)
            self.assertIn(("m.room.member", BOB), types)
            self.assertIn(("m.room.member", ALICE), types)

    def test_third_party_invite_cites_token_event(self) -> None:
        content = {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}}
        types = _types("9", "m.room.member", ALICE, BOB, content)
        self.assertIn(("m.room.third_party_invite", "tok"), types)

    def test_third_party_invite_without_token_selects_nothing_extra(self) -> None:
        content = {"membership": "invite", "third_party_invite": {"signed": {}}}
        types = _types("9", "m.room.member", ALICE, BOB, content)
        self.assertFalse(any(t == "m.room.third_party_invite" for t, _ in types))

    def test_join_authoriser_cited_from_v8(self) -> None:
        content = {"membership": "join", "join_authorised_via_users_server": CAROL}
        for version in KNOWN_ROOM_VERSIONS:
            types = _types(version, "m.room.member", BOB, BOB, content)
            wanted = KNOWN_ROOM_VERSIONS[version].restricted_join_rule
            self.assertEqual(("m.room.member", CAROL) in types, wanted, version)
            self.assertEqual(wanted, int(version) >= 8)

    def test_authoriser_ignored_on_invite(self) -> None:
        content = {"membership": "invite", "join_authorised_via_users_server": CAROL}
        self.assertNotIn(
            ("m.room.member", CAROL), _types("10", "m.room.member", ALICE, BOB, content)
        )


class SelectAuthEventIdsTests(SynchronousTestCase):
    state = {
        CREATE: "$create",
        PL: "$pl",
        JR: "$jr",
        ("m.room.member", ALICE): "$alice",
        ("m.room.member", BOB): "$bob",
        ("m.room.topic", ""): "$topic",
    }

    def test_fixed_order_and_only_present_entries(self) -> None:
        ids = select_auth_event_ids(
            KNOWN_ROOM_VERSIONS["10"],
            "m.room.member",
            ALICE,
            BOB,
            {"membership": "invite"},
            self.state,
        )
        self.assertEqual(ids, ["$create", "$pl", "$alice", "$bob", "$jr"])

    def test_v12_omits_create(self) -> None:
        ids = select_auth_event_ids(
            KNOWN_ROOM_VERSIONS["12"], "m.room.message", ALICE, None, {}, self.state
        )
        self.assertEqual(ids, ["$pl", "$alice"])

    def test_missing_state_is_skipped(self) -> None:
        ids = select_auth_event_ids(
            KNOWN_ROOM_VERSIONS["1"], "m.room.member", CAROL, CAROL, {"membership": "join"}, {}
        )
        self.assertEqual(ids, [])

    def test_self_membership_listed_once(self) -> None:
        ids = select_auth_event_ids(
            KNOWN_ROOM_VERSIONS["8"],
            "m.room.member",
            BOB,
            BOB,
            {"membership": "join", "join_authorised_via_users_server": BOB},
            self.state,
        )
        self.assertEqual(ids, ["$create", "$pl", "$bob", "$jr"])
