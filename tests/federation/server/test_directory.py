"""query/directory, query/profile, publicRooms (matrixfed/federation/server/directory.py)."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial import unittest

from matrixfed.events.room_versions import get_room_version
from matrixfed.federation.server.directory import DirectoryQueries
from matrixfed.federation.server.membership import MembershipHandshakes
from tests.federation.server.resident import (
    ALICE,
    BOB,
    DAVE,
    OURS,
    REMOTE,
    ResidentMixin,
    check_schema,
    event_id_of,
    load_response_schema,
    request,
    sign_as,
)
from tests.storage.harness import PostgresMixin

V1 = "/_matrix/federation/v1"
SAMPLES = "/work/shared/samples/synapse-1.163.2"


class DirectoryCase(ResidentMixin, unittest.TestCase):
    async def setup(self) -> DirectoryQueries:
        await self.make_engine()
        self.d = DirectoryQueries(store=self.store, server_name=OURS)
        return self.d

    def get(self, path: str, **query: Any) -> Any:
        q = {k: v if isinstance(v, list) else [str(v)] for k, v in query.items()}
        return request("GET", V1 + path, {}, query=q)

    async def join_bob(self, room_id: str, version: str) -> None:
        hs = MembershipHandshakes(engine=self.engine)
        rv = get_room_version(version)
        code, made = await hs.on_make_join(
            request(
                "GET",
                V1 + "/make_join/{roomId}/{userId}",
                {"roomId": room_id, "userId": BOB},
                query={"ver": [version]},
            )
        )
        pdu = sign_as(made["event"], rv, REMOTE)
        await hs.on_send_join_v2(
            request(
                "PUT",
                "/_matrix/federation/v2/send_join/{roomId}/{eventId}",
                {"roomId": room_id, "eventId": event_id_of(pdu, rv)},
                content=pdu,
            )
        )


class QueryDirectoryTests(DirectoryCase):
    async def test_alias_resolves_with_servers_in_room(self) -> None:
        await self.setup()
        room_id = await self.room("10", alias="#pairtest:a.example")
        await self.join_bob(room_id, "10")
        code, body = await self.d.on_query_directory(
            self.get("/query/directory", room_alias="#pairtest:a.example")
        )
        self.assertEqual(body, {"room_id": room_id, "servers": [OURS, REMOTE]})
        schema = load_response_schema("query.yaml", "/query/directory", "get")
        self.assertEqual(check_schema(body, schema), [])

    async def test_synapse_sample_shape(self) -> None:
        # Synapse answers the same query with the room ID and the resident.
        with open(f"{SAMPLES}/query_directory.json") as f:
            sample = json.load(f)["response"]["body"]
        schema = load_response_schema("query.yaml", "/query/directory", "get")
        self.assertEqual(check_schema(sample, schema), [])

    async def test_unknown_alias(self) -> None:
        await self.setup()
        for alias in ("#nope:a.example", "#x:elsewhere.example"):
            await self.assert_error(
                self.d.on_query_directory(self.get("/query/directory", room_alias=alias)),
                404,
                "M_NOT_FOUND",
            )
        await self.assert_error(
            self.d.on_query_directory(self.get("/query/directory")), 400, "M_MISSING_PARAM"
        )


class QueryProfileTests(DirectoryCase):
    async def test_profile_fields(self) -> None:
        await self.setup()
        await self.store.set_profile(DAVE, displayname="Dave", avatar_url="mxc://a.example/d")
        code, body = await self.d.on_query_profile(self.get("/query/profile", user_id=DAVE))
        self.assertEqual(body, {"displayname": "Dave", "avatar_url": "mxc://a.example/d"})
        schema = load_response_schema("query.yaml", "/query/profile", "get")
        self.assertEqual(check_schema(body, schema), [])
        code, body = await self.d.on_query_profile(
            self.get("/query/profile", user_id=DAVE, field="displayname")
        )
        self.assertEqual(body, {"displayname": "Dave"})
        await self.assert_error(
            self.d.on_query_profile(self.get("/query/profile", user_id=DAVE, field="m.nope")),
            404,
            "M_NOT_FOUND",
        )

    async def test_room_member_without_profile_exists(self) -> None:
        await self.setup()
        await self.room("10")
        code, body = await self.d.on_query_profile(self.get("/query/profile", user_id=ALICE))
        self.assertEqual((code, body), (200, {}))

    async def test_unknown_and_foreign_users(self) -> None:
        await self.setup()
        await self.assert_error(
            self.d.on_query_profile(self.get("/query/profile", user_id="@nobody:a.example")),
            404,
            "M_NOT_FOUND",
        )
        await self.assert_error(
            self.d.on_query_profile(self.get("/query/profile", user_id=BOB)),
            400,
            "M_INVALID_PARAM",
        )


class PublicRoomsTests(DirectoryCase):
    async def rooms(self) -> tuple[str, str, str]:
        big = await self.room(
            "10",
            name="Big room",
            topic="All about cheese",
            alias="#big:a.example",
            is_public=True,
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "world_readable"},
                }
            ],
        )
        await self.join_bob(big, "10")
        space = await self.room(
            "11", name="A space", is_public=True, creation_content={"type": "m.space"}
        )
        hidden = await self.room("10", name="Not published")
        return big, space, hidden

    async def test_get_lists_published_rooms_largest_first(self) -> None:
        await self.setup()
        big, space, hidden = await self.rooms()
        code, body = await self.d.on_public_rooms_get(self.get("/publicRooms"))
        schema = load_response_schema("public_rooms.yaml", "/publicRooms", "get")
        self.assertEqual(check_schema(body, schema), [])
        self.assertEqual([c["room_id"] for c in body["chunk"]], [big, space])
        first = body["chunk"][0]
        self.assertEqual(
            first,
            {
                "room_id": big,
                "name": "Big room",
                "topic": "All about cheese",
                "canonical_alias": "#big:a.example",
                "num_joined_members": 2,
                "world_readable": True,
                "guest_can_join": False,
                "join_rule": "public",
            },
        )
        self.assertEqual(body["chunk"][1]["room_type"], "m.space")
        self.assertNotIn(hidden, [c["room_id"] for c in body["chunk"]])
        # Once we have left a published room, it is no longer listed.
        await self.engine.send_event(
            space,
            type="m.room.member",
            sender=ALICE,
            state_key=ALICE,
            content={"membership": "leave"},
        )
        code, body = await self.d.on_public_rooms_get(self.get("/publicRooms"))
        self.assertEqual([c["room_id"] for c in body["chunk"]], [big])

    async def test_pagination(self) -> None:
        await self.setup()
        big, space, _ = await self.rooms()
        code, page1 = await self.d.on_public_rooms_get(self.get("/publicRooms", limit=1))
        self.assertEqual([c["room_id"] for c in page1["chunk"]], [big])
        self.assertNotIn("prev_batch", page1)
        code, page2 = await self.d.on_public_rooms_get(
            self.get("/publicRooms", limit=1, since=page1["next_batch"])
        )
        self.assertEqual([c["room_id"] for c in page2["chunk"]], [space])
        self.assertNotIn("next_batch", page2)
        self.assertIn("prev_batch", page2)
        self.assertEqual(page2["total_room_count_estimate"], 2)
        await self.assert_error(
            self.d.on_public_rooms_get(self.get("/publicRooms", since="garbage")),
            400,
            "M_INVALID_PARAM",
        )

    async def test_post_filters(self) -> None:
        await self.setup()
        big, space, _ = await self.rooms()

        async def post(content: Any) -> list[str]:
            code, body = await self.d.on_public_rooms_post(
                request("POST", V1 + "/publicRooms", {}, content=content)
            )
            return [c["room_id"] for c in body["chunk"]]

        self.assertEqual(await post({}), [big, space])
        self.assertEqual(await post({"filter": {"generic_search_term": "CHEESE"}}), [big])
        self.assertEqual(await post({"filter": {"generic_search_term": "#big"}}), [big])
        self.assertEqual(await post({"filter": {"room_types": ["m.space"]}}), [space])
        self.assertEqual(await post({"filter": {"room_types": [None]}}), [big])
        self.assertEqual(await post({"limit": 1}), [big])
        self.assertEqual(await post({"third_party_instance_id": "irc"}), [])
        await self.assert_error(
            self.d.on_public_rooms_post(
                request("POST", V1 + "/publicRooms", {}, content={"limit": "x"})
            ),
            400,
            "M_BAD_JSON",
        )


# The same on PostgreSQL (skipped unless MATRIXFED_TEST_POSTGRES is set).
class PublicRoomsPostgresTests(PostgresMixin, PublicRoomsTests):
    pass
