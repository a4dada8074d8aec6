"""Tests for matrixfed.state.v1: room version 1 state resolution.

Several tests build the same fork in room version 2 as well, to show where
the two algorithms part ways (v1 decides by depth and never re-checks an
unconflicted join; v2 orders by power and re-checks every conflicted event).
"""

from __future__ import annotations

import hashlib

from twisted.trial import unittest

from matrixfed.events.room_versions import get_room_version
from matrixfed.state.resolve import resolve_state
from matrixfed.state.v1 import by_depth_then_sha1, resolve_v1, separate_v1
from tests.state.dag import ALICE, BOB, CHARLIE, DAVE, ZARA, RoomDag, initial_room

PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")
TOPIC = ("m.room.topic", "")


def member(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


def pad(dag: RoomDag, prefix: str, count: int, prev: str) -> str:
    """``count`` messages after ``prev``; returns the last label (to deepen a branch)."""
    last = prev
    for i in range(count):
        last = f"{prefix}{i}"
        dag.message(last, ZARA, prev=prev if i == 0 else f"{prefix}{i - 1}")
    return last


class SeparateV1Tests(unittest.SynchronousTestCase):
    def test_missing_key_is_not_a_conflict(self) -> None:
        a = {("t", ""): "$1", ("only_a", ""): "$2"}
        b = {("t", ""): "$3", ("only_b", ""): "$4"}
        c = {("t", ""): "$1"}
        unconflicted, conflicted = separate_v1([a, b, c])
        self.assertEqual(unconflicted, {("only_a", ""): "$2", ("only_b", ""): "$4"})
        self.assertEqual(conflicted, {("t", ""): {"$1", "$3"}})


class OrderingTests(unittest.SynchronousTestCase):
    def test_depth_then_sha1(self) -> None:
        dag = initial_room("1")
        dag.topic("TX", ALICE, prev="START")
        dag.topic("TY", ALICE, prev="START")
        dag.topic("TZ", ALICE, prev="TY")
        ordered = by_depth_then_sha1([dag.event("TX"), dag.event("TZ"), dag.event("TY")])
        # Deepest first; between the two of equal depth, the lower sha1 first.
        tx, ty = dag.id("TX"), dag.id("TY")
        equal = sorted([tx, ty], key=lambda i: hashlib.sha1(i.encode()).hexdigest())
        self.assertEqual([e.event_id for e in ordered], [dag.id("TZ"), *equal])


class ScenarioTests(unittest.SynchronousTestCase):
    def test_deeper_topic_wins(self) -> None:
        """v1 keeps the topic of the deeper branch, even if it was sent first."""
        for version, expected in (("1", "TA"), ("2", "TB")):
            dag = initial_room(version)
            tip = pad(dag, "M", 2, "START")
            dag.topic("TA", ALICE, prev=tip)
            dag.topic("TB", ALICE, prev="START")
            self.assertEqual(dag.resolve("TA", "TB")[TOPIC], expected, version)

    def test_ban_vs_power_levels(self) -> None:
        dag = initial_room("1")
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.member("MB", ALICE, "ban", BOB)
        dag.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, prev="PA")
        state = dag.resolve("MB", "PB")
        # Bob's membership is conflicted, so it is absent from R while the
        # power levels are resolved: his edit is refused, then the ban applies.
        self.assertEqual(state[PL], "PA")
        self.assertEqual(state[member(BOB)], "MB")

    def test_topic_of_banned_user_falls_back(self) -> None:
        """The deepest topic fails auth once its sender's ban is resolved: the next one wins."""
        dag = initial_room("1")
        dag.topic("T1", ALICE)
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.member("MB", ALICE, "ban", BOB)
        tip = pad(dag, "M", 3, "PA")
        dag.topic("TB", BOB, prev=tip)
        state = dag.resolve("MB", "TB")
        self.assertEqual(state[member(BOB)], "MB")
        self.assertEqual(state[TOPIC], "T1")

    def test_join_during_join_rules_change(self) -> None:
        """Dave joins while Alice closes the room.

        In v1 Dave's membership is only in one state, so it is not a conflict
        and he stays; v2 treats it as conflicted and re-checks it.
        """
        for version, dave_joined in (("1", True), ("2", False)):
            dag = initial_room(version)
            dag.join_rules("JR", ALICE, "invite")
            dag.member("ME", DAVE, "join", prev="START")
            state = dag.resolve("JR", "ME")
            self.assertEqual(state[JR], "JR", version)
            self.assertEqual(member(DAVE) in state, dave_joined, version)

    def test_power_levels_pass_stops_at_first_failure(self) -> None:
        """Four branches, one power levels event each, at depths 1-4 past P0.

        Shallowest first: Bob's PB, then Alice's PA (demotes Bob), then Bob's
        PB2, which fails against PA. The pass stops there, so Alice's deepest
        PA4 (which would pass) is never considered.
        """
        dag = initial_room("1")
        dag.power("P0", ALICE, {ALICE: 100, BOB: 50})
        dag.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, prev="P0")
        dag.power("PA", ALICE, {ALICE: 100, BOB: 0}, prev=pad(dag, "A", 1, "P0"))
        dag.power("PB2", BOB, {ALICE: 100, BOB: 50, ZARA: 10}, prev=pad(dag, "B", 2, "P0"))
        dag.power("PA4", ALICE, {ALICE: 100, CHARLIE: 20}, prev=pad(dag, "C", 3, "P0"))
        state = dag.resolve("PB", "PA", "PB2", "PA4")
        self.assertEqual(state[PL], "PA")

    def test_power_levels_later_valid_replaces_earlier(self) -> None:
        dag = initial_room("1")
        dag.power("P0", ALICE, {ALICE: 100, BOB: 50})
        dag.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, prev="P0")
        dag.power("PA", ALICE, {ALICE: 100, BOB: 0}, prev=pad(dag, "A", 1, "P0"))
        self.assertEqual(dag.resolve("PB", "PA")[PL], "PA")
        self.assertEqual(dag.resolve("PA", "PB")[PL], "PA")

    def test_unknown_conflicting_event_is_ignored(self) -> None:
        dag = initial_room("1")
        dag.topic("T1", ALICE)
        other = dict(dag.state("T1"))
        other[TOPIC] = "$nowhere:example.com"
        resolved = resolve_v1(get_room_version("1"), [dag.state("T1"), other], dag.events)
        self.assertEqual(dag.names(resolved)[TOPIC], "T1")
        other[PL] = "$gone:example.com"
        third = dict(other)
        third[PL] = "$gone2:example.com"
        resolved = resolve_v1(get_room_version("1"), [other, third], dag.events)
        # Both conflicting power levels events are unknown: the key is left out.
        self.assertNotIn(PL, resolved)

    def test_through_resolve_state(self) -> None:
        dag = initial_room("1")
        dag.topic("TA", ALICE)
        dag.topic("TB", BOB, prev="START")
        resolved = resolve_state(dag.rv, [dag.state("TA"), dag.state("TB")], dag.events)
        # Bob (0) may not set the topic (state_default 50): Alice's topic wins
        # whatever the sha1 order of the two.
        self.assertEqual(dag.names(resolved)[TOPIC], "TA")
