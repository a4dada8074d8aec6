"""/sync: initial, incremental, long polls woken by new events, invites, leaves."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.clientapi.harness import ClientApiCase
from tests.clientapi.test_rooms import create


def bodies(sync: dict[str, object], room_id: str) -> list[str]:
    room = sync["rooms"]["join"][room_id]  # type: ignore[index]
    return [
        e["content"]["body"] for e in room["timeline"]["events"] if e["type"] == "m.room.message"
    ]


class SyncTests(ClientApiCase, unittest.TestCase):
    async def test_initial_then_incremental(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice, name="Room")
        await api.call(
            "PUT", f"/rooms/{room_id}/send/m.room.message/1", {"body": "one"}, token=alice
        )
        code, first = await api.call("GET", "/sync", token=alice)
        self.assertEqual(code, 200)
        room = first["rooms"]["join"][room_id]
        self.assertEqual(bodies(first, room_id), ["one"])
        types = {e["type"] for e in room["timeline"]["events"] + room["state"]["events"]}
        self.assertTrue({"m.room.create", "m.room.name", "m.room.member"} <= types)
        self.assertNotIn("room_id", room["timeline"]["events"][0])

        await api.call(
            "PUT", f"/rooms/{room_id}/send/m.room.message/2", {"body": "two"}, token=alice
        )
        code, second = await api.call("GET", f"/sync?since={first['next_batch']}", token=alice)
        self.assertEqual(bodies(second, room_id), ["two"])
        self.assertEqual(second["rooms"]["join"][room_id]["state"]["events"], [])
        self.assertFalse(second["rooms"]["join"][room_id]["timeline"]["limited"])

        code, third = await api.call("GET", f"/sync?since={second['next_batch']}", token=alice)
        self.assertEqual(third["rooms"]["join"], {})
        self.assertEqual(third["next_batch"], second["next_batch"])

    async def test_limited_timeline_and_prev_batch(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        for i in range(4):
            await api.call(
                "PUT", f"/rooms/{room_id}/send/m.room.message/{i}", {"body": str(i)}, token=alice
            )
        filt = '{"room":{"timeline":{"limit":2}}}'
        code, sync = await api.call("GET", f"/sync?filter={filt}", token=alice)
        timeline = sync["rooms"]["join"][room_id]["timeline"]
        self.assertTrue(timeline["limited"])
        self.assertEqual(bodies(sync, room_id), ["2", "3"])
        code, older = await api.call(
            "GET",
            f"/rooms/{room_id}/messages?dir=b&limit=2&from={timeline['prev_batch']}",
            token=alice,
        )
        self.assertEqual([e["content"]["body"] for e in older["chunk"]], ["1", "0"])

    async def test_long_poll_wakes_on_new_event(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        _, first = await api.call("GET", "/sync", token=alice)
        poll = Deferred.fromCoroutine(
            api.call("GET", f"/sync?since={first['next_batch']}&timeout=30000", token=alice)
        )
        from twisted.internet import reactor

        await deferLater(reactor, 0.05)
        self.assertFalse(poll.called)
        await api.call(
            "PUT", f"/rooms/{room_id}/send/m.room.message/1", {"body": "hi"}, token=alice
        )
        code, woke = await poll
        self.assertEqual(code, 200)
        self.assertEqual(bodies(woke, room_id), ["hi"])

    async def test_long_poll_times_out_empty(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        await create(api, alice)
        _, first = await api.call("GET", "/sync", token=alice)
        poll = Deferred.fromCoroutine(
            api.call("GET", f"/sync?since={first['next_batch']}&timeout=30000", token=alice)
        )
        from twisted.internet import reactor

        await deferLater(reactor, 0.05)
        self.assertFalse(poll.called)
        api.clock.advance(31)
        code, body = await poll
        self.assertEqual((code, body["rooms"]["join"]), (200, {}))

    async def test_invite_wakes_invitee_and_join_moves_room(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        bob_id, bob = await api.register("bob")
        room_id = await create(api, alice, name="Secret")
        _, first = await api.call("GET", "/sync", token=bob)
        self.assertEqual(first["rooms"]["invite"], {})
        poll = Deferred.fromCoroutine(
            api.call("GET", f"/sync?since={first['next_batch']}&timeout=30000", token=bob)
        )
        await api.call("POST", f"/rooms/{room_id}/invite", {"user_id": bob_id}, token=alice)
        _, invited = await poll
        state = invited["rooms"]["invite"][room_id]["invite_state"]["events"]
        self.assertIn(
            {
                "type": "m.room.name",
                "state_key": "",
                "sender": "@alice:a.example",
                "content": {"name": "Secret"},
            },
            state,
        )
        self.assertIn("invite", [e["content"].get("membership") for e in state])

        # More activity in the room does not repeat the invite.
        await api.call("PUT", f"/rooms/{room_id}/send/m.room.message/1", {"body": "x"}, token=alice)
        _, quiet = await api.call("GET", f"/sync?since={invited['next_batch']}", token=bob)
        self.assertEqual(quiet["rooms"]["invite"], {})

        await api.call("POST", f"/rooms/{room_id}/join", {}, token=bob)
        _, joined = await api.call("GET", f"/sync?since={quiet['next_batch']}", token=bob)
        self.assertIn(room_id, joined["rooms"]["join"])
        room = joined["rooms"]["join"][room_id]
        # Just joined: the state comes along.
        self.assertIn("m.room.create", {e["type"] for e in room["state"]["events"]})

        await api.call("POST", f"/rooms/{room_id}/leave", {}, token=bob)
        _, left = await api.call("GET", f"/sync?since={joined['next_batch']}", token=bob)
        self.assertIn(room_id, left["rooms"]["leave"])
        self.assertEqual(left["rooms"]["join"], {})

    async def test_bad_since_is_400(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        code, body = await api.call("GET", "/sync?since=t1_2", token=alice)
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))

    async def test_own_events_carry_the_transaction_id(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice", "pw")
        _, other_device = await api.call(
            "POST", "/login", {"type": "m.login.password", "user": "alice", "password": "pw"}
        )
        room_id = await create(api, alice)
        await api.call(
            "PUT", f"/rooms/{room_id}/send/m.room.message/abc", {"body": "x"}, token=alice
        )
        _, mine = await api.call("GET", "/sync", token=alice)
        _, theirs = await api.call("GET", "/sync", token=other_device["access_token"])

        def message(sync: dict[str, object]) -> dict[str, object]:
            events = sync["rooms"]["join"][room_id]["timeline"]["events"]  # type: ignore[index]
            found: dict[str, object] = [e for e in events if e["type"] == "m.room.message"][0]
            return found

        self.assertEqual(message(mine)["unsigned"], {"transaction_id": "abc"})
        self.assertNotIn("transaction_id", message(theirs).get("unsigned", {}))  # type: ignore[operator]
