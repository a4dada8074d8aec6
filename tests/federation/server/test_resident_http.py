"""The resident endpoints behind the real JsonResource: routing, X-Matrix, rendering."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet import reactor
from twisted.trial import unittest

from matrixfed.events.room_versions import get_room_version
from matrixfed.federation.server.auth import RequestAuthenticator
from matrixfed.federation.server.directory import DirectoryQueries
from matrixfed.federation.server.membership import MembershipHandshakes
from matrixfed.federation.server.queries import ResidentQueries
from matrixfed.federation.server.resource import JsonResource
from tests.federation.server.helpers import FakeKeyRing, FakeRemoteServer, Listener
from tests.federation.server.resident import BOB, OURS, REMOTE, ResidentMixin, event_id_of, sign_as


def q(value: str) -> str:
    return quote(value, safe="")


class ResidentHttpTests(ResidentMixin, unittest.TestCase):
    async def serve(self) -> None:
        await self.make_engine()
        self.remote = FakeRemoteServer(REMOTE)
        request_keys = FakeKeyRing()
        request_keys.add(self.remote)
        resource = JsonResource(
            authenticator=RequestAuthenticator(
                server_name=OURS, keyring=request_keys, clock=reactor
            )
        )
        resource.add_endpoints(
            MembershipHandshakes(engine=self.engine).endpoints()
            + ResidentQueries(store=self.store, server_name=OURS, clock=self.clock).endpoints()
            + DirectoryQueries(store=self.store, server_name=OURS).endpoints()
        )
        self.listener = Listener(resource)
        await self.listener.start()
        self.addCleanup(self.listener.stop)

    async def signed(self, method: str, uri: str, content: Any = None) -> tuple[int, Any]:
        header = self.remote.auth_header(OURS, method, uri, content)
        return await self.listener.request(
            method, uri, json_body=content, headers={"Authorization": [header]}
        )

    async def test_join_over_http(self) -> None:
        await self.serve()
        room_id = await self.room("12", alias="#pairtest:a.example")
        code, body = await self.signed(
            "GET", "/_matrix/federation/v1/query/directory?room_alias=" + q("#pairtest:a.example")
        )
        self.assertEqual((code, body), (200, {"room_id": room_id, "servers": [OURS]}))
        # Synapse's ver list, unstable identifiers included.
        vers = "&".join(f"ver={v}" for v in [*map(str, range(1, 13)), "org.matrix.msc3757.10"])
        code, made = await self.signed(
            "GET", f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(BOB)}?{vers}"
        )
        self.assertEqual(code, 200, made)
        rv = get_room_version("12")
        pdu = sign_as(made["event"], rv, REMOTE)
        event_id = event_id_of(pdu, rv)
        code, joined = await self.signed(
            "PUT",
            f"/_matrix/federation/v2/send_join/{q(room_id)}/{q(event_id)}?omit_members=true",
            pdu,
        )
        self.assertEqual(code, 200, joined)
        self.assertTrue(joined["members_omitted"])
        self.assertEqual(joined["servers_in_room"], [OURS])
        code, ids = await self.signed(
            "GET", f"/_matrix/federation/v1/state_ids/{q(room_id)}?event_id={q(event_id)}"
        )
        self.assertEqual(code, 200, ids)
        self.assertNotIn(event_id, ids["pdu_ids"])

    async def test_errors_render_as_matrix_errors(self) -> None:
        await self.serve()
        room_id = await self.room("10")
        code, body = await self.signed(
            "GET", f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(BOB)}?ver=9"
        )
        self.assertEqual(code, 400)
        self.assertEqual(body["errcode"], "M_INCOMPATIBLE_ROOM_VERSION")
        self.assertEqual(body["room_version"], "10")
        # Unsigned requests never reach the handlers.
        code, body = await self.listener.request(
            "GET", f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(BOB)}?ver=10"
        )
        self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))
