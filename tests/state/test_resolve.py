"""Tests for matrixfed.state.resolve: the entry point, its fast paths and its costs."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

from twisted.trial import unittest

from matrixfed.events.model import Event
from matrixfed.state.resolve import resolve_state
from tests.state.dag import ALICE, BOB, CHARLIE, DAVE, RoomDag, initial_room

PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")
TOPIC = ("m.room.topic", "")

# A fork of a room this big must resolve in time linear in the room's size.
BIG_ROOM_MEMBERS = 10_000
# Event map look-ups allowed per event of the room: a linear algorithm needs a
# bounded number (about 1.3 for a small fork, 15 when every member is
# conflicted); a quadratic one needs thousands.
LOOKUPS_PER_EVENT = 20


def member(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


class CountingMap(Mapping[str, Event]):
    """An event map that counts look-ups."""

    def __init__(self, inner: Mapping[str, Event]) -> None:
        self.inner = inner
        self.lookups = 0

    def __getitem__(self, key: str) -> Event:
        self.lookups += 1
        return self.inner[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def fork(version: str) -> RoomDag:
    """A fork where Alice bans Bob in one branch and Bob, a moderator, sets the
    topic and kicks Charlie in the other."""
    dag = initial_room(version)
    dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
    dag.member("BAN", ALICE, "ban", BOB)
    dag.topic("TB", BOB, prev="PA")
    dag.member("KICK", BOB, "leave", CHARLIE)
    return dag


class EntryPointTests(unittest.SynchronousTestCase):
    def test_no_state_sets(self) -> None:
        dag = initial_room("10")
        self.assertEqual(resolve_state(dag.rv, [], dag.events), {})

    def test_one_state_set_is_copied_without_look_ups(self) -> None:
        dag = initial_room("10")
        events = CountingMap(dag.events)
        state = dag.state("START")
        resolved = resolve_state(dag.rv, [state], events)
        self.assertEqual(resolved, state)
        self.assertIsNot(resolved, state)
        self.assertEqual(events.lookups, 0)

    def test_agreeing_state_sets_need_no_events(self) -> None:
        dag = initial_room("12")
        events = CountingMap(dag.events)
        state = dag.state("START")
        resolved = resolve_state(dag.rv, [state, dict(state), dict(state)], events)
        self.assertEqual(resolved, state)
        self.assertEqual(events.lookups, 0)

    def test_dispatch_by_room_version(self) -> None:
        """Same fork, three algorithms: v1 lets Dave in, v2 and v2.1 do not."""
        for version, dave_joined in (("1", True), ("2", False), ("12", False)):
            dag = initial_room(version)
            dag.join_rules("JR", ALICE, "invite")
            dag.member("ME", DAVE, "join", prev="START")
            state = dag.resolve("JR", "ME")
            self.assertEqual(member(DAVE) in state, dave_joined, version)

    def test_ban_wins_over_moderator_actions(self) -> None:
        for version in ("1", "2", "10", "11", "12"):
            dag = fork(version)
            state = dag.resolve("BAN", "KICK")
            self.assertEqual(state[member(BOB)], "BAN", version)
            if version != "1":
                # v2: the ban is a power event by a stronger sender and goes
                # first; Bob's kick and topic then fail.
                self.assertEqual(state[member(CHARLIE)], "IMC", version)
                self.assertNotIn(TOPIC, state, version)

    def test_deterministic_whatever_the_input_order(self) -> None:
        for version in ("1", "10", "12"):
            dag = fork(version)
            dag.topic("T2", ALICE, prev="BAN")
            sets = [dag.state("T2"), dag.state("KICK"), dag.state("TB")]
            expected = resolve_state(dag.rv, sets, dag.events)
            rng = random.Random(version)
            for _ in range(5):
                shuffled_sets = list(sets)
                rng.shuffle(shuffled_sets)
                items = list(dag.events.items())
                rng.shuffle(items)
                got = resolve_state(dag.rv, shuffled_sets, dict(items))
                self.assertEqual(got, expected, version)

    def test_missing_events_do_not_crash(self) -> None:
        """Events missing from the map, even auth events, are treated as unknown."""
        for version in ("1", "2", "10", "12"):
            dag = fork(version)
            a, b = dag.state("BAN"), dag.state("KICK")
            for missing in ("PA", "IPOWER", "CREATE", "IMA", "BAN", "KICK"):
                events = dict(dag.events)
                del events[dag.id(missing)]
                resolved = resolve_state(dag.rv, [a, b], events)
                # Keys both sides agree on are kept whatever happens.
                self.assertEqual(resolved[JR], dag.id("IJR"), (version, missing))
            b = dict(b)
            b[("m.room.name", "")] = "$never-seen"
            resolved = resolve_state(dag.rv, [a, b], {})
            self.assertEqual(resolved[JR], dag.id("IJR"))

    def test_rejected_events_stay_out(self) -> None:
        dag = initial_room("10")
        dag.topic("TA", ALICE)
        dag.topic("TA2", ALICE, prev="START")
        sets = [dag.state("TA"), dag.state("TA2")]
        resolved = resolve_state(dag.rv, sets, dag.events)
        self.assertEqual(dag.names(resolved)[TOPIC], "TA2")
        resolved = resolve_state(dag.rv, sets, dag.events, rejected_event_ids={dag.id("TA2")})
        self.assertEqual(dag.names(resolved)[TOPIC], "TA")


class BigRoomTests(unittest.SynchronousTestCase):
    """A fork in a room with 10,000 members costs a linear number of look-ups."""

    def big_fork(self, version: str) -> tuple[RoomDag, list[dict[tuple[str, str], str]]]:
        dag = initial_room(version)
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        state = dict(dag.state("PA"))
        for i in range(BIG_ROOM_MEMBERS):
            user = f"@u{i}:example.net"
            event = dag.member(f"J{i}", user, "join", state_before=state, record_state=False)
            state[member(user)] = event.event_id
        fork_point = dict(state)
        # Branch A: Alice bans 50 members and promotes Charlie.
        branch_a = dict(fork_point)
        for i in range(50):
            user = f"@u{i}:example.net"
            event = dag.member(
                f"BAN{i}", ALICE, "ban", user, state_before=branch_a, record_state=False
            )
            branch_a[member(user)] = event.event_id
        pc = dag.power(
            "PC",
            ALICE,
            {ALICE: 100, BOB: 50, CHARLIE: 50},
            state_before=branch_a,
            record_state=False,
        )
        branch_a[PL] = pc.event_id
        # Branch B: Bob kicks 50 other members, sets the topic; 20 people join.
        branch_b = dict(fork_point)
        for i in range(50, 100):
            user = f"@u{i}:example.net"
            event = dag.member(
                f"KICK{i}", BOB, "leave", user, state_before=branch_b, record_state=False
            )
            branch_b[member(user)] = event.event_id
        topic = dag.topic("TB", BOB, state_before=branch_b, record_state=False)
        branch_b[TOPIC] = topic.event_id
        for i in range(20):
            user = f"@new{i}:example.net"
            event = dag.member(f"N{i}", user, "join", state_before=branch_b, record_state=False)
            branch_b[member(user)] = event.event_id
        return dag, [branch_a, branch_b]

    def check(self, version: str) -> None:
        dag, sets = self.big_fork(version)
        events = CountingMap(dag.events)
        resolved = dag.names(resolve_state(dag.rv, sets, events))
        self.assertLess(events.lookups, LOOKUPS_PER_EVENT * len(dag.events))
        self.assertEqual(resolved[PL], "PC")
        self.assertEqual(resolved[TOPIC], "TB")
        self.assertEqual(resolved[member("@u0:example.net")], "BAN0")
        self.assertEqual(resolved[member("@u50:example.net")], "KICK50")
        self.assertEqual(resolved[member("@new19:example.net")], "N19")
        self.assertEqual(resolved[member("@u9999:example.net")], f"J{BIG_ROOM_MEMBERS - 1}")
        self.assertEqual(len(resolved), len(sets[0]) + 21)

    def test_v2(self) -> None:
        self.check("10")

    def test_v21(self) -> None:
        self.check("12")

    def test_every_member_conflicted(self) -> None:
        """One state set predates all the joins (as from a server with partial
        state), another has Bob kick half of the members: every member is
        conflicted and auth-checked, still at a bounded cost per event."""
        dag = initial_room("12")
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        before = dict(dag.state("PA"))
        joined = dict(before)
        for i in range(BIG_ROOM_MEMBERS):
            user = f"@u{i}:example.net"
            event = dag.member(f"J{i}", user, "join", state_before=joined, record_state=False)
            joined[member(user)] = event.event_id
        kicked = dict(joined)
        for i in range(0, BIG_ROOM_MEMBERS, 2):
            user = f"@u{i}:example.net"
            event = dag.member(f"K{i}", BOB, "leave", user, state_before=kicked, record_state=False)
            kicked[member(user)] = event.event_id
        events = CountingMap(dag.events)
        resolved = dag.names(resolve_state(dag.rv, [before, joined, kicked], events))
        self.assertLess(events.lookups, LOOKUPS_PER_EVENT * len(dag.events))
        self.assertEqual(resolved[member("@u0:example.net")], "K0")
        self.assertEqual(resolved[member("@u1:example.net")], "J1")
        self.assertEqual(len(resolved), len(joined))
