"""createRoom, joins, invites, kicks, bans and joined_rooms on one server."""

from __future__ import annotations

from twisted.trial import unittest

from tests.clientapi.harness import Api, ClientApiCase


async def create(api: Api, token: str, **body: object) -> str:
    code, answer = await api.call("POST", "/createRoom", body, token=token)
    assert code == 200, answer
    room_id: str = answer["room_id"]
    return room_id


class CreateRoomTests(ClientApiCase, unittest.TestCase):
    async def test_create_with_name_topic_alias_and_public_preset(self) -> None:
        api = await self.make_api()
        alice, token = await api.register("alice")
        code, body = await api.call(
            "POST",
            "/createRoom",
            {
                "visibility": "public",
                "room_alias_name": "lobby",
                "name": "Lobby",
                "topic": "Say hi",
                "room_version": "10",
                "initial_state": [
                    {
                        "type": "m.room.history_visibility",
                        "content": {"history_visibility": "shared"},
                    }
                ],
            },
            token=token,
        )
        self.assertEqual(code, 200, body)
        room_id = body["room_id"]
        self.assertEqual(body["room_alias"], "#lobby:a.example")
        code, name = await api.call("GET", f"/rooms/{room_id}/state/m.room.name", token=token)
        self.assertEqual((code, name), (200, {"name": "Lobby"}))
        code, rules = await api.call(
            "GET", f"/rooms/{room_id}/state/m.room.join_rules/", token=token
        )
        self.assertEqual(rules, {"join_rule": "public"})
        code, hv = await api.call(
            "GET", f"/rooms/{room_id}/state/m.room.history_visibility", token=token
        )
        self.assertEqual(hv, {"history_visibility": "shared"})
        code, create_content = await api.call(
            "GET", f"/rooms/{room_id}/state/m.room.create", token=token
        )
        self.assertEqual(create_content["room_version"], "10")
        code, alias = await api.call("GET", "/directory/room/%23lobby:a.example")
        self.assertEqual((code, alias["room_id"]), (200, room_id))
        code, joined = await api.call("GET", "/joined_rooms", token=token)
        self.assertEqual(joined, {"joined_rooms": [room_id]})
        self.assertTrue((await api.store.get_room(room_id)).is_public)  # type: ignore[union-attr]

    async def test_taken_alias_is_room_in_use(self) -> None:
        api = await self.make_api()
        _, token = await api.register("alice")
        await create(api, token, room_alias_name="x")
        code, body = await api.call("POST", "/createRoom", {"room_alias_name": "x"}, token=token)
        self.assertEqual((code, body["errcode"]), (400, "M_ROOM_IN_USE"))

    async def test_bad_requests(self) -> None:
        api = await self.make_api()
        _, token = await api.register("alice")
        for body, errcode in (
            ({"room_version": "999"}, "M_UNSUPPORTED_ROOM_VERSION"),
            ({"visibility": "secret"}, "M_INVALID_PARAM"),
            ({"preset": "party"}, "M_INVALID_PARAM"),
            ({"invite": "@bob:a.example"}, "M_INVALID_PARAM"),
            ({"initial_state": [{"type": "x"}]}, "M_INVALID_PARAM"),
        ):
            code, answer = await api.call("POST", "/createRoom", body, token=token)
            self.assertEqual((code, answer["errcode"]), (400, errcode), body)
        code, answer = await api.call("POST", "/createRoom", {})
        self.assertEqual((code, answer["errcode"]), (401, "M_MISSING_TOKEN"))


class MembershipTests(ClientApiCase, unittest.TestCase):
    async def test_join_public_room_by_alias_and_leave(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        bob_id, bob = await api.register("bob")
        room_id = await create(api, alice, preset="public_chat", room_alias_name="pub")
        code, body = await api.call("POST", "/join/%23pub:a.example", {}, token=bob)
        self.assertEqual((code, body), (200, {"room_id": room_id}))
        code, members = await api.call("GET", f"/rooms/{room_id}/members", token=alice)
        joined = {e["state_key"] for e in members["chunk"] if e["content"]["membership"] == "join"}
        self.assertEqual(joined, {"@alice:a.example", bob_id})
        code, jm = await api.call("GET", f"/rooms/{room_id}/joined_members", token=bob)
        self.assertEqual(jm, {"joined": {"@alice:a.example": {}, bob_id: {}}})
        await api.call("PUT", f"/profile/{bob_id}/displayname", {"displayname": "Bob"}, token=bob)
        code, jm = await api.call("GET", f"/rooms/{room_id}/joined_members", token=bob)
        self.assertEqual(jm["joined"][bob_id], {"display_name": "Bob"})
        code, _ = await api.call("POST", f"/rooms/{room_id}/leave", {}, token=bob)
        self.assertEqual(code, 200)
        code, body = await api.call("GET", "/joined_rooms", token=bob)
        self.assertEqual(body, {"joined_rooms": []})

    async def test_private_room_needs_an_invite(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        bob_id, bob = await api.register("bob")
        room_id = await create(api, alice)
        code, body = await api.call("POST", f"/rooms/{room_id}/join", {}, token=bob)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        code, _ = await api.call(
            "POST", f"/rooms/{room_id}/invite", {"user_id": bob_id}, token=alice
        )
        self.assertEqual(code, 200)
        code, body = await api.call("POST", f"/rooms/{room_id}/join", {}, token=bob)
        self.assertEqual((code, body), (200, {"room_id": room_id}))

    async def test_kick_and_ban_need_power(self) -> None:
        api = await self.make_api()
        alice_id, alice = await api.register("alice")
        bob_id, bob = await api.register("bob")
        room_id = await create(api, alice, preset="public_chat")
        await api.call("POST", f"/rooms/{room_id}/join", {}, token=bob)
        code, body = await api.call(
            "POST", f"/rooms/{room_id}/kick", {"user_id": alice_id}, token=bob
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        code, _ = await api.call(
            "POST", f"/rooms/{room_id}/ban", {"user_id": bob_id, "reason": "spam"}, token=alice
        )
        self.assertEqual(code, 200)
        membership = await api.store.get_membership(room_id, bob_id)
        self.assertEqual(membership[0] if membership else None, "ban")
        code, body = await api.call("POST", f"/rooms/{room_id}/join", {}, token=bob)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))

    async def test_invite_needs_a_user_id(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        code, body = await api.call("POST", f"/rooms/{room_id}/invite", {}, token=alice)
        self.assertEqual((code, body["errcode"]), (400, "M_MISSING_PARAM"))
        code, body = await api.call(
            "POST", f"/rooms/{room_id}/invite", {"user_id": "bob"}, token=alice
        )
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
