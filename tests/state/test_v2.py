"""Tests for matrixfed.state.v2: named fork scenarios and each step of the algorithm.

The scenarios are the well-known races of state resolution v2, built as real
event DAGs (``tests.state.dag``) and resolved with the real authorisation rules.
Each runs in several room versions (v1-style and hash event IDs, v11's
implicit creator, v12's v2.1 algorithm); the outcome is the same in all of them.
"""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from matrixfed.events.room_versions import get_room_version
from matrixfed.state.graph import AuthGraph
from matrixfed.state.v2 import (
    is_power_event,
    iterative_auth_checks,
    lexicographical_topological_sort,
    mainline,
    mainline_sort,
    resolve_v2,
    reverse_topological_power_sort,
    separate,
)
from tests.state.dag import ALICE, BOB, CHARLIE, DAVE, ZARA, RoomDag, initial_room

PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")
TOPIC = ("m.room.topic", "")


def member(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


class ScenarioMixin:
    """Fork scenarios; subclasses set the room version."""

    version: str

    # trial's assertion methods, for the type checker of a mixin
    assertEqual: Any
    assertNotIn: Any

    def room(self) -> RoomDag:
        return initial_room(self.version)

    def test_ban_vs_power_levels(self) -> None:
        """Alice bans Bob while Bob, still a moderator in his branch, edits power levels.

        The ban is a power event by a more powerful sender, so it is applied
        first; Bob's edit then fails because he is banned.
        """
        dag = self.room()
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.member("MB", ALICE, "ban", BOB)
        dag.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}, prev="PA")
        state = dag.resolve("MB", "PB")
        self.assertEqual(state[PL], "PA")
        self.assertEqual(state[member(BOB)], "MB")
        self.assertEqual(state[member(ALICE)], "IMA")

    def test_topic_basic(self) -> None:
        """Alice demotes Bob in one branch, Bob sets the topic in the other.

        Alice's power levels win (she outranks Bob); both topics sit on the
        same mainline position, Alice's is older, Bob's fails once he is
        demoted: Alice's topic stays.
        """
        dag = self.room()
        dag.topic("T1", ALICE)
        dag.power("PA1", ALICE, {ALICE: 100, BOB: 50})
        dag.topic("T2", ALICE)
        dag.power("PA2", ALICE, {ALICE: 100, BOB: 0})
        dag.power("PB", BOB, {ALICE: 100, BOB: 50}, prev="PA1")
        dag.topic("T3", BOB)
        state = dag.resolve("PA2", "T3")
        self.assertEqual(state[PL], "PA2")
        self.assertEqual(state[TOPIC], "T2")

    def test_topic_reset(self) -> None:
        """Bob's topic is undone when his ban wins: the topic goes back to T1."""
        dag = self.room()
        dag.topic("T1", ALICE)
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.topic("T2", BOB)
        dag.member("MB", ALICE, "ban", BOB)
        state = dag.resolve("MB", "T1")
        self.assertEqual(state[TOPIC], "T1")
        self.assertEqual(state[member(BOB)], "MB")
        self.assertEqual(state[PL], "PA")

    def test_topic_after_merge(self) -> None:
        """A topic set after a merge beats a topic from before the merge."""
        dag = self.room()
        dag.topic("T1", ALICE)
        dag.power("PA1", ALICE, {ALICE: 100, BOB: 50})
        dag.topic("T2", ALICE)
        dag.power("PA2", ALICE, {ALICE: 100, BOB: 0})
        dag.power("PB", BOB, {ALICE: 100, BOB: 50}, prev="PA1")
        dag.topic("T3", BOB)
        dag.message("MZ1", ZARA, prev=["PA2", "T3"])
        self.assertEqual(dag.names(dag.state("MZ1"))[TOPIC], "T2")
        dag.topic("T4", ALICE)
        state = dag.resolve("T4", "MZ1")
        self.assertEqual(state[TOPIC], "T4")
        self.assertEqual(state[PL], "PA2")

    def test_mainline_sort(self) -> None:
        """The topic based on the newest mainline power levels wins, not the newest topic.

        T4 is sent after T3, but it is based on Bob's power levels, which lose
        to PA2; T3 is based on PA2 itself, so it sorts last and is applied last.
        """
        dag = self.room()
        dag.topic("T1", ALICE)
        dag.power("PA1", ALICE, {ALICE: 100, BOB: 50})
        dag.topic("T2", ALICE)
        dag.power(
            "PA2",
            ALICE,
            {ALICE: 100, BOB: 50},
            extra={"events": {"m.room.power_levels": 100}},
        )
        dag.topic("T3", BOB)
        dag.power("PB", BOB, {ALICE: 100, BOB: 50}, prev="PA1")
        dag.topic("T4", ALICE)
        state = dag.resolve("T3", "T4")
        self.assertEqual(state[PL], "PA2")
        self.assertEqual(state[TOPIC], "T3")

    def test_offtopic_power_levels(self) -> None:
        """A chain of power levels in one branch is replayed in auth order.

        PC lowers Charlie's own level; it is only valid after PB, which is in
        the auth difference: both are replayed and PC is the result.
        """
        dag = self.room()
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50})
        dag.power("PC", CHARLIE, {ALICE: 100, BOB: 50, CHARLIE: 0})
        dag.message("MA", ALICE, prev="PA")
        state = dag.resolve("PC", "MA")
        self.assertEqual(state[PL], "PC")

    def test_join_rules_change_while_user_joins(self) -> None:
        """Alice makes the room invite-only while Dave joins it by the public rule.

        The join rules are a power event and win; Dave's join, checked after
        them, is not allowed: Dave is not in the room.
        """
        dag = self.room()
        dag.join_rules("JR", ALICE, "invite")
        dag.member("ME", DAVE, "join", prev="START")
        state = dag.resolve("JR", "ME")
        self.assertEqual(state[JR], "JR")
        self.assertNotIn(member(DAVE), state)

    def test_join_is_rechecked_after_join_rules(self) -> None:
        """Dave joins, then Alice makes the room invite-only, all in one branch.

        The other branch saw neither. Power events are resolved before
        everything else, so Dave's conflicted join is checked against the new
        join rules and dropped: v2 favours the restriction.
        """
        dag = self.room()
        dag.member("ME", DAVE, "join")
        dag.join_rules("JR", ALICE, "invite")
        dag.message("M", ZARA, prev="START")
        state = dag.resolve("JR", "M")
        self.assertEqual(state[JR], "JR")
        self.assertNotIn(member(DAVE), state)

    def test_join_known_to_both_branches_survives(self) -> None:
        """A join both branches agree on is unconflicted and stays."""
        dag = self.room()
        dag.member("ME", DAVE, "join")
        dag.join_rules("JR", ALICE, "invite")
        dag.message("M", ZARA, prev="ME")
        state = dag.resolve("JR", "M")
        self.assertEqual(state[JR], "JR")
        self.assertEqual(state[member(DAVE)], "ME")

    def test_kick_vs_power_levels_grant(self) -> None:
        """Bob kicks Charlie while Alice makes Charlie an admin: Bob's kick fails.

        Alice's power levels apply first (higher sender power); with Charlie
        at 100 Bob (50) can no longer kick him.
        """
        dag = self.room()
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.member("KC", BOB, "leave", CHARLIE)
        dag.power("PA2", ALICE, {ALICE: 100, BOB: 50, CHARLIE: 100}, prev="PA")
        state = dag.resolve("KC", "PA2")
        self.assertEqual(state[PL], "PA2")
        self.assertEqual(state[member(CHARLIE)], "IMC")

    def test_resolution_is_symmetric(self) -> None:
        """The order of the state sets does not change the result."""
        dag = self.room()
        dag.topic("T1", ALICE)
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.topic("T2", BOB)
        dag.member("MB", ALICE, "ban", BOB)
        dag.topic("T3", CHARLIE, prev="T1")
        self.assertEqual(dag.resolve("MB", "T3"), dag.resolve("T3", "MB"))


