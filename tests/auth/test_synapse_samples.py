"""The auth rules and selection agree with real Synapse 1.163.2 traffic (v12 room)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from matrixfed.auth.rules import auth_state_from_events, check_auth, check_auth_events_refs
from matrixfed.auth.selection import CREATE_KEY, select_auth_event_ids
from matrixfed.errors import AuthError
from matrixfed.events.model import Event
from matrixfed.events.room_versions import get_room_version

_SAMPLE_DIR = "samples/synapse-1.163.2"


def _samples() -> Path:
    # CI lays shared/ beside the clone; sessions have it at /work/shared.
    for shared in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared")):
        if (shared / _SAMPLE_DIR).is_dir():
            return shared / _SAMPLE_DIR
    raise FileNotFoundError("shared/samples/synapse-1.163.2 not found")


def _load(name: str) -> dict[str, Any]:
    with open(_samples() / name) as f:
        return json.load(f)  # type: ignore[no-any-return]


class SendJoinSampleTests(SynchronousTestCase):
    def setUp(self) -> None:
        body = _load("send_join_v2_full_state_direct.json")["response"]["body"]
        self.rv = get_room_version("12")
        self.state_events = [Event(pdu, self.rv) for pdu in body["state"]]
        chain = [Event(pdu, self.rv) for pdu in body["auth_chain"]]
        self.join = Event(body["event"], self.rv)
        self.by_id = {ev.event_id: ev for ev in [*self.state_events, *chain]}
        self.state = auth_state_from_events(self.state_events)
        self.create = self.state[CREATE_KEY]

    def _auth_state(self, event: Event) -> dict[tuple[str, str], Event]:
        state = auth_state_from_events(self.by_id[e] for e in event.auth_event_ids)
        state[CREATE_KEY] = self.create
        return state

    def test_every_event_passes_against_its_auth_events(self) -> None:
        checked = 0
        for event in sorted(self.by_id.values(), key=lambda ev: ev.depth):
            check_auth_events_refs(event, self.by_id)
            check_auth(event, self._auth_state(event))
            checked += 1
        self.assertEqual(checked, len(self.by_id))

    def test_join_passes_against_returned_state(self) -> None:
        before = {k: v for k, v in self.state.items() if k != self.join.state_tuple}
        check_auth_events_refs(self.join, self.by_id)
        check_auth(self.join, before)

    def test_selection_matches_synapse(self) -> None:
        state_ids = {k: ev.event_id for k, ev in self.state.items() if k != self.join.state_tuple}
        for event in [self.join, *self.state_events]:
            if event.type == "m.room.create":
                continue
            # State as Synapse saw it when building: the sample's state, minus
            # the event itself.
            ids = select_auth_event_ids(
                self.rv,
                event.type,
                event.sender,
                event.state_key,
                event.content,
                {k: v for k, v in state_ids.items() if v != event.event_id},
            )
            if event is self.join:
                self.assertEqual(set(ids), set(event.auth_event_ids))
            else:
                self.assertTrue(set(event.auth_event_ids) <= set(ids) | {event.event_id})

    def test_creator_listed_in_power_levels_would_be_rejected(self) -> None:
        pl = self.state[("m.room.power_levels", "")]
        content = dict(pl.content)
        content["users"] = {**content.get("users", {}), self.create.sender: 100}
        forged = Event({**pl.pdu, "content": content}, self.rv)
        with self.assertRaisesRegex(AuthError, "room creator"):
            check_auth(forged, self._auth_state(pl))
