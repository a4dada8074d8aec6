"""Two in-process matrixfed servers over real TLS, driven through their client APIs.

Covers what needs a second server: joining through an alias on another
server, history before the join backfilled for /messages, a remote invite
countersigned by the invitee's server and shown in the invitee's /sync, and a
message from the other server waking a /sync long poll.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import treq
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.harness.servers import ServerHandle, TestNetwork, eventually


async def call(
    server: ServerHandle, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": [f"Bearer {token}"]} if token else {}
    data = None if body is None else json.dumps(body).encode()
    resp = await treq.request(
        method,
        server.client_url + "/_matrix/client/v3" + path,
        data=data,
        headers=headers,
        persistent=False,
    )
    raw = await treq.content(resp)
    return resp.code, json.loads(raw) if raw else None


async def register(server: ServerHandle, localpart: str) -> str:
    code, body = await call(
        server,
        "POST",
        "/register",
        {"username": localpart, "password": "pw", "auth": {"type": "m.login.dummy"}},
    )
    assert code == 200, body
    token: str = body["access_token"]
    return token


class TwoServerTests(unittest.TestCase):
    # Under the 60 s long poll above: a missed wake-up fails instead of passing late.
    timeout = 50

    async def _setup(self) -> tuple[ServerHandle, ServerHandle, str, str]:
        net = TestNetwork(self)
        a = await net.start_server(enable_registration=True)
        b = await net.start_server(enable_registration=True)
        return a, b, await register(a, "alice"), await register(b, "bob")

    async def test_join_by_remote_alias_and_backfill_history(self) -> None:
        a, b, alice, bob = await self._setup()
        code, created = await call(
            a, "POST", "/createRoom", {"preset": "public_chat", "room_alias_name": "hist"}, alice
        )
        room_id = created["room_id"]
        for i in range(12):
            await call(
                a, "PUT", f"/rooms/{room_id}/send/m.room.message/{i}", {"body": f"m{i}"}, alice
            )
        code, alias = await call(b, "GET", "/directory/room/" + quote(f"#hist:{a.name}"))
        self.assertEqual((code, alias["room_id"]), (200, room_id))
        code, joined = await call(b, "POST", "/join/" + quote(f"#hist:{a.name}"), {}, bob)
        self.assertEqual((code, joined), (200, {"room_id": room_id}))

        code, page = await call(b, "GET", f"/rooms/{room_id}/messages?dir=b&limit=30", token=bob)
        self.assertEqual(code, 200, page)
        bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
        self.assertEqual(bodies, [f"m{i}" for i in reversed(range(12))])
        self.assertEqual(page["chunk"][0]["type"], "m.room.member")
        self.assertEqual(page["chunk"][-1]["type"], "m.room.create")

    async def test_remote_invite_shows_in_sync_and_can_be_accepted(self) -> None:
        a, b, alice, bob = await self._setup()
        code, created = await call(a, "POST", "/createRoom", {"name": "Private"}, alice)
        room_id = created["room_id"]
        _, first = await call(b, "GET", "/sync", token=bob)
        # A long poll, woken by the invite arriving over federation.
        poll: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(
            call(b, "GET", f"/sync?since={first['next_batch']}&timeout=60000", token=bob)
        )
        code, body = await call(
            a, "POST", f"/rooms/{room_id}/invite", {"user_id": b.user("bob")}, alice
        )
        self.assertEqual(code, 200, body)
        _, sync = await poll
        invite_state = sync["rooms"]["invite"][room_id]["invite_state"]["events"]
        self.assertIn("Private", [e["content"].get("name") for e in invite_state])
        code, body = await call(b, "POST", f"/rooms/{room_id}/join", {}, bob)
        self.assertEqual((code, body), (200, {"room_id": room_id}), body)
        _, after = await call(b, "GET", f"/sync?since={sync['next_batch']}", token=bob)
        self.assertIn(room_id, after["rooms"]["join"])
        self.assertNotIn(room_id, after["rooms"]["invite"])

    async def test_message_from_other_server_wakes_long_poll(self) -> None:
        a, b, alice, bob = await self._setup()
        _, created = await call(a, "POST", "/createRoom", {"preset": "public_chat"}, alice)
        room_id = created["room_id"]
        code, _ = await call(b, "POST", f"/join/{quote(room_id)}?via={a.name}", {}, bob)
        self.assertEqual(code, 200)
        await eventually(lambda: a.store.is_host_joined(room_id, b.name), "A sees B joined")
        _, first = await call(b, "GET", "/sync", token=bob)
        poll: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(
            call(b, "GET", f"/sync?since={first['next_batch']}&timeout=20000", token=bob)
        )
        await call(a, "PUT", f"/rooms/{room_id}/send/m.room.message/1", {"body": "ping"}, alice)
        code, woke = await poll
        events = woke["rooms"]["join"][room_id]["timeline"]["events"]
        self.assertEqual([e["content"].get("body") for e in events], ["ping"])

    async def test_remote_invite_can_be_rejected(self) -> None:
        a, b, alice, bob = await self._setup()
        _, created = await call(a, "POST", "/createRoom", {}, alice)
        room_id = created["room_id"]
        await call(a, "POST", f"/rooms/{room_id}/invite", {"user_id": b.user("bob")}, alice)
        code, body = await call(b, "POST", f"/rooms/{room_id}/leave", {}, bob)
        self.assertEqual(code, 200, body)
        _, sync = await call(b, "GET", "/sync", token=bob)
        self.assertNotIn(room_id, sync["rooms"]["invite"])
        await eventually(
            lambda: _membership_is(a, room_id, b.user("bob"), "leave"), "A sees the rejection"
        )


async def _membership_is(server: ServerHandle, room_id: str, user_id: str, want: str) -> bool:
    got = await server.store.get_membership(room_id, user_id)
    return got is not None and got[0] == want