class ScenariosRoomV2(ScenarioMixin, unittest.SynchronousTestCase):
    version = "2"


class ScenariosRoomV4(ScenarioMixin, unittest.SynchronousTestCase):
    version = "4"


class ScenariosRoomV10(ScenarioMixin, unittest.SynchronousTestCase):
    version = "10"


class ScenariosRoomV11(ScenarioMixin, unittest.SynchronousTestCase):
    version = "11"


class ScenariosRoomV12(ScenarioMixin, unittest.SynchronousTestCase):
    version = "12"


class SeparateTests(unittest.SynchronousTestCase):
    def test_split(self) -> None:
        a = {("t", ""): "$1", ("u", ""): "$2", ("only_a", ""): "$3"}
        b = {("t", ""): "$1", ("u", ""): "$4", ("only_b", ""): "$5"}
        unconflicted, conflicted = separate([a, b])
        self.assertEqual(unconflicted, {("t", ""): "$1"})
        self.assertEqual(
            conflicted,
            {("u", ""): {"$2", "$4"}, ("only_a", ""): {"$3"}, ("only_b", ""): {"$5"}},
        )

    def test_three_sets(self) -> None:
        a = {("t", ""): "$1"}
        unconflicted, conflicted = separate([a, dict(a), {("t", ""): "$2"}])
        self.assertEqual(unconflicted, {})
        self.assertEqual(conflicted, {("t", ""): {"$1", "$2"}})


