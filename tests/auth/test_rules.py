"""Tests for matrixfed.auth.rules: create, auth_events references and the
rules that apply to every event type, run once per room version."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from matrixfed.auth.rules import auth_state_from_events, check_auth, check_auth_events_refs
from matrixfed.errors import AuthError
from matrixfed.events.model import Event
from tests.auth.roombuilder import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    RoomBuilder,
    VersionedAuthTest,
    for_versions,
)


class _CreateRules(VersionedAuthTest):
    def test_plain_create_is_allowed(self) -> None:
        create = self.room.create()
        self.assertEqual(self.room.state, {("m.room.create", ""): create})

    def test_create_with_prev_events_is_rejected(self) -> None:
        other = RoomBuilder(self.version)
        earlier = other.create()
        if not self.rv.room_id_from_create:
            self.room.room_id = "!r:a.example"
        event = self.room.make(
            "m.room.create", ALICE, self._content(), "", prev_events=[earlier.event_id]
        )
        self.assertRejected(event, "prev_events")

    def _content(self, **extra: object) -> dict[str, object]:
        content: dict[str, object] = {"room_version": self.version}
        if not self.rv.msc2175_implicit_room_creator:
            content["creator"] = ALICE
        content.update(extra)
        return content

    def test_room_id_rule(self) -> None:
        if self.rv.room_id_from_create:
            # v12: a create event must not carry a room_id at all.
            event = self.room.make(
                "m.room.create", ALICE, self._content(), "", pdu_extra={"room_id": "!x:a.example"}
            )
            self.assertRejected(event, "room_id")
        else:
            self.room.room_id = "!r:b.example"
            event = self.room.make("m.room.create", ALICE, self._content(), "")
            self.assertRejected(event, "different servers")
            self.room.room_id = "!r:a.example"
            check_auth(self.room.make("m.room.create", ALICE, self._content(), ""), {})

    def test_unknown_room_version_is_rejected(self) -> None:
        self.room.room_id = "!r:a.example"
        for bad in ("13", "org.example.custom", 12):
            event = self.room.make("m.room.create", ALICE, self._content(room_version=bad), "")
            self.assertRejected(event, "unknown room version")

    def test_room_version_may_be_absent(self) -> None:
        self.room.room_id = "!r:a.example"
        content = self._content()
        del content["room_version"]
        check_auth(self.room.make("m.room.create", ALICE, content, ""), {})

    def test_creator_required_before_v11(self) -> None:
        self.room.room_id = "!r:a.example"
        event = self.room.make("m.room.create", ALICE, {"room_version": self.version}, "")
        self.assertAllowedIf(self.rv.msc2175_implicit_room_creator, event, "creator")

    def test_additional_creators_validated_in_v12(self) -> None:
        self.room.room_id = "!r:a.example"
        for bad in ("@bob:b.example", [1], ["bob"], ["@bob:b.example", "@x:bad host"], [None]):
            event = self.room.make(
                "m.room.create", ALICE, self._content(additional_creators=bad), ""
            )
            # Only v12 knows additional_creators; earlier versions ignore the key.
            self.assertAllowedIf(not self.rv.privileged_creators, event, "additional_creators")
        good = [BOB, "@legacy!user:c.example:8448"]
        event = self.room.make("m.room.create", ALICE, self._content(additional_creators=good), "")
        check_auth(event, {})


class _AuthEventsRefs(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room()
        self.room.member(BOB, "join")

    def _id(self, event_type: str, state_key: str = "") -> str:
        return self.room.state[(event_type, state_key)].event_id

    def test_selected_auth_events_pass(self) -> None:
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        check_auth_events_refs(event, self.room.events)
        # The create event is a v1-v11 auth event and never a v12 one.
        self.assertEqual(
            self._id("m.room.create") in event.auth_event_ids, not self.rv.room_id_from_create
        )

    def test_unknown_auth_event_is_rejected(self) -> None:
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        known = {k: v for k, v in self.room.events.items() if k != self._id("m.room.power_levels")}
        with self.assertRaisesRegex(AuthError, "not known"):
            check_auth_events_refs(event, known)

    def test_rejected_auth_event_is_rejected(self) -> None:
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        with self.assertRaisesRegex(AuthError, "rejected"):
            check_auth_events_refs(
                event, self.room.events, rejected={self._id("m.room.member", BOB)}
            )

    def test_duplicate_type_and_state_key_is_rejected(self) -> None:
        old_pl = self._id("m.room.power_levels")
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {"users": self.room.default_users(ALICE), "users_default": 1},
            "",
        )
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        refs = list(event.auth_event_ids) + [old_pl]
        dup = self.room.make("m.room.message", BOB, {"body": "hi"}, auth_events=refs)
        with self.assertRaisesRegex(AuthError, "more than once"):
            check_auth_events_refs(dup, self.room.events)

    def test_entry_not_in_selection_is_rejected(self) -> None:
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        refs = list(event.auth_event_ids) + [self._id("m.room.join_rules")]
        extra = self.room.make("m.room.message", BOB, {"body": "hi"}, auth_events=refs)
        with self.assertRaisesRegex(AuthError, "not allowed"):
            check_auth_events_refs(extra, self.room.events)

    def test_non_state_auth_event_is_rejected(self) -> None:
        message = self.room.send("m.room.message", BOB, {"body": "one"})
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        refs = list(event.auth_event_ids) + [message.event_id]
        bad = self.room.make("m.room.message", BOB, {"body": "hi"}, auth_events=refs)
        with self.assertRaisesRegex(AuthError, "not a state event"):
            check_auth_events_refs(bad, self.room.events)

    def test_auth_event_from_another_room_is_rejected(self) -> None:
        other = RoomBuilder(self.version)
        other.standard_room()
        foreign_pl = other.state[("m.room.power_levels", "")]
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        refs = [e for e in event.auth_event_ids if e != self._id("m.room.power_levels")]
        bad = self.room.make(
            "m.room.message", BOB, {"body": "hi"}, auth_events=refs + [foreign_pl.event_id]
        )
        known = {**self.room.events, foreign_pl.event_id: foreign_pl}
        with self.assertRaisesRegex(AuthError, "another room"):
            check_auth_events_refs(bad, known)

    def test_create_event_citation_by_version(self) -> None:
        create_id = self._id("m.room.create")
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        if self.rv.room_id_from_create:
            cited = self.room.make(
                "m.room.message",
                BOB,
                {"body": "hi"},
                auth_events=list(event.auth_event_ids) + [create_id],
            )
            with self.assertRaisesRegex(AuthError, "must not be cited"):
                check_auth_events_refs(cited, self.room.events)
        else:
            refs = [e for e in event.auth_event_ids if e != create_id]
            uncited = self.room.make("m.room.message", BOB, {"body": "hi"}, auth_events=refs)
            with self.assertRaisesRegex(AuthError, "do not cite the create event"):
                check_auth_events_refs(uncited, self.room.events)

    def test_create_event_refs_are_not_considered(self) -> None:
        check_auth_events_refs(self.room.state[("m.room.create", "")], {})


class _GeneralRules(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room()
        self.room.member(BOB, "join")

    def test_no_create_event_in_state_is_rejected(self) -> None:
        event = self.room.make("m.room.message", BOB, {"body": "hi"})
        state = {k: v for k, v in self.room.state.items() if k != ("m.room.create", "")}
        with self.assertRaisesRegex(AuthError, "no m.room.create"):
            check_auth(event, state)

    def test_event_checked_against_another_rooms_create_is_rejected(self) -> None:
        other = RoomBuilder(self.version)
        other.standard_room()
        other.member(BOB, "join")
        event = other.make("m.room.message", BOB, {"body": "hi"})
        with self.assertRaises(AuthError):
            check_auth(event, self.room.state)

    def test_v12_room_id_must_match_create(self) -> None:
        event = self.room.make(
            "m.room.message", BOB, {"body": "hi"}, pdu_extra={"room_id": "!other:a.example"}
        )
        self.assertRejected(event)
        if self.rv.room_id_from_create:
            self.assertRejected(event, "room_id does not match")

    def test_sender_must_be_joined(self) -> None:
        self.assertRejected(self.room.make("m.room.message", CAROL, {"body": "hi"}), "not joined")
        self.room.member(BOB, "leave")
        self.assertRejected(self.room.make("m.room.message", BOB, {"body": "hi"}), "not joined")

    def test_joined_member_may_send_message(self) -> None:
        self.assertAllowed(self.room.make("m.room.message", BOB, {"body": "hi"}))

    def test_required_power_level(self) -> None:
        topic = self.room.make("m.room.topic", BOB, {"topic": "x"}, "")
        self.assertRejected(topic, "power level")
        self.assertAllowed(self.room.make("m.room.topic", ALICE, {"topic": "x"}, ""))
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {
                "users": self.room.default_users(ALICE),
                "events_default": 10,
                "events": {"m.room.topic": 0},
            },
            "",
        )
        self.assertRejected(self.room.make("m.room.message", BOB, {"body": "hi"}), "power level")
        self.assertAllowed(self.room.make("m.room.topic", BOB, {"topic": "y"}, ""))

    def test_state_key_naming_another_user_is_rejected(self) -> None:
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {"users": self.room.default_users(ALICE), "state_default": 0},
            "",
        )
        self.assertRejected(self.room.make("org.example.s", BOB, {}, ALICE), "another user")
        self.assertAllowed(self.room.make("org.example.s", BOB, {}, BOB))
        self.assertAllowed(self.room.make("org.example.s", BOB, {}, "not-a-user"))

    def test_third_party_invite_needs_invite_level_only(self) -> None:
        content = {"display_name": "x", "key_validity_url": "https://x", "public_key": "AAAA"}
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {
                "users": self.room.default_users(ALICE),
                "invite": 0,
                "events": {"m.room.third_party_invite": 100},
            },
            "",
        )
        # The invite level decides; the event's own required level does not.
        self.assertAllowed(self.room.make("m.room.third_party_invite", BOB, content, "tok"))
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {"users": self.room.default_users(ALICE), "invite": 10},
            "",
        )
        self.assertRejected(
            self.room.make("m.room.third_party_invite", BOB, content, "tok"), "third-party"
        )


class _Federate(VersionedAuthTest):
    def _room(self, federate: bool) -> None:
        self.room.create(**{"m.federate": federate})
        self.room.member(ALICE, "join")
        self.room.send("m.room.power_levels", ALICE, {"users": self.room.default_users(ALICE)}, "")
        self.room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")

    def test_federate_false_keeps_other_servers_out(self) -> None:
        self._room(False)
        self.assertRejected(self.room.make_member(BOB, "join"), "does not federate")
        self.assertAllowed(self.room.make_member(DAVE, "join"))

    def test_federate_true_lets_other_servers_in(self) -> None:
        self._room(True)
        self.assertAllowed(self.room.make_member(BOB, "join"))


class _Aliases(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room()

    def test_aliases_special_case(self) -> None:
        # Bob is not in the room; v1-v5 let any server publish its own aliases.
        event = self.room.make("m.room.aliases", BOB, {"aliases": ["#a:b.example"]}, "b.example")
        self.assertAllowedIf(self.rv.special_case_aliases_auth, event, "not joined")

    def test_aliases_state_key_must_be_sender_server(self) -> None:
        event = self.room.make("m.room.aliases", BOB, {"aliases": []}, "a.example")
        self.assertRejected(event)
        if self.rv.special_case_aliases_auth:
            self.assertRejected(event, "sender's server")

    def test_aliases_follow_state_rules_from_v6(self) -> None:
        self.room.member(BOB, "join")
        # Bob is joined with power 0 < state_default 50.
        event = self.room.make("m.room.aliases", BOB, {"aliases": []}, "b.example")
        self.assertAllowedIf(self.rv.special_case_aliases_auth, event, "power level")


class _Redaction(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room()
        self.room.member(BOB, "join")
        self.room.member(DAVE, "join")
        self.target = self.room.send("m.room.message", ALICE, {"body": "hi"})

    def _redaction(self, sender: str) -> Event:
        if self.rv.v11_top_level_keys:
            return self.room.make("m.room.redaction", sender, {"redacts": self.target.event_id})
        return self.room.make(
            "m.room.redaction", sender, {}, pdu_extra={"redacts": self.target.event_id}
        )

    def test_redaction_from_other_server_without_redact_level(self) -> None:
        # v1/v2 demand the redact level or the same event ID domain; v3+ have
        # no redaction rule (handled when the redaction is applied).
        event = self._redaction(BOB)
        self.assertAllowedIf(self.rv.identifier not in ("1", "2"), event, "redact")

    def test_redaction_from_same_server_is_allowed(self) -> None:
        self.assertAllowed(self._redaction(DAVE))

    def test_redaction_with_redact_level_is_allowed(self) -> None:
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {"users": {**self.room.default_users(ALICE), BOB: 50}},
            "",
        )
        self.assertAllowed(self._redaction(BOB))

    def test_redaction_event_level_applies(self) -> None:
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {"users": self.room.default_users(ALICE), "events": {"m.room.redaction": 60}},
            "",
        )
        self.assertRejected(self._redaction(DAVE), "power level")


class AuthStateFromEventsTests(SynchronousTestCase):
    def test_keys_state_events_and_skips_others(self) -> None:
        room = RoomBuilder("10")
        room.standard_room()
        message = room.send("m.room.message", ALICE, {"body": "x"})
        state = auth_state_from_events([*room.events.values(), message])
        self.assertEqual(state, room.state)


for _mixin in (_CreateRules, _AuthEventsRefs, _GeneralRules, _Federate, _Aliases, _Redaction):
    globals().update(for_versions(_mixin))
