"""The outbound sender across a restart of its server, delivering to a fake remote.

A transaction whose answer never came (the server stopped with it in flight)
is resent after the restart with the same transaction ID and the same PDUs,
so the receiver, which deduplicates by (origin, txnId), takes it once.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests.harness.fakeremote import Hang, ReceivedRequest, RemoteRoom, Reply
from tests.harness.servers import TestNetwork, eventually

SEND = "/_matrix/federation/v1/send/"


def bodies(request: ReceivedRequest) -> list[str]:
    """Message bodies of the PDUs of a /send request ([] for other requests)."""
    if not request.path.startswith(SEND) or not isinstance(request.json, dict):
        return []
    return [p.get("content", {}).get("body") for p in request.json.get("pdus", [])]


class SenderRestartTests(unittest.TestCase):
    async def test_transaction_in_flight_at_a_restart_is_resent_unchanged(self) -> None:
        net = TestNetwork(self)
        a = await net.start_server()
        remote = await net.start_fake_remote()
        remote.require_auth = True
        alice = a.user("alice")
        room_id = await a.engine.create_room(alice, preset="public_chat", room_version="12")
        room = await RemoteRoom.follow(a.store, room_id)
        join = room.member(f"@mallory:{remote.server_name}", "join")
        await remote.send_transaction(a.name, [join])

        seen_txns: dict[str, int] = {}

        def answer(request: ReceivedRequest) -> Reply | Hang:
            txn_id = request.path_params["txnId"]
            seen_txns[txn_id] = seen_txns.get(txn_id, 0) + 1
            if "before the crash" in bodies(request) and seen_txns[txn_id] == 1:
                return Hang()  # the answer is lost: the sender dies waiting
            return Reply(200, {"pdus": {}})

        remote.on("PUT", SEND + "{txnId}", answer)
        await a.engine.send_event(
            room_id, type="m.room.message", sender=alice, content={"body": "before the crash"}
        )
        first = await remote.wait_for(lambda r: "before the crash" in bodies(r))

        a = await net.restart(a)
        second = await remote.wait_for(lambda r: "before the crash" in bodies(r), count=2)
        self.assertEqual(second.path, first.path)
        self.assertEqual(second.json["pdus"], first.json["pdus"])
        self.assertEqual(second.auth_error, None)

        await a.engine.send_event(
            room_id, type="m.room.message", sender=alice, content={"body": "after"}
        )
        third = await remote.wait_for(lambda r: "after" in bodies(r))
        self.assertNotEqual(third.path, first.path)
        # Every transaction ID carrying "before the crash" is the same one.
        carrying = {r.path for r in remote.received("PUT", SEND) if "before the crash" in bodies(r)}
        self.assertEqual(carrying, {first.path})

        async def drained() -> bool:
            return await a.sender._queue.count_queued(remote.server_name) == 0

        await eventually(drained, "outbox drained")