class PowerEventTests(unittest.SynchronousTestCase):
    def test_kinds(self) -> None:
        dag = initial_room("10")
        dag.member("KICK", ALICE, "leave", BOB)
        dag.member("LEAVE", CHARLIE, "leave")
        dag.member("BAN", ALICE, "ban", ZARA)
        dag.topic("T", ALICE)
        expected = {
            "CREATE": True,
            "IMA": False,
            "IPOWER": True,
            "IJR": True,
            "KICK": True,
            "LEAVE": False,
            "BAN": True,
            "T": False,
            "START": False,
        }
        got = {label: is_power_event(dag.event(label)) for label in expected}
        self.assertEqual(got, expected)


class LexicographicalSortTests(unittest.SynchronousTestCase):
    def test_dependencies_first_then_key(self) -> None:
        edges = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": set()}
        keys = {"a": 3, "b": 2, "c": 1, "d": 0, "e": 4}
        order = lexicographical_topological_sort(edges, lambda n: (keys[n], 0, n))
        self.assertEqual(order, ["a", "c", "b", "d", "e"])

    def test_key_beats_insertion_order(self) -> None:
        edges = {"z": set(), "y": set(), "x": set()}
        self.assertEqual(
            lexicographical_topological_sort(edges, lambda n: (0, 0, n)), ["x", "y", "z"]
        )

    def test_cycle_is_left_out(self) -> None:
        edges = {"a": set(), "b": {"c"}, "c": {"b"}}
        self.assertEqual(lexicographical_topological_sort(edges, lambda n: (0, 0, n)), ["a"])


class ReverseTopologicalPowerSortTests(unittest.SynchronousTestCase):
    def test_power_then_timestamp(self) -> None:
        """Unrelated events: the more powerful sender's first, then the older."""
        dag = initial_room("10")
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.join_rules("JB", BOB, "invite")  # Bob, 50
        dag.member("KZ", BOB, "leave", ZARA, prev="JB")  # Bob, 50, later
        dag.member("BC", ALICE, "ban", CHARLIE, prev="KZ")  # Alice, 100, latest
        graph = AuthGraph(dag.rv, dag.events)
        ids = [dag.id(x) for x in ("KZ", "JB", "BC")]
        order = reverse_topological_power_sort(graph, ids, set(ids))
        self.assertEqual([dag.labels[i] for i in order], ["BC", "JB", "KZ"])

    def test_auth_ancestor_first_whatever_its_power(self) -> None:
        """Bob's event sorts before Alice's when Alice's cites it as an auth event."""
        dag = initial_room("10")
        dag.power("PA", ALICE, {ALICE: 100, BOB: 100})
        dag.power("PB", BOB, {ALICE: 100, BOB: 100, CHARLIE: 50})
        dag.member("BAN", ALICE, "ban", CHARLIE)
        graph = AuthGraph(dag.rv, dag.events)
        ids = {dag.id("PB"), dag.id("BAN")}
        full = ids | {dag.id("PA")}
        order = reverse_topological_power_sort(graph, [dag.id("BAN")], full)
        # BAN cites PB, which cites PA: the auth chain inside the full conflicted
        # set comes along, oldest first.
        self.assertEqual([dag.labels[i] for i in order], ["PA", "PB", "BAN"])

    def test_v12_creator_sorts_first(self) -> None:
        """In v12 the creator outranks a user with the highest listed level."""
        dag = initial_room("12")
        dag.power("PA", ALICE, {BOB: 100})
        dag.join_rules("JB", BOB, "invite")
        dag.join_rules("JA", ALICE, "knock", prev="PA")
        graph = AuthGraph(dag.rv, dag.events)
        ids = [dag.id("JB"), dag.id("JA")]
        order = reverse_topological_power_sort(graph, ids, set(ids))
        self.assertEqual([dag.labels[i] for i in order], ["JA", "JB"])


