"""Tests for state resolution v2.1 (room version 12) where it differs from v2.

The same event DAG is built in room version 11 (v2) and 12 (v2.1) and the
same state sets are resolved in both: v2 resets state that v2.1 keeps.
"""

from __future__ import annotations

from twisted.trial import unittest

from matrixfed.state.graph import AuthGraph, conflicted_subgraph
from matrixfed.state.resolve import resolve_state
from tests.state.dag import ALICE, BOB, CHARLIE, EVELYN, ZARA, RoomDag

PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")
CREATE = ("m.room.create", "")


def member(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


def join_rules_room(
    version: str,
) -> tuple[RoomDag, dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """Alice makes Bob an admin, opens the room, closes it again and leaves.

    Returns the DAG, the true state after Alice leaves and a state a faulty
    server could claim, identical but for the old (public) join rules.
    """
    dag = RoomDag(version)
    dag.create()
    dag.member("MA1", ALICE, "join")
    dag.power("POWER", ALICE, {ALICE: 100, BOB: 100})
    dag.join_rules("JR1", ALICE, "public")
    dag.member("MB", BOB, "join")
    dag.join_rules("JR2", ALICE, "invite")
    dag.member("MA2", ALICE, "leave")
    correct = dag.state("MA2")
    incorrect = dict(correct)
    incorrect[JR] = dag.id("JR1")
    return dag, correct, incorrect


def dodgy_rename_room(
    version: str,
) -> tuple[RoomDag, dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """Bob, promoted by Alice, promotes Charlie; Evelyn joins, then sends a
    rename that cites the first power levels. Returns the DAG, a state built on
    the dodgy rename (with the first power levels) and a sensible state after
    Zara joins (with the newest power levels)."""
    dag = RoomDag(version)
    dag.create()
    dag.member("MA", ALICE, "join")
    dag.power("POWER1", ALICE, {ALICE: 100})
    dag.join_rules("JR", ALICE, "public")
    dag.member("MB", BOB, "join")
    dag.member("MC", CHARLIE, "join")
    dag.power("POWER2", ALICE, {ALICE: 100, BOB: 50})
    dag.power("POWER3", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50})
    dag.member("ME1", EVELYN, "join")
    old_auth = ["POWER1", "JR", "ME1"]
    if not dag.rv.room_id_from_create:
        old_auth.insert(0, "CREATE")
    dag.add(
        "ME2",
        "m.room.member",
        EVELYN,
        {"membership": "join", "displayname": "Eve"},
        EVELYN,
        auth=old_auth,
    )
    dag.member("MZ", ZARA, "join", prev="ME1")
    base = {
        CREATE: dag.id("CREATE"),
        member(ALICE): dag.id("MA"),
        member(BOB): dag.id("MB"),
        member(CHARLIE): dag.id("MC"),
        JR: dag.id("JR"),
    }
    dodgy = dict(base)
    dodgy[member(EVELYN)] = dag.id("ME2")
    dodgy[PL] = dag.id("POWER1")
    sensible = dict(base)
    sensible[member(ZARA)] = dag.id("MZ")
    sensible[PL] = dag.id("POWER3")
    return dag, dodgy, sensible


class StartFromEmptyStateTests(unittest.SynchronousTestCase):
    """v2 checks power events against the unconflicted state, which may be
    "from the future": here Alice has left in both states, so v2 refuses both
    of her join rules and the room loses its join rules altogether."""

    def test_v2_resets_join_rules(self) -> None:
        dag, correct, incorrect = join_rules_room("11")
        resolved = dag.names(resolve_state(dag.rv, [correct, incorrect], dag.events))
        self.assertNotIn(JR, resolved)
        self.assertEqual(resolved[member(ALICE)], "MA2")

    def test_v21_keeps_newest_join_rules(self) -> None:
        dag, correct, incorrect = join_rules_room("12")
        for sets in ([correct, incorrect], [incorrect, correct]):
            resolved = dag.names(resolve_state(dag.rv, sets, dag.events))
            self.assertEqual(
                resolved,
                {
                    CREATE: "CREATE",
                    member(ALICE): "MA2",
                    member(BOB): "MB",
                    PL: "POWER",
                    JR: "JR2",
                },
            )


class ConflictedSubgraphReplayTests(unittest.SynchronousTestCase):
    """Evelyn's rename cites the first power levels while its auth chain holds
    the newest ones. v2 replays only the conflicted power levels; Bob's
    promotion of Charlie then fails against the first power levels: a reset.
    v2.1 also replays everything between the conflicted events (Bob's join,
    Alice's promotion of Bob, Evelyn's first join) and keeps the newest."""

    def test_v2_resets_power_levels(self) -> None:
        dag, dodgy, sensible = dodgy_rename_room("11")
        resolved = dag.names(resolve_state(dag.rv, [dodgy, sensible], dag.events))
        self.assertEqual(resolved[PL], "POWER1")
        self.assertEqual(resolved[member(EVELYN)], "ME2")

    def test_v21_keeps_power_levels(self) -> None:
        dag, dodgy, sensible = dodgy_rename_room("12")
        resolved = dag.names(resolve_state(dag.rv, [dodgy, sensible], dag.events))
        self.assertEqual(
            resolved,
            {
                CREATE: "CREATE",
                member(ALICE): "MA",
                member(BOB): "MB",
                member(CHARLIE): "MC",
                # The rename sits in the POWER1 epoch, the first join in the
                # POWER3 one: the first join is replayed last.
                member(EVELYN): "ME1",
                member(ZARA): "MZ",
                PL: "POWER3",
                JR: "JR",
            },
        )

    def test_subgraph(self) -> None:
        dag, dodgy, sensible = dodgy_rename_room("12")
        conflicted = {dag.id(x) for x in ("POWER1", "POWER3", "ME2", "MZ")}
        graph = AuthGraph(dag.rv, dag.events)
        got = {dag.labels[i] for i in conflicted_subgraph(graph, conflicted)}
        # Not the create event nor Alice's join: no conflicted event lies
        # below them. Not Charlie's join: nothing conflicted cites it.
        self.assertEqual(got, {"POWER1", "POWER2", "POWER3", "MB", "JR", "ME1", "ME2", "MZ"})
