"""matrixfed's published room directory read by Synapse over federation.

A Synapse user lists matrixfed's published rooms through the client-server
``/publicRooms?server=`` (GET, and POST with a search term); Synapse asks
matrixfed's ``/_matrix/federation/v1/publicRooms``. (The other way round
needs a client-server ``/publicRooms`` on matrixfed.)
"""

from __future__ import annotations

from typing import Any

from tests.interop.client import ClientUser
from tests.interop.synapse import InteropTestCase, ServerProcess, shared_pair, with_logs


def _unique(prefix: str) -> str:
    import os
    import time

    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"


async def _published(host: ServerProcess) -> tuple[str, str]:
    owner = await host.register()
    name = _unique("Directory room")
    room_id = await owner.create_room(
        name=name, topic="directory interop", visibility="public", preset="public_chat"
    )
    return room_id, name


async def _listed(asker: ClientUser, server: str, body: Any = None) -> list[dict[str, Any]]:
    if body is None:
        result = await asker.call(
            "GET", "/_matrix/client/v3/publicRooms", args={"server": server, "limit": "500"}
        )
    else:
        result = await asker.call(
            "POST", "/_matrix/client/v3/publicRooms", body, args={"server": server}
        )
    chunk: list[dict[str, Any]] = result["chunk"]
    return chunk


class PublicRoomsTests(InteropTestCase):
    @with_logs
    async def test_synapse_lists_matrixfed_rooms(self) -> None:
        synapse, mf = await shared_pair()
        room_id, name = await _published(mf)
        asker = await synapse.register()
        rooms = {c["room_id"]: c for c in await _listed(asker, mf.server_name)}
        self.assertIn(room_id, rooms)
        self.assertEqual(rooms[room_id]["name"], name)
        self.assertEqual(rooms[room_id]["topic"], "directory interop")
        self.assertEqual(rooms[room_id]["num_joined_members"], 1)
        found = await _listed(
            asker, mf.server_name, {"filter": {"generic_search_term": name}, "limit": 10}
        )
        self.assertEqual([c["room_id"] for c in found], [room_id])
