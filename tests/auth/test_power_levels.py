"""Tests for matrixfed.auth.power_levels: value parsing, defaults, creators."""

from __future__ import annotations

import math
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from matrixfed.auth.power_levels import (
    PowerLevels,
    creators,
    parse_power_level,
    required_power_level,
    user_power_level,
)
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.auth.roombuilder import ALICE, BOB, CAROL, DAVE, RoomBuilder

V = KNOWN_ROOM_VERSIONS


class ParsePowerLevelTests(SynchronousTestCase):
    # value -> (v1-v5, v6-v9, v10+)
    table: list[tuple[Any, tuple[int | None, int | None, int | None]]] = [
        (50, (50, 50, 50)),
        (-3, (-3, -3, -3)),
        (2**60, (2**60, 2**60, 2**60)),
        ("50", (50, 50, None)),
        ("  +0050\t", (50, 50, None)),
        ("-7", (-7, -7, None)),
        ("5.0", (None, None, None)),
        ("5e2", (None, None, None)),
        ("1_000", (None, None, None)),
        ("+-1", (None, None, None)),
        ("", (None, None, None)),
        ("٣", (None, None, None)),
        (50.9, (50, None, None)),
        (-50.9, (-50, None, None)),
        (5.114698e4, (51146, None, None)),
        (math.inf, (None, None, None)),
        (math.nan, (None, None, None)),
        (True, (None, None, None)),
        (None, (None, None, None)),
        ([1], (None, None, None)),
    ]

    def test_table(self) -> None:
        for value, expected in self.table:
            for version in V:
                n = int(version)
                want = expected[0] if n <= 5 else expected[1] if n <= 9 else expected[2]
                got = parse_power_level(value, V[version])
                self.assertEqual(got, want, f"{value!r} in v{version}")
                if got is not None:
                    self.assertIs(type(got), int)


class DefaultsTests(SynchronousTestCase):
    def test_without_power_levels_event(self) -> None:
        for version in V:
            room = RoomBuilder(version)
            room.create(ALICE)
            expected_creator = math.inf if V[version].privileged_creators else 100
            self.assertEqual(user_power_level(ALICE, room.state), expected_creator)
            self.assertEqual(user_power_level(BOB, room.state), 0)
            self.assertEqual(required_power_level("m.room.name", True, room.state), 0)
            self.assertEqual(required_power_level("m.room.message", False, room.state), 0)
            pl = PowerLevels.from_state(room.state)
            self.assertEqual(
                [pl.named_level(k) for k in ("ban", "kick", "redact", "invite")], [50, 50, 50, 0]
            )

    def test_with_sparse_power_levels_event(self) -> None:
        for version in V:
            room = RoomBuilder(version)
            room.create(ALICE)
            room.member(ALICE, "join")
            room.send(
                "m.room.power_levels",
                ALICE,
                {"users": {BOB: 7}, "users_default": 3, "events": {"m.room.name": 9}},
                "",
            )
            self.assertEqual(user_power_level(BOB, room.state), 7)
            self.assertEqual(user_power_level(CAROL, room.state), 3)
            # Before v12 the creator has no special standing once power levels exist.
            expected = math.inf if V[version].privileged_creators else 3
            self.assertEqual(user_power_level(ALICE, room.state), expected)
            self.assertEqual(required_power_level("m.room.name", True, room.state), 9)
            self.assertEqual(required_power_level("m.room.topic", True, room.state), 50)
            self.assertEqual(required_power_level("m.room.message", False, room.state), 0)

    def test_stringy_values_read_in_old_rooms(self) -> None:
        room = RoomBuilder("9")
        room.create(ALICE)
        room.member(ALICE, "join")
        room.send(
            "m.room.power_levels",
            ALICE,
            {"users": {ALICE: "100", BOB: " 20 "}, "state_default": "30"},
            "",
        )
        self.assertEqual(user_power_level(BOB, room.state), 20)
        self.assertEqual(required_power_level("m.room.name", True, room.state), 30)

    def test_empty_state(self) -> None:
        self.assertEqual(user_power_level(ALICE, {}), 0)
        self.assertEqual(required_power_level("m.room.name", True, {}), 0)


class CreatorsTests(SynchronousTestCase):
    def test_creators_per_version(self) -> None:
        for version in V:
            room = RoomBuilder(version)
            if not V[version].room_id_from_create:
                room.room_id = f"!c{version}:a.example"
            content: dict[str, Any] = {"additional_creators": [BOB, 5]}
            if not V[version].msc2175_implicit_room_creator:
                content["creator"] = DAVE
            create = room.make("m.room.create", ALICE, content, "")
            room.apply(create)
            if V[version].privileged_creators:
                # Only strings count; check_auth rejects such a create anyway.
                expected = {ALICE, BOB}
            elif V[version].msc2175_implicit_room_creator:
                expected = {ALICE}
            else:
                expected = {DAVE}
            self.assertEqual(creators(room.state), expected, version)

    def test_no_create_event(self) -> None:
        self.assertEqual(creators({}), set())
