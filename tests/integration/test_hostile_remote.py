"""A matrixfed server against the scriptable fake remote, over real TLS.

The fake joins a public room hosted by matrixfed by sending its user's join
in a transaction, then drives the hostile cases: forged and unauthorised PDUs
next to valid ones, a retried transaction ID. Run for room versions 1, 6, 10,
11 and 12.
"""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey
from signedjson.sign import sign_json
from twisted.trial import unittest

from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from tests.harness.fakeremote import FakeRemote, Garbage, ReceivedRequest, RemoteRoom, Reply
from tests.harness.servers import ServerHandle, TestNetwork

VERSIONS = ("1", "6", "10", "11", "12")
SEND = "/_matrix/federation/v1/send/"
MISSING = "/_matrix/federation/v1/get_missing_events/"
STATE_IDS = "/_matrix/federation/v1/state_ids/"
EVENT = "/_matrix/federation/v1/event/"


def forge_signature(event: Event, server_name: str) -> Event:
    """The same event signed by a key that is not ``server_name``'s (same key ID)."""
    pdu = dict(event.pdu)
    pdu.pop("signatures")
    impostor = SigningKey.generate()
    impostor.version = "k1"  # type: ignore[attr-defined]
    impostor.alg = "ed25519"  # type: ignore[attr-defined]
    pdu["signatures"] = sign_json(redact(pdu, event.room_version), server_name, impostor)[
        "signatures"
    ]
    return Event(pdu, event.room_version, event_id=event.event_id)


