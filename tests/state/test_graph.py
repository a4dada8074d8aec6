"""Tests for matrixfed.state.graph: auth chains, auth difference, conflicted subgraph."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from matrixfed.events.model import Event
from matrixfed.events.room_versions import get_room_version
from matrixfed.state.graph import AuthGraph, auth_difference, conflicted_subgraph
from tests.state.dag import ALICE, BOB, CHARLIE, initial_room


def bare_event(event_id: str, auth: list[str], version: str = "1") -> Event:
    """A v1-format state event with a chosen ID and auth events (graph tests only)."""
    pdu: dict[str, Any] = {
        "event_id": event_id,
        "type": "m.room.topic",
        "state_key": "",
        "sender": ALICE,
        "room_id": "!r:example.com",
        "content": {},
        "auth_events": [[a, {}] for a in auth],
        "prev_events": [],
        "depth": 1,
        "origin_server_ts": 1,
    }
    return Event(pdu, get_room_version(version), event_id)


class AuthChainTests(unittest.SynchronousTestCase):
    def test_chain_of_an_event(self) -> None:
        dag = initial_room("10")
        graph = AuthGraph(dag.rv, dag.events)
        chain = {dag.labels[i] for i in graph.auth_chain([dag.id("IMB")])}
        # Bob's join cites create, power levels and join rules; those cite
        # Alice's join and the create event.
        self.assertEqual(chain, {"CREATE", "IMA", "IPOWER", "IJR"})

    def test_v12_create_is_implied(self) -> None:
        dag = initial_room("12")
        self.assertNotIn(dag.id("CREATE"), dag.event("IMB").auth_event_ids)
        graph = AuthGraph(dag.rv, dag.events)
        self.assertIn(dag.id("CREATE"), graph.auth_event_ids(dag.id("IMB")))
        self.assertEqual(graph.auth_event_ids(dag.id("CREATE")), ())
        self.assertIn(dag.id("CREATE"), graph.auth_chain([dag.id("IMB")]))

    def test_deep_chain_is_iterative(self) -> None:
        """A 20,000-deep chain (beyond Python's recursion limit) is walked."""
        events = {"$0": bare_event("$0", [])}
        for i in range(1, 20_000):
            events[f"${i}"] = bare_event(f"${i}", [f"${i - 1}"])
        graph = AuthGraph(get_room_version("1"), events)
        self.assertEqual(len(graph.auth_chain(["$19999"])), 19_999)

    def test_cycle_terminates(self) -> None:
        events = {
            "$a": bare_event("$a", ["$b"]),
            "$b": bare_event("$b", ["$a"]),
        }
        graph = AuthGraph(get_room_version("1"), events)
        self.assertEqual(graph.auth_chain(["$a"]), {"$a", "$b"})

    def test_missing_event_is_a_leaf(self) -> None:
        events = {"$a": bare_event("$a", ["$gone"])}
        graph = AuthGraph(get_room_version("1"), events)
        self.assertEqual(graph.auth_chain(["$a"]), {"$gone"})
        self.assertEqual(graph.auth_event_ids("$gone"), ())
        self.assertIsNone(graph.get("$gone"))

    def test_duplicate_auth_references_count_once(self) -> None:
        events = {"$a": bare_event("$a", ["$b", "$b"]), "$b": bare_event("$b", [])}
        graph = AuthGraph(get_room_version("1"), events)
        self.assertEqual(graph.auth_event_ids("$a"), ("$b",))


class AuthDifferenceTests(unittest.SynchronousTestCase):
    def test_fork(self) -> None:
        dag = initial_room("10")
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.power("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50})
        dag.member("KC", BOB, "leave", CHARLIE)
        dag.topic("T", ALICE, prev="START")
        graph = AuthGraph(dag.rv, dag.events)
        diff = auth_difference(graph, [dag.state("KC"), dag.state("T")])
        # Union of the chains minus what both share. What the first branch
        # replaced (IPOWER, IMC) is still in its auth chain, so it is shared.
        self.assertEqual({dag.labels[i] for i in diff}, {"PA", "PB", "KC", "T"})

    def test_matches_naive_definition(self) -> None:
        """The shortcut through the shared chain gives the spec's union minus intersection."""
        dag = initial_room("10")
        dag.power("PA", ALICE, {ALICE: 100, BOB: 50})
        dag.member("KB", ALICE, "leave", BOB)
        dag.member("MB2", BOB, "join", prev="PA")
        dag.power("PC", ALICE, {ALICE: 100, CHARLIE: 50}, prev="START")
        sets = [dag.state("KB"), dag.state("MB2"), dag.state("PC")]
        graph = AuthGraph(dag.rv, dag.events)
        chains = [graph.closure(s.values()) for s in sets]
        naive = set().union(*chains) - set.intersection(*chains)
        self.assertEqual(auth_difference(graph, sets), naive)

    def test_one_set_has_no_difference(self) -> None:
        dag = initial_room("10")
        graph = AuthGraph(dag.rv, dag.events)
        self.assertEqual(auth_difference(graph, [dag.state("START")]), set())


class ConflictedSubgraphTests(unittest.SynchronousTestCase):
    def test_paths_between_conflicted_events(self) -> None:
        # d -> c -> b -> a, d -> x, x -> a ; y -> b ; conflicted {d, a}
        events = {
            "$a": bare_event("$a", []),
            "$b": bare_event("$b", ["$a"]),
            "$c": bare_event("$c", ["$b"]),
            "$x": bare_event("$x", ["$a"]),
            "$d": bare_event("$d", ["$c", "$x"]),
            "$y": bare_event("$y", ["$b"]),
            "$z": bare_event("$z", []),
        }
        events["$a2"] = bare_event("$a2", ["$z"])
        graph = AuthGraph(get_room_version("1"), events)
        got = conflicted_subgraph(graph, {"$d", "$a"})
        self.assertEqual(got, {"$a", "$b", "$c", "$d", "$x"})

    def test_unrelated_conflicted_events(self) -> None:
        events = {
            "$root": bare_event("$root", []),
            "$p": bare_event("$p", ["$root"]),
            "$q": bare_event("$q", ["$root"]),
        }
        graph = AuthGraph(get_room_version("1"), events)
        self.assertEqual(conflicted_subgraph(graph, {"$p", "$q"}), {"$p", "$q"})
