"""Tests for the m.room.power_levels rules and v12 creators, per room version."""

from __future__ import annotations

from typing import Any

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

ZED = "@zed:z.example"


class _PowerLevelsContent(VersionedAuthTest):
    """Shape rules (users object, integer values per version)."""

    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room()

    def _pl(self, **content: Any) -> Event:
        body: dict[str, Any] = {"users": self.room.default_users(ALICE)}
        body.update(content)
        return self.room.make("m.room.power_levels", ALICE, body, "")

    def test_users_must_be_object(self) -> None:
        self.assertRejected(self._pl(users=[BOB]), "users is not an object")

    def test_users_keys_must_be_user_ids(self) -> None:
        for bad in ("bob", "@bob", "#room:b.example"):
            self.assertRejected(self._pl(users={bad: 10}), "invalid user ID")
        # Historical localparts are still user IDs.
        self.assertAllowed(self._pl(users={**self.room.default_users(ALICE), "@Bob!:b.example": 1}))

    def test_stringy_user_level(self) -> None:
        for value in ("50", " 50 ", "+50", "-5", "0050"):
            event = self._pl(users={**self.room.default_users(ALICE), BOB: value})
            self.assertAllowedIf(self.rv.stringy_power_levels, event, "invalid level")

    def test_malformed_strings_rejected_everywhere(self) -> None:
        for value in ("5.0", "abc", "1_0", "", "٥", "+-5"):
            event = self._pl(users={**self.room.default_users(ALICE), BOB: value})
            self.assertRejected(event, "invalid level")

    def test_booleans_and_null_are_not_levels(self) -> None:
        for value in (True, None, [5], {"a": 1}):
            event = self._pl(users={**self.room.default_users(ALICE), BOB: value})
            self.assertRejected(event, "invalid level")

    def test_float_user_level_only_before_v6(self) -> None:
        event = self._pl(users={**self.room.default_users(ALICE), BOB: 50.7})
        self.assertAllowedIf(self.rv.floaty_power_levels, event, "invalid level")

    def test_non_finite_floats_rejected(self) -> None:
        for value in (float("inf"), float("nan")):
            content = {"users": {**self.room.default_users(ALICE), BOB: value}}
            event = Event(
                {**self._pl().pdu, "content": content},
                self.rv,
                event_id="$nonfinite:a.example",
            )
            self.assertRejected(event, "invalid level")

    def test_top_level_strings_rejected_from_v10(self) -> None:
        event = self._pl(ban="50")
        self.assertAllowedIf(self.rv.stringy_power_levels, event, "not an integer")

    def test_events_values_must_be_integers_from_v10(self) -> None:
        event = self._pl(events={"m.room.topic": "50"})
        self.assertAllowedIf(self.rv.stringy_power_levels, event, "events is not an object")
        event = self._pl(notifications={"room": "50"})
        self.assertAllowedIf(self.rv.stringy_power_levels, event, "notifications")

    def test_events_must_be_object(self) -> None:
        # v10+ by the integer rule; v1-v9 when comparing with the previous
        # power levels event, which exists here.
        self.assertRejected(self._pl(events=[1]), "events is not an object")

    def test_invalid_top_level_value_rejected_when_compared(self) -> None:
        self.assertRejected(self._pl(kick="lots"))


