"""Tests for matrixfed.state.power: the sender power level used for ordering."""

from __future__ import annotations

import math

from twisted.trial import unittest

from matrixfed.state.graph import AuthGraph
from matrixfed.state.power import sender_power_level
from tests.state.dag import ALICE, BOB, CHARLIE, ZARA, RoomDag, initial_room


def level(dag: RoomDag, label: str) -> float:
    return sender_power_level(AuthGraph(dag.rv, dag.events), dag.event(label))


class SenderPowerLevelTests(unittest.SynchronousTestCase):
    def test_from_the_events_own_power_levels(self) -> None:
        """The level comes from the power levels the event cites, not later ones."""
        dag = initial_room("10")
        dag.topic("T0", BOB)  # cites IPOWER: Bob 0
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.topic("T1", BOB)  # cites PA: Bob 50
        self.assertEqual(level(dag, "T0"), 0)
        self.assertEqual(level(dag, "T1"), 50)
        self.assertEqual(level(dag, "PA"), 100)

    def test_users_default(self) -> None:
        dag = initial_room("10")
        dag.power("PA", ALICE, {ALICE: 100}, extra={"users_default": 7})
        dag.message("M", CHARLIE)
        self.assertEqual(level(dag, "M"), 7)

    def test_stringy_level_in_old_rooms(self) -> None:
        dag = initial_room("4")
        dag.add(
            "PA",
            "m.room.power_levels",
            ALICE,
            {"users": {ALICE: 100, ZARA: " 30 "}},
            "",
        )
        dag.message("M", ZARA)
        self.assertEqual(level(dag, "M"), 30)

    def test_creator_before_power_levels(self) -> None:
        """Before any power levels event the creator has 100, everyone else 0."""
        for version in ("1", "10", "11"):
            dag = RoomDag(version)
            dag.create()
            dag.member("IMA", ALICE, "join")
            dag.join_rules("JR", ALICE, "public")
            dag.member("IMB", BOB, "join")
            self.assertEqual(level(dag, "JR"), 100, version)
            self.assertEqual(level(dag, "IMB"), 0, version)

    def test_v12_creators_are_infinite(self) -> None:
        dag = RoomDag("12")
        dag.add(
            "CREATE",
            "m.room.create",
            ALICE,
            {"room_version": "12", "additional_creators": [BOB]},
            "",
        )
        dag.member("IMA", ALICE, "join")
        dag.power("PA", ALICE, {CHARLIE: 100})
        dag.join_rules("JR", ALICE, "public")
        dag.member("IMB", BOB, "join")
        dag.member("IMC", CHARLIE, "join")
        dag.message("MB", BOB)
        dag.message("MC", CHARLIE)
        self.assertEqual(level(dag, "JR"), math.inf)
        self.assertEqual(level(dag, "MB"), math.inf)
        self.assertEqual(level(dag, "MC"), 100)

    def test_missing_auth_events_count_as_none(self) -> None:
        dag = initial_room("10")
        dag.message("M", ALICE)
        events = dict(dag.events)
        del events[dag.id("IPOWER")]
        del events[dag.id("CREATE")]
        graph = AuthGraph(dag.rv, events)
        self.assertEqual(sender_power_level(graph, dag.event("M")), 0)
