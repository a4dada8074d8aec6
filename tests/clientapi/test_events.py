"""send (idempotent transactions), state, messages pagination, members."""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial import unittest

from tests.clientapi.harness import ClientApiCase
from tests.clientapi.test_rooms import create


class SendTests(ClientApiCase, unittest.TestCase):
    async def test_same_txn_id_same_token_sends_once(self) -> None:
        api = await self.make_api()
        _, token = await api.register("alice")
        room_id = await create(api, token)
        path = f"/rooms/{room_id}/send/m.room.message/txn1"
        msg = {"msgtype": "m.text", "body": "hello"}
        # Two racing requests and one late repeat.
        first, second = await gatherResults(
            [
                Deferred.fromCoroutine(api.call("PUT", path, msg, token=token)),
                Deferred.fromCoroutine(api.call("PUT", path, msg, token=token)),
            ]
        )
        third = await api.call("PUT", path, msg, token=token)
        self.assertEqual(first[0], 200)
        self.assertEqual(first, second)
        self.assertEqual(first, third)
        code, page = await api.call("GET", f"/rooms/{room_id}/messages?dir=b&limit=50", token=token)
        bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
        self.assertEqual(bodies, ["hello"])

    async def test_same_txn_id_other_token_is_a_new_event(self) -> None:
        api = await self.make_api()
        _, token = await api.register("alice", "pw")
        _, login = await api.call(
            "POST", "/login", {"type": "m.login.password", "user": "alice", "password": "pw"}
        )
        room_id = await create(api, token)
        path = f"/rooms/{room_id}/send/m.room.message/t"
        _, a = await api.call("PUT", path, {"body": "1"}, token=token)
        _, b = await api.call("PUT", path, {"body": "1"}, token=login["access_token"])
        self.assertNotEqual(a["event_id"], b["event_id"])

    async def test_non_member_cannot_send(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        _, bob = await api.register("bob")
        room_id = await create(api, alice)
        code, body = await api.call(
            "PUT", f"/rooms/{room_id}/send/m.room.message/1", {"body": "x"}, token=bob
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))

    async def test_send_needs_an_object(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        code, body = await api.call(
            "PUT", f"/rooms/{room_id}/send/m.room.message/1", [1, 2], token=alice
        )
        self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"))

    async def test_oversized_content_is_413(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        for path in ("/send/m.room.message/big", "/state/org.example.big/k"):
            code, body = await api.call(
                "PUT", f"/rooms/{room_id}{path}", {"body": "x" * 70000}, token=alice
            )
            self.assertEqual((code, body["errcode"]), (413, "M_TOO_LARGE"), path)


class StateTests(ClientApiCase, unittest.TestCase):
    async def test_put_and_get_state(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        code, body = await api.call(
            "PUT", f"/rooms/{room_id}/state/m.room.topic", {"topic": "new"}, token=alice
        )
        self.assertEqual(code, 200)
        event_id = body["event_id"]
        code, body = await api.call(
            "PUT", f"/rooms/{room_id}/state/org.example.thing/key1", {"v": 1}, token=alice
        )
        self.assertEqual(code, 200)
        code, topic = await api.call("GET", f"/rooms/{room_id}/state/m.room.topic", token=alice)
        self.assertEqual(topic, {"topic": "new"})
        code, thing = await api.call(
            "GET", f"/rooms/{room_id}/state/org.example.thing/key1", token=alice
        )
        self.assertEqual(thing, {"v": 1})
        code, full = await api.call("GET", f"/rooms/{room_id}/state", token=alice)
        self.assertIn(event_id, {e["event_id"] for e in full})
        self.assertIn("m.room.create", {e["type"] for e in full})

    async def test_missing_state_is_404_and_outsiders_get_403(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        _, bob = await api.register("bob")
        room_id = await create(api, alice)
        code, body = await api.call("GET", f"/rooms/{room_id}/state/m.room.topic", token=alice)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
        for path in ("/state", "/state/m.room.create", "/messages", "/members"):
            code, body = await api.call("GET", f"/rooms/{room_id}{path}", token=bob)
            self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"), path)

    async def test_unpowered_state_change_is_403(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        _, bob = await api.register("bob")
        room_id = await create(api, alice, preset="public_chat")
        await api.call("POST", f"/rooms/{room_id}/join", {}, token=bob)
        code, body = await api.call(
            "PUT", f"/rooms/{room_id}/state/m.room.name", {"name": "mine"}, token=bob
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))


class MessagesTests(ClientApiCase, unittest.TestCase):
    async def test_paginate_backwards_then_forwards(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        for i in range(5):
            await api.call(
                "PUT", f"/rooms/{room_id}/send/m.room.message/{i}", {"body": str(i)}, token=alice
            )
        code, page1 = await api.call("GET", f"/rooms/{room_id}/messages?dir=b&limit=3", token=alice)
        self.assertEqual(code, 200)
        self.assertEqual([e["content"]["body"] for e in page1["chunk"]], ["4", "3", "2"])
        code, page2 = await api.call(
            "GET", f"/rooms/{room_id}/messages?dir=b&limit=3&from={page1['end']}", token=alice
        )
        self.assertEqual([e["content"].get("body") for e in page2["chunk"][:2]], ["1", "0"])
        code, forward = await api.call(
            "GET", f"/rooms/{room_id}/messages?dir=f&limit=2&from={page2['end']}", token=alice
        )
        self.assertEqual(len(forward["chunk"]), 2)
        # Paging back to the very start ends without an "end" token.
        token = page2.get("end")
        while token is not None:
            _, page = await api.call(
                "GET", f"/rooms/{room_id}/messages?dir=b&limit=3&from={token}", token=alice
            )
            token = page.get("end")
        self.assertEqual(
            page["chunk"][-1]["type"] if page["chunk"] else "m.room.create", "m.room.create"
        )

    async def test_bad_tokens_and_dir(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        for query in ("dir=x", "from=garbage", "limit=ten"):
            code, body = await api.call("GET", f"/rooms/{room_id}/messages?{query}", token=alice)
            self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"), query)