class _PowerLevelsChanges(VersionedAuthTest):
    """Change rules: nobody may raise or touch levels above their own."""

    def setUp(self) -> None:
        super().setUp()
        users = {**self.room.default_users(ALICE), DAVE: 50, BOB: 50, CAROL: 20}
        events = {"m.room.name": 50, "m.room.tombstone": 80, "m.room.power_levels": 20}
        self.room.standard_room(
            users=users, power_levels={"events": events, "notifications": {"room": 50}}
        )
        self.base: dict[str, Any] = dict(self.room.state[("m.room.power_levels", "")].content)
        for user in (DAVE, BOB, CAROL, ZED):
            self.room.member(user, "join")

    def _change(self, sender: str = DAVE, **changes: Any) -> Event:
        content = {**self.base, **changes}
        return self.room.make("m.room.power_levels", sender, content, "")

    def _users(self, **levels: Any) -> dict[str, Any]:
        users = dict(self.base["users"])
        for user, level in levels.items():
            user_id = {"bob": BOB, "carol": CAROL, "dave": DAVE}[user]
            if level is None:
                users.pop(user_id)
            else:
                users[user_id] = level
        return users

    def test_first_power_levels_event_allowed(self) -> None:
        room = RoomBuilder(self.version)
        room.create()
        room.member(ALICE, "join")
        event = room.make(
            "m.room.power_levels", ALICE, {"users": {BOB: 1_000_000}, "ban": 9999}, ""
        )
        self.room = room
        self.assertAllowed(event)

    def test_named_levels(self) -> None:
        self.assertAllowed(self._change(kick=40))
        self.assertAllowed(self._change(ban=50))
        self.assertRejected(self._change(ban=51), "above their own level")
        self.assertRejected(self._change(CAROL, kick=20), "from above their own level")

    def test_removing_named_level_counts_as_change(self) -> None:
        content = {k: v for k, v in self.base.items() if k != "kick"}
        self.assertAllowed(self.room.make("m.room.power_levels", DAVE, content, ""))
        self.assertRejected(self.room.make("m.room.power_levels", CAROL, content, ""))

    def test_events_entries(self) -> None:
        events = self.base["events"]
        self.assertAllowed(self._change(events={**events, "m.room.name": 10}))
        self.assertRejected(self._change(events={**events, "m.room.tombstone": 50}), "events")
        removed = {k: v for k, v in events.items() if k != "m.room.tombstone"}
        self.assertRejected(self._change(events=removed), "events")
        self.assertRejected(self._change(events={**events, "m.room.topic": 60}), "events")

    def test_notifications_limited_from_v6(self) -> None:
        event = self._change(CAROL, notifications={"room": 10})
        self.assertAllowedIf(not self.rv.limit_notifications_power_levels, event, "notifications")
        event = self._change(notifications={"room": 100})
        self.assertAllowedIf(not self.rv.limit_notifications_power_levels, event, "notifications")

    def test_users_entries(self) -> None:
        # Dave (50) may promote Carol to 50 but not above.
        self.assertAllowed(self._change(users=self._users(carol=50)))
        self.assertRejected(self._change(users=self._users(carol=51)), "above their own")
        # ... may not demote an equal, but may demote himself.
        self.assertRejected(self._change(users=self._users(bob=0)), "cannot change the level")
        self.assertAllowed(self._change(users=self._users(dave=10)))
        self.assertAllowed(self._change(users=self._users(dave=None)))
        self.assertAllowed(self._change(users=self._users(carol=None)))

    def test_adding_users_above_own_level_rejected(self) -> None:
        users = {**self.base["users"], "@new:n.example": 60}
        self.assertRejected(self._change(users=users), "above their own")

    def test_same_value_as_string_is_no_change(self) -> None:
        event = self._change(CAROL, kick="50", users=self._users(bob="50"))
        self.assertAllowedIf(self.rv.stringy_power_levels, event)

    def test_float_truncation_is_no_change(self) -> None:
        event = self._change(CAROL, kick=50.9, users=self._users(bob=50.2))
        self.assertAllowedIf(self.rv.floaty_power_levels, event)

    def test_required_level_to_send_power_levels(self) -> None:
        self.assertRejected(self._change(ZED), "power level to send")
        self.assertAllowed(self._change(CAROL))


class _Creators(VersionedAuthTest):
    """v12: creators have infinite power and are not listed in power levels."""

    def setUp(self) -> None:
        super().setUp()
        if self.rv.privileged_creators:
            self.room.create(additional_creators=[CAROL])
        else:
            self.room.create()
        self.room.member(ALICE, "join")

    def test_creators_cannot_be_listed(self) -> None:
        for creator in (ALICE, CAROL):
            event = self.room.make("m.room.power_levels", ALICE, {"users": {creator: 100}}, "")
            self.assertAllowedIf(not self.rv.privileged_creators, event, "room creator")

    def test_creator_outranks_any_level(self) -> None:
        big = 2**53 - 1
        self.room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {"users": {DAVE: big} if self.rv.privileged_creators else {ALICE: big, DAVE: big}},
            "",
        )
        self.room.member(DAVE, "join")
        # Dave has the largest integer level, yet cannot ban a v12 creator.
        event = self.room.make_member(DAVE, "ban", ALICE)
        self.assertRejected(event, "ban")
        # A v12 creator can ban him; before v12 equal levels cannot.
        event = self.room.make_member(ALICE, "ban", DAVE)
        self.assertAllowedIf(self.rv.privileged_creators, event, "ban")

    def test_additional_creator_is_privileged(self) -> None:
        self.room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
        self.room.send("m.room.power_levels", ALICE, {"users": {DAVE: 100}}, "")
        self.room.member(CAROL, "join")
        self.room.member(DAVE, "join")
        event = self.room.make("m.room.name", CAROL, {"name": "x"}, "")
        self.assertAllowedIf(self.rv.privileged_creators, event, "power level")
        # Creators cannot kick each other: neither outranks the other.
        if self.rv.privileged_creators:
            self.assertRejected(self.room.make_member(CAROL, "leave", ALICE), "kick")

    def test_creator_outranks_others_without_power_levels(self) -> None:
        self.room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
        self.room.member(BOB, "join")
        self.assertAllowed(self.room.make("m.room.name", ALICE, {"name": "x"}, ""))
        # With no power levels event state_default is 0: anyone joined may set state.
        self.assertAllowed(self.room.make("m.room.name", BOB, {"name": "x"}, ""))
        # ... but kicking needs 50.
        self.assertRejected(self.room.make_member(BOB, "leave", ALICE), "kick")
        self.assertAllowed(self.room.make_member(ALICE, "leave", BOB))

    def test_who_counts_as_creator(self) -> None:
        # v1-v10 read content.creator; v11+ the sender of the create event.
        room = RoomBuilder(self.version)
        body: dict[str, Any] = {"room_version": self.version, "creator": DAVE}
        if not self.rv.room_id_from_create:
            room.room_id = "!who:a.example"
        room.send("m.room.create", ALICE, body, "")
        self.room = room
        dave_first = room.make_member(DAVE, "join")
        alice_first = room.make_member(ALICE, "join")
        self.assertAllowedIf(not self.rv.msc2175_implicit_room_creator, dave_first)
        self.assertAllowedIf(self.rv.msc2175_implicit_room_creator, alice_first)


for _mixin in (_PowerLevelsContent, _PowerLevelsChanges, _Creators):
    globals().update(for_versions(_mixin))
