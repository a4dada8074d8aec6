"""Joins over real HTTPS on loopback: a scripted fake resident and a real matrixfed one.

The joining server is a real matrixfed service (``TestNetwork``); its
coordinator talks through the real federation client (TLS, X-Matrix signing,
key fetching from the resident's key server).
"""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from tests.harness.fakeremote import Garbage, ReceivedRequest, RemoteRoom, Reply
from tests.harness.servers import TestNetwork, eventually
from tests.joins.resident import FakeResidents

MAKE_JOIN = "/_matrix/federation/v1/make_join/{roomId}/{userId}"
SEND_JOIN_V1 = "/_matrix/federation/v1/send_join/{roomId}/{eventId}"


class FakeResidentOverHttpTests(unittest.TestCase):
    async def test_join_through_an_old_resident_after_a_broken_one(self) -> None:
        """Garbage from the first candidate; v1-only send_join on the second."""
        net = TestNetwork(self)
        b = await net.start_server()
        junk = await net.start_fake_remote()
        remote = await net.start_fake_remote()
        room = RemoteRoom.of("10")
        creator = f"@alice:{remote.server_name}"
        room.standard_room(creator)
        for i in range(20):
            room.member(f"@m{i}:{remote.server_name}", "join")
        residents = FakeResidents(room, [remote.server_name])
        room_id = room.room_id
        assert room_id is not None

        junk.on("GET", MAKE_JOIN, Garbage())

        async def make_join(request: ReceivedRequest) -> Reply:
            body = await residents.make_join(
                remote.server_name,
                request.path_params["roomId"],
                request.path_params["userId"],
                request.query["ver"],
            )
            return Reply(200, body)

        async def send_join_v1(request: ReceivedRequest) -> Reply:
            body: Any = await residents.send_join(
                remote.server_name,
                request.path_params["roomId"],
                request.path_params["eventId"],
                request.json,
                omit_members=False,
            )
            return Reply(200, [200, body])

        remote.on("GET", MAKE_JOIN, make_join)
        remote.on("PUT", SEND_JOIN_V1, send_join_v1)

        bob = b.user("bob")
        result = await b.joiner.join(room_id, bob, servers=[junk.server_name, remote.server_name])
        self.assertEqual(result.server, remote.server_name)
        self.assertEqual(
            await b.store.get_membership(room_id, creator),
            ("join", room.state[("m.room.member", creator)].event_id),
        )
        joined = await b.store.get_joined_users(room_id)
        self.assertEqual(len(joined), 22)
        puts = [r.path for r in remote.received("PUT")]
        self.assertEqual(len(puts), 2)
        self.assertIn("/v2/send_join/", puts[0])
        self.assertIn("/v1/send_join/", puts[1])
        self.assertTrue(puts[1].endswith(result.event_id))
        # The resident's keys came from its key server, over TLS.
        self.assertTrue(remote.received("GET", "/_matrix/key/v2/server"))


class MatrixfedResidentTests(unittest.TestCase):
    async def test_partial_state_join_then_resync(self) -> None:
        net = TestNetwork(self)
        a = await net.start_server()
        b = await net.start_server(join_partial_state=True)
        alice = a.user("alice")
        room_id = await a.engine.create_room(alice, preset="public_chat", room_version="11")
        members = [a.user(f"u{i}") for i in range(8)]
        for member in members:
            await a.engine.send_event(
                room_id,
                type="m.room.member",
                sender=member,
                state_key=member,
                content={"membership": "join"},
            )
        bob = b.user("bob")
        result = await b.joiner.join(room_id, bob, servers=[a.name])
        self.assertTrue(result.partial_state)
        finished = b.joiner.resync.finished(room_id)
        if finished is not None:
            self.assertTrue(await finished)
        info = await b.store.get_room(room_id)
        self.assertFalse(info.partial_state)
        self.assertEqual(await b.store.get_joined_users(room_id), {alice, bob, *members})
        self.assertEqual(
            await b.store.get_current_state_ids(room_id),
            await a.store.get_current_state_ids(room_id),
        )

    async def test_leave_then_join_again(self) -> None:
        """After the last local user left, a new join is a new handshake; the room works."""
        net = TestNetwork(self)
        a = await net.start_server()
        b = await net.start_server()
        alice, bob = a.user("alice"), b.user("bob")
        room_id = await a.engine.create_room(alice, preset="public_chat", room_version="10")
        await b.joiner.join(room_id, bob, servers=[a.name])
        left = await b.joiner.leave(room_id, bob)
        self.assertIsNone(left.server)  # a local leave, sent to A by B's engine
        await eventually(lambda: _membership_is(a, room_id, bob, "leave"), "the leave reaches A")
        self.assertFalse(await b.store.is_host_joined(room_id, b.name))
        again = await b.joiner.join(room_id, bob, servers=[a.name])
        self.assertEqual(again.server, a.name)
        self.assertEqual(await b.store.get_membership(room_id, bob), ("join", again.event_id))
        sent = await b.engine.send_event(
            room_id, type="m.room.message", sender=bob, content={"body": "back"}
        )
        await eventually(
            lambda: _accepted(a, sent.event_id), "B's message after rejoining reaches A"
        )


async def _membership_is(server: Any, room_id: str, user_id: str, want: str) -> bool:
    found = await server.store.get_membership(room_id, user_id)
    return found is not None and found[0] == want


async def _accepted(server: Any, event_id: str) -> bool:
    if await server.store.get_event(event_id) is None:
        return False
    return not await server.store.get_rejected([event_id])
