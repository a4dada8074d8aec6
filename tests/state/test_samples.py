"""State resolution over real events: a v12 room created by Synapse 1.163.2.

The fixture is the send_join exchange in shared/samples: the room's state and
auth chain as Synapse sent them, and Carol's join. Forks on top of it are built
here with auth events picked by the spec's selection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from matrixfed.auth.selection import select_auth_event_ids
from matrixfed.events.model import Event
from matrixfed.events.room_versions import get_room_version
from matrixfed.state.resolve import resolve_state

SAMPLES = Path("/work/shared/samples/synapse-1.163.2")
RV = get_room_version("12")
ALICE = "@alice:127.0.0.1:58169"
CAROL = "@carol:127.0.0.1:57913"


def load() -> tuple[dict[str, Event], dict[tuple[str, str], str], Event]:
    """The event map, the state before Carol's join, and Carol's join."""
    body = json.loads((SAMPLES / "send_join_v2_full_state_direct.json").read_text())
    body = body["response"]["body"]
    events: dict[str, Event] = {}
    state: dict[tuple[str, str], str] = {}
    for pdu in body["state"]:
        event = Event(pdu, RV)
        events[event.event_id] = event
        state[event.state_tuple] = event.event_id
    for pdu in body["auth_chain"]:
        event = Event(pdu, RV)
        events[event.event_id] = event
    join = Event(body["event"], RV)
    events[join.event_id] = join
    return events, state, join


def build(
    events: dict[str, Event],
    state: dict[tuple[str, str], str],
    prev: Event,
    sender: str,
    event_type: str,
    state_key: str,
    content: dict[str, Any],
    ts: int,
) -> Event:
    pdu: dict[str, Any] = {
        "room_id": prev.room_id,
        "type": event_type,
        "sender": sender,
        "state_key": state_key,
        "content": content,
        "prev_events": [prev.event_id],
        "auth_events": select_auth_event_ids(RV, event_type, sender, state_key, content, state),
        "depth": prev.depth + 1,
        "origin_server_ts": ts,
        "hashes": {"sha256": "unchecked"},
        "signatures": {},
    }
    event = Event(pdu, RV)
    events[event.event_id] = event
    return event


class SynapseRoomTests(unittest.SynchronousTestCase):
    def test_join_is_resolved_in(self) -> None:
        """The state before and after Carol's join resolve to the state after it."""
        events, before, join = load()
        after = dict(before)
        after[join.state_tuple] = join.event_id
        self.assertEqual(resolve_state(RV, [before, after], events), after)
        self.assertEqual(resolve_state(RV, [after, before], events), after)

    def test_ban_beats_leave(self) -> None:
        """Alice (the creator) bans Carol while Carol leaves: the ban stands."""
        events, before, join = load()
        after = dict(before)
        after[join.state_tuple] = join.event_id
        ts = join.origin_server_ts
        ban = build(
            events, after, join, ALICE, "m.room.member", CAROL, {"membership": "ban"}, ts + 2
        )
        leave = build(
            events, after, join, CAROL, "m.room.member", CAROL, {"membership": "leave"}, ts + 1
        )
        branch_a = dict(after)
        branch_a[ban.state_tuple] = ban.event_id
        branch_b = dict(after)
        branch_b[leave.state_tuple] = leave.event_id
        resolved = resolve_state(RV, [branch_a, branch_b], events)
        self.assertEqual(resolved, branch_a)

    def test_room_closed_while_carol_joins(self) -> None:
        """Alice makes the room invite-only in a branch that never saw Carol's join.

        The join rules are applied first and Carol's join is re-checked
        against them: Carol is not in the resolved room.
        """
        events, before, join = load()
        bob = events[before[("m.room.member", "@bob:127.0.0.1:57913")]]
        invite_only = build(
            events,
            before,
            bob,
            ALICE,
            "m.room.join_rules",
            "",
            {"join_rule": "invite"},
            join.origin_server_ts + 1,
        )
        branch_a = dict(before)
        branch_a[invite_only.state_tuple] = invite_only.event_id
        branch_b = dict(before)
        branch_b[join.state_tuple] = join.event_id
        resolved = resolve_state(RV, [branch_a, branch_b], events)
        self.assertEqual(resolved, branch_a)

    def test_unknown_auth_chain_is_tolerated(self) -> None:
        """Without the auth chain, the conflicted join still resolves, deterministically."""
        events, before, join = load()
        after = dict(before)
        after[join.state_tuple] = join.event_id
        only_join = {join.event_id: join}
        resolved = resolve_state(RV, [before, after], only_join)
        # The join cannot be checked (no create event, no power levels): it is
        # left out; the unconflicted state is kept.
        self.assertEqual(resolved, before)
