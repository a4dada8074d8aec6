"""Room aliases and profiles: local, and asked of other servers over federation."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from matrixfed.errors import RemoteError
from tests.clientapi.harness import ClientApiCase
from tests.clientapi.test_rooms import create


class AliasTests(ClientApiCase, unittest.TestCase):
    async def test_put_get_delete(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        path = "/directory/room/%23home:a.example"
        code, _ = await api.call("PUT", path, {"room_id": room_id}, token=alice)
        self.assertEqual(code, 200)
        code, body = await api.call("GET", path)
        self.assertEqual((code, body), (200, {"room_id": room_id, "servers": ["a.example"]}))
        code, body = await api.call("PUT", path, {"room_id": room_id}, token=alice)
        self.assertEqual((code, body["errcode"]), (409, "M_UNKNOWN"))
        code, _ = await api.call("DELETE", path, token=alice)
        self.assertEqual(code, 200)
        code, body = await api.call("GET", path)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))

    async def test_only_the_creator_deletes(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        _, bob = await api.register("bob")
        room_id = await create(api, alice, room_alias_name="mine")
        code, body = await api.call("DELETE", "/directory/room/%23mine:a.example", token=bob)
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        self.assertIsNotNone(await api.store.get_alias("#mine:a.example"))
        self.assertTrue(room_id)

    async def test_foreign_and_malformed_aliases(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        room_id = await create(api, alice)
        code, body = await api.call(
            "PUT", "/directory/room/%23x:b.example", {"room_id": room_id}, token=alice
        )
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        code, body = await api.call("GET", "/directory/room/nohash")
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        code, body = await api.call(
            "PUT", "/directory/room/%23x:a.example", {"room_id": "!unknown:a.example"}, token=alice
        )
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))

    async def test_remote_alias_is_asked_of_its_server(self) -> None:
        api = await self.make_api()

        def answer(destination: str, path: str, data: Any, args: Any) -> Any:
            if args["room_alias"] == "#known:b.example":
                return {"room_id": "!r:b.example", "servers": ["b.example", "c.example"]}
            raise RemoteError(
                destination, "no", reachable=True, transient=False, code=404, errcode="M_NOT_FOUND"
            )

        api.federation.on("GET", "/_matrix/federation/v1/query/directory", answer)
        code, body = await api.call("GET", "/directory/room/%23known:b.example")
        self.assertEqual(
            (code, body), (200, {"room_id": "!r:b.example", "servers": ["b.example", "c.example"]})
        )
        self.assertEqual(api.federation.requests[-1][1], "b.example")
        code, body = await api.call("GET", "/directory/room/%23unknown:b.example")
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))

    async def test_unreachable_server_is_502(self) -> None:
        api = await self.make_api()

        def down(destination: str, path: str, data: Any, args: Any) -> Any:
            raise RemoteError(destination, "connection refused", reachable=False, transient=True)

        api.federation.on("GET", "/_matrix/federation/v1/query/directory", down)
        code, body = await api.call("GET", "/directory/room/%23x:b.example")
        self.assertEqual(code, 502)


class ProfileTests(ClientApiCase, unittest.TestCase):
    async def test_set_own_displayname_updates_member_events(self) -> None:
        api = await self.make_api()
        alice_id, alice = await api.register("alice")
        room_id = await create(api, alice)
        code, _ = await api.call(
            "PUT", f"/profile/{alice_id}/displayname", {"displayname": "Alice A."}, token=alice
        )
        self.assertEqual(code, 200)
        code, body = await api.call("GET", f"/profile/{alice_id}")
        self.assertEqual((code, body), (200, {"displayname": "Alice A."}))
        code, member = await api.call(
            "GET", f"/rooms/{room_id}/state/m.room.member/{alice_id}", token=alice
        )
        self.assertEqual(member["displayname"], "Alice A.")
        code, _ = await api.call(
            "PUT", f"/profile/{alice_id}/avatar_url", {"avatar_url": "mxc://a/b"}, token=alice
        )
        code, body = await api.call("GET", f"/profile/{alice_id}/avatar_url")
        self.assertEqual((code, body), (200, {"avatar_url": "mxc://a/b"}))

    async def test_cannot_change_someone_else(self) -> None:
        api = await self.make_api()
        _, alice = await api.register("alice")
        bob_id, _ = await api.register("bob")
        code, body = await api.call(
            "PUT", f"/profile/{bob_id}/displayname", {"displayname": "x"}, token=alice
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        code, body = await api.call("GET", f"/profile/{bob_id}/displayname")
        self.assertEqual(body, {"displayname": "bob"})

    async def test_unknown_local_user_is_404(self) -> None:
        api = await self.make_api()
        code, body = await api.call("GET", "/profile/@ghost:a.example/displayname")
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
        code, body = await api.call("GET", "/profile/@ghost:a.example/shoe_size")
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))

    async def test_remote_profile_via_federation(self) -> None:
        api = await self.make_api()
        seen: list[Any] = []

        def answer(destination: str, path: str, data: Any, args: Any) -> Any:
            seen.append((destination, dict(args)))
            return {"displayname": "Bob on B"}

        api.federation.on("GET", "/_matrix/federation/v1/query/profile", answer)
        code, body = await api.call("GET", "/profile/@bob:b.example/displayname")
        self.assertEqual((code, body), (200, {"displayname": "Bob on B"}))
        self.assertEqual(
            seen, [("b.example", {"user_id": "@bob:b.example", "field": "displayname"})]
        )