class _HostileRemote:
    version: str

    async def setUp(self) -> None:
        case: Any = self
        self.net = TestNetwork(case)
        self.a: ServerHandle = await self.net.start_server()
        self.remote: FakeRemote = await self.net.start_fake_remote()
        self.remote.require_auth = True
        self.remote.on("PUT", SEND + "{txnId}", self._answer_send)
        self.alice = self.a.user("alice")
        self.mallory = f"@mallory:{self.remote.server_name}"
        self.room_id: str = await self.a.engine.create_room(
            self.alice, preset="public_chat", room_version=self.version
        )
        self.room = await RemoteRoom.follow(self.a.store, self.room_id)
        join = self.room.member(self.mallory, "join")
        answer = await self.remote.send_transaction(self.a.name, [join])
        case.assertEqual(answer["pdus"], {join.event_id: {}})
        membership = await self.a.store.get_membership(self.room_id, self.mallory)
        case.assertEqual(membership, ("join", join.event_id))

    def _answer_send(self, request: ReceivedRequest) -> Reply:
        for pdu in request.json["pdus"]:
            self.room.receive(pdu)
        return Reply(200, {"pdus": {}})

    def _serve_event(self, request: ReceivedRequest) -> Reply:
        event = self.room.events.get(request.path_params["eventId"])
        if event is None:
            return Reply(404, {"errcode": "M_NOT_FOUND", "error": "no such event"})
        body = {
            "origin": self.remote.server_name,
            "origin_server_ts": event.pdu["origin_server_ts"],
            "pdus": [event.pdu],
        }
        return Reply(200, body)

    async def assertStored(self, event: Event) -> None:
        case: Any = self
        stored = await self.a.store.get_event(event.event_id)
        case.assertIsNotNone(stored, event.type)
        case.assertEqual(await self.a.store.get_rejected([event.event_id]), {})

    async def assertNotAccepted(self, event: Event) -> None:
        """Absent from the store, or stored as rejected; never in the current state."""
        case: Any = self
        stored = await self.a.store.get_event(event.event_id)
        if stored is not None:
            case.assertIn(event.event_id, await self.a.store.get_rejected([event.event_id]))
        state = await self.a.store.get_current_state_ids(self.room_id)
        case.assertNotIn(event.event_id, state.values())

    async def test_messages_flow_both_ways_over_send(self) -> None:
        case: Any = self
        sent = await self.a.engine.send_event(
            self.room_id, type="m.room.message", sender=self.alice, content={"body": "hi"}
        )
        request = await self.remote.wait_for(
            lambda r: (
                r.path.startswith(SEND)
                and any(p.get("content", {}).get("body") == "hi" for p in r.json["pdus"])
            )
        )
        case.assertEqual((request.origin, request.auth_error), (self.a.name, None))
        case.assertIn(sent.pdu, request.json["pdus"])
        reply = self.room.send("m.room.message", self.mallory, {"body": "hello back"})
        answer = await self.remote.send_transaction(self.a.name, [reply])
        case.assertEqual(answer["pdus"], {reply.event_id: {}})
        await self.assertStored(reply)
        case.assertIn(reply.event_id, await self.a.store.get_forward_extremities(self.room_id))

    async def test_forged_and_unauthorised_pdus_are_rejected_beside_valid_ones(self) -> None:
        case: Any = self
        good1 = self.room.send("m.room.message", self.mallory, {"body": "one"})
        forged = forge_signature(
            self.room.make("m.room.message", self.mallory, {"body": "forged"}),
            self.remote.server_name,
        )
        # Claims to come from alice: needs a.example's signature, which the fake lacks.
        impersonation = self.room.make("m.room.message", self.alice, {"body": "not alice"})
        # Mallory (power 0) may not change the power levels.
        pl = dict(self.room.state[("m.room.power_levels", "")].content)
        pl["users"] = {**pl.get("users", {}), self.mallory: 100}
        unauthorised = self.room.make("m.room.power_levels", self.mallory, pl, "")
        good2 = self.room.send("m.room.message", self.mallory, {"body": "two"})
        answer = await self.remote.send_transaction(
            self.a.name, [good1, forged, impersonation, unauthorised, good2]
        )
        results = answer["pdus"]
        case.assertEqual(results[good1.event_id], {})
        case.assertEqual(results[good2.event_id], {})
        for bad in (forged, impersonation, unauthorised):
            case.assertIn("error", results[bad.event_id], bad.content)
            await self.assertNotAccepted(bad)
        await self.assertStored(good1)
        await self.assertStored(good2)
        state = await self.a.store.get_current_state_ids(self.room_id)
        case.assertNotEqual(state[("m.room.power_levels", "")], unauthorised.event_id)

    async def test_retried_transaction_id_is_answered_from_the_first_time(self) -> None:
        case: Any = self
        first = self.room.send("m.room.message", self.mallory, {"body": "once"})
        answer1 = await self.remote.send_transaction(self.a.name, [first], txn_id="t1")
        before = await self.a.store.get_current_stream_ordering()
        # Same transaction ID again (a retry after a lost answer), even with other
        # content: answered as the first time, nothing processed.
        other = self.room.make("m.room.message", self.mallory, {"body": "sneaked in"})
        answer2 = await self.remote.send_transaction(self.a.name, [first, other], txn_id="t1")
        case.assertEqual(answer2, answer1)
        case.assertIsNone(await self.a.store.get_event(other.event_id))
        case.assertEqual(await self.a.store.get_current_stream_ordering(), before)

    async def test_gap_is_filled_from_the_origin_with_get_missing_events(self) -> None:
        case: Any = self
        two = self.room.send("m.room.message", self.mallory, {"body": "two"})
        three = self.room.send("m.room.message", self.mallory, {"body": "three"})
        self.remote.on("POST", MISSING + "{roomId}", lambda r: Reply(200, {"events": [two.pdu]}))
        answer = await self.remote.send_transaction(self.a.name, [three])
        case.assertEqual(answer["pdus"], {three.event_id: {}})
        await self.assertStored(two)
        await self.assertStored(three)
        [request] = self.remote.received("POST", MISSING)
        case.assertEqual((request.origin, request.auth_error), (self.a.name, None))
        case.assertEqual(request.json["latest_events"], [three.event_id])

    async def test_unfillable_gap_fails_the_pdu_alone(self) -> None:
        case: Any = self
        self.remote.on("POST", MISSING + "{roomId}", Garbage())
        self.room.send("m.room.message", self.mallory, {"body": "never seen"})
        orphan = self.room.send("m.room.message", self.mallory, {"body": "orphan"})
        # /state_ids is not scripted either (404): the state before it cannot be had.
        answer = await self.remote.send_transaction(self.a.name, [orphan])
        case.assertIn("error", answer["pdus"][orphan.event_id])
        case.assertNotIn(orphan.event_id, await self.a.store.get_forward_extremities(self.room_id))
        await self.assertNotAccepted(orphan)
        case.assertTrue(self.remote.received("GET", STATE_IDS))

    async def test_gap_bridged_by_state_ids_when_missing_events_fail(self) -> None:
        case: Any = self
        self.remote.on("POST", MISSING + "{roomId}", Reply(502, {"errcode": "M_UNKNOWN"}))
        lost = self.room.send("m.room.message", self.mallory, {"body": "lost"})
        after = self.room.send("m.room.message", self.mallory, {"body": "after the gap"})
        state_ids = [ev.event_id for ev in self.room.state.values()]
        self.remote.on(
            "GET",
            STATE_IDS + "{roomId}",
            lambda r: Reply(200, {"pdu_ids": state_ids, "auth_chain_ids": state_ids}),
        )
        self.remote.on("GET", EVENT + "{eventId}", self._serve_event)
        answer = await self.remote.send_transaction(self.a.name, [after])
        case.assertEqual(answer["pdus"], {after.event_id: {}})
        await self.assertStored(after)
        case.assertIn(after.event_id, await self.a.store.get_forward_extremities(self.room_id))
        [request] = self.remote.received("GET", STATE_IDS)
        case.assertEqual(request.query.get("event_id"), [lost.event_id])


for _version in VERSIONS:
    _name = f"HostileRemoteV{_version}"
    globals()[_name] = type(
        _name, (_HostileRemote, unittest.TestCase), {"version": _version, "__module__": __name__}
    )
del _version, _name
