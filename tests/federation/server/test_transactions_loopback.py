"""/send over real TLS: a fake remote server talks to a running matrixfed."""

from __future__ import annotations

import copy

from twisted.trial import unittest

from tests.harness.fakeremote import RemoteRoom
from tests.harness.servers import TestNetwork


class SendOverTheWireTests(unittest.TestCase):
    async def test_transactions_from_a_fake_remote(self) -> None:
        net = TestNetwork(self)
        server = await net.start_server()
        remote = await net.start_fake_remote()
        alice = server.user("alice")
        room_id = await server.engine.create_room(alice, room_version="10", preset="public_chat")
        room = await RemoteRoom.follow(server.store, room_id)
        bob = f"@bob:{remote.server_name}"
        join = room.member(bob, "join")
        hello = room.send("m.room.message", bob, {"body": "hello"})
        forged = copy.deepcopy(room.make("m.room.message", bob, {"body": "forged"}).pdu)
        forged["content"]["body"] = "changed"  # content hash now wrong: redacted, kept
        forged["signatures"][remote.server_name]["ed25519:k1"] = "A" * 86
        grab = room.make("m.room.power_levels", bob, {"users": {bob: 100}}, "")

        answer = await remote.send_transaction(
            server.name, [join, hello, forged, grab], txn_id="t1"
        )
        results = answer["pdus"]
        self.assertEqual(results[join.event_id], {})
        self.assertEqual(results[hello.event_id], {})
        self.assertEqual(len(results), 4)
        self.assertEqual(sum(1 for r in results.values() if "error" in r), 2)
        self.assertEqual(await server.store.get_membership(room_id, bob), ("join", join.event_id))
        timeline = await server.store.get_room_events_stream(room_id, from_ordering=0)
        self.assertEqual(timeline[-1][1].event_id, hello.event_id)

        # The same transaction again, after a restart: the stored answer, no
        # reprocessing.
        position = await server.store.get_current_stream_ordering()
        server = await net.restart(server)
        # Stopping a service leaves accepted keep-alive connections open (served
        # by the stopped service): reconnect to reach the restarted one.
        await remote.client.close()
        again = await remote.send_transaction(server.name, [join, hello], txn_id="t1")
        self.assertEqual(again, answer)
        self.assertEqual(await server.store.get_current_stream_ordering(), position)
