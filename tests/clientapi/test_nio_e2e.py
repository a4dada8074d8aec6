"""End to end with a real Matrix client library: matrix-nio against two matrixfed processes.

Two ``twistd -n matrixfed`` servers on 127.0.0.1 talk federation over real TLS
(certificates from one test CA). With matrix-nio's AsyncClient: alice
registers and logs in on server A and creates a room with an alias; bob
registers on server B and joins through the alias (a federation directory
query, make_join and send_join to A); both send a message and both see both
messages through /sync.

nio runs on its own asyncio loop in a worker thread; the servers are separate
processes stopped by PID in cleanup.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.clientapi.procs import MatrixfedProcess
from tests.federation.fakes import TestCA

try:
    import nio
except ImportError:  # pragma: no cover - the test extra installs it
    nio = None

# Upper bound for both users to see both messages (federation, long polls).
SEE_BOTH_BUDGET_S = 60.0
# Long-poll length of each nio /sync.
SYNC_TIMEOUT_MS = 2000


async def _register_and_login(url: str, localpart: str, password: str) -> Any:
    registering = nio.AsyncClient(url)
    try:
        registered = await registering.register(localpart, password, "registering")
        assert isinstance(registered, nio.RegisterResponse), registered
    finally:
        await registering.close()
    client = nio.AsyncClient(url, localpart)
    login = await client.login(password, device_name="nio test")
    assert isinstance(login, nio.LoginResponse), login
    return client


def _bodies(response: Any, room_id: str, seen: set[str]) -> None:
    room = response.rooms.join.get(room_id)
    if room is None:
        return
    for event in room.timeline.events:
        if isinstance(event, nio.RoomMessageText):
            seen.add(event.body)


async def _scenario(a_url: str, b_url: str, a_name: str) -> dict[str, Any]:
    alice = await _register_and_login(a_url, "alice", "alice-password")
    bob = await _register_and_login(b_url, "bob", "bob-password")
    try:
        created = await alice.room_create(
            visibility=nio.RoomVisibility.public,
            alias="lobby",
            name="Lobby",
            preset=nio.RoomPreset.public_chat,
        )
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id

        joined = await bob.join(f"#lobby:{a_name}")
        assert isinstance(joined, nio.JoinResponse), joined
        assert joined.room_id == room_id

        for client, text in ((alice, "hello from alice"), (bob, "hello from bob")):
            sent = await client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": text}
            )
            assert isinstance(sent, nio.RoomSendResponse), sent

        seen: dict[str, set[str]] = {"alice": set(), "bob": set()}
        tokens: dict[str, str | None] = {"alice": None, "bob": None}
        want = {"hello from alice", "hello from bob"}
        deadline = time.monotonic() + SEE_BOTH_BUDGET_S
        while time.monotonic() < deadline and not all(s >= want for s in seen.values()):
            for who, client in (("alice", alice), ("bob", bob)):
                if seen[who] >= want:
                    continue
                response = await client.sync(timeout=SYNC_TIMEOUT_MS, since=tokens[who])
                assert isinstance(response, nio.SyncResponse), response
                tokens[who] = response.next_batch
                _bodies(response, room_id, seen[who])
        return {"room_id": room_id, "seen": seen}
    finally:
        await alice.close()
        await bob.close()


class NioEndToEndTests(unittest.TestCase):
    timeout = 300

    async def test_two_servers_two_users_see_each_others_messages(self) -> None:
        if nio is None:
            raise unittest.SkipTest("matrix-nio is not installed (pip install .[test])")
        ca = TestCA()
        base = os.path.abspath(self.mktemp())
        servers = [MatrixfedProcess(os.path.join(base, n), ca) for n in ("a", "b")]
        for server in servers:
            self.addCleanup(server.stop)
        await deferToThread(servers[0].start)
        await deferToThread(servers[1].start)
        a, b = servers

        try:
            result = await deferToThread(
                lambda: asyncio.run(_scenario(a.client_url, b.client_url, a.server_name))
            )
        except BaseException:
            print("--- server A log ---\n" + a.log_tail())
            print("--- server B log ---\n" + b.log_tail())
            raise
        want = {"hello from alice", "hello from bob"}
        self.assertEqual(result["seen"]["alice"], want, a.log_tail())
        self.assertEqual(result["seen"]["bob"], want, b.log_tail())