class MainlineTests(unittest.SynchronousTestCase):
    def build(self) -> RoomDag:
        dag = initial_room("10")
        dag.power("P1", ALICE, {ALICE: 100, BOB: 50})
        dag.topic("TA", BOB)  # cites P1
        dag.power("P2", ALICE, {ALICE: 100, BOB: 50, CHARLIE: 50})
        dag.topic("TB", CHARLIE)  # cites P2
        dag.topic("TC", BOB, prev="TA")  # cites P1, sent after TB
        dag.power("PX", BOB, {ALICE: 100, BOB: 50, ZARA: 10}, prev="TA")
        dag.topic("TD", BOB)  # cites PX, off the mainline; PX cites P1
        return dag

    def test_mainline(self) -> None:
        dag = self.build()
        graph = AuthGraph(dag.rv, dag.events)
        line = mainline(graph, dag.id("P2"))
        self.assertEqual([dag.labels[i] for i in line], ["P2", "P1", "IPOWER"])

    def test_sort(self) -> None:
        """Older mainline position first, then timestamp; off-mainline power levels
        count at the first mainline event they lead to."""
        dag = self.build()
        graph = AuthGraph(dag.rv, dag.events)
        ids = [dag.id(x) for x in ("TB", "TD", "TC", "TA", "START")]
        order = mainline_sort(graph, ids, dag.id("P2"))
        self.assertEqual([dag.labels[i] for i in order], ["START", "TA", "TC", "TD", "TB"])

    def test_no_power_levels_sorts_by_time(self) -> None:
        dag = self.build()
        graph = AuthGraph(dag.rv, dag.events)
        ids = [dag.id(x) for x in ("TD", "TB", "TA")]
        order = mainline_sort(graph, ids, None)
        self.assertEqual([dag.labels[i] for i in order], ["TA", "TB", "TD"])


class IterativeAuthChecksTests(unittest.SynchronousTestCase):
    def test_applies_allowed_skips_forbidden(self) -> None:
        dag = initial_room("10")
        dag.member("BAN", ALICE, "ban", BOB)
        dag.topic("TB", BOB, prev="START")
        dag.topic("TC", CHARLIE, prev="START")
        graph = AuthGraph(dag.rv, dag.events)
        base = dag.state("START")
        state = iterative_auth_checks(graph, [dag.id(x) for x in ("BAN", "TB")], base)
        self.assertEqual(dag.names(state)[member(BOB)], "BAN")
        self.assertNotIn(TOPIC, state)
        # Charlie's topic needs state_default (50 with a power levels event): refused too.
        state = iterative_auth_checks(graph, [dag.id("TC")], base)
        self.assertNotIn(TOPIC, state)
        self.assertEqual(base, dag.state("START"))

    def test_missing_key_comes_from_auth_events(self) -> None:
        """Starting from an empty state, the rules read the event's own auth events."""
        dag = initial_room("12")
        dag.topic("T", ALICE)
        graph = AuthGraph(dag.rv, dag.events)
        state = iterative_auth_checks(graph, [dag.id("T")], {})
        self.assertEqual(dag.names(state), {TOPIC: "T"})

    def test_rejected_auth_event_is_not_used(self) -> None:
        dag = initial_room("12")
        dag.topic("T", ALICE)
        graph = AuthGraph(dag.rv, dag.events)
        state = iterative_auth_checks(graph, [dag.id("T")], {}, rejected={dag.id("IMA")})
        self.assertEqual(state, {})

    def test_rejected_event_is_not_admitted(self) -> None:
        dag = initial_room("10")
        dag.topic("T", ALICE)
        graph = AuthGraph(dag.rv, dag.events)
        state = iterative_auth_checks(
            graph, [dag.id("T")], dag.state("START"), rejected={dag.id("T")}
        )
        self.assertNotIn(TOPIC, state)

    def test_unknown_events_are_skipped(self) -> None:
        dag = initial_room("10")
        graph = AuthGraph(dag.rv, dag.events)
        state = iterative_auth_checks(graph, ["$nope"], dag.state("START"))
        self.assertEqual(state, dag.state("START"))


class ResolveV2Tests(unittest.SynchronousTestCase):
    def test_unconflicted_state_wins_at_the_end(self) -> None:
        """Step 5: an unconflicted entry replaces whatever the checks produced."""
        dag = initial_room("10")
        dag.topic("T1", ALICE)
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        a = dag.state("PA")
        b = dict(dag.state("T1"))
        resolved = resolve_v2(get_room_version("10"), [a, b], dag.events)
        self.assertEqual(dag.names(resolved)[PL], "PA")
        self.assertEqual(dag.names(resolved)[TOPIC], "T1")

    def test_missing_conflicted_event_is_ignored(self) -> None:
        dag = initial_room("10")
        dag.topic("T1", ALICE)
        a = dag.state("T1")
        b = dict(a)
        b[TOPIC] = "$unknown"
        resolved = resolve_v2(dag.rv, [a, b], dag.events)
        self.assertEqual(dag.names(resolved)[TOPIC], "T1")
