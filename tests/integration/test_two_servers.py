"""Two or three real matrixfed servers on loopback with real TLS (issue 4, "Done when").

A user of server B joins a room hosted on A (room versions 1, 6, 10, 11, 12)
through the join coordinator (make_join/send_join), messages then flow both
ways through /send; a leave, an invite and a knock complete; a restricted room
admits only a member of the allowed room; a transaction whose answer the
sender never saw (it stopped first) is resent after the restart and taken
once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from matrixfed.events.model import Event
from matrixfed.federation.client import federation_path
from matrixfed.joins.template import build_membership_event, room_version_of_template
from tests.harness.servers import ServerHandle, TestNetwork, eventually

VERSIONS = ("1", "6", "10", "11", "12")
KNOCK_VERSION = "10"  # knocking needs v7+, restricted rooms v8+
V1 = "/_matrix/federation/v1"


async def has_event(server: ServerHandle, event_id: str) -> bool:
    """The server stored the event and accepted it."""
    if await server.store.get_event(event_id) is None:
        return False
    return not await server.store.get_rejected([event_id])


async def membership(server: ServerHandle, room_id: str, user_id: str) -> str | None:
    found = await server.store.get_membership(room_id, user_id)
    return None if found is None else str(found[0])


async def wait_membership(server: ServerHandle, room_id: str, user_id: str, want: str) -> None:
    async def check() -> bool:
        return await membership(server, room_id, user_id) == want

    await eventually(check, f"{user_id} {want} on {server.name}")


async def join(server: ServerHandle, room_id: str, user_id: str, via: ServerHandle) -> Any:
    """Join through ``via`` with ``server``'s join coordinator, and wait for the
    background completion of a partial-state join (the full member list)."""
    result = await server.joiner.join(room_id, user_id, servers=[via.name])
    finished = server.joiner.resync.finished(room_id)
    if finished is not None:
        await finished
    return result


async def send_text(server: ServerHandle, room_id: str, sender: str, body: str) -> Event:
    event: Event = await server.engine.send_event(
        room_id, type="m.room.message", sender=sender, content={"body": body}
    )
    return event


class _JoinAndTalk:
    version: str
    # The resident server's database engine (B always uses SQLite).
    postgres = False

    async def test_remote_user_joins_then_messages_flow_both_ways(self) -> None:
        case: Any = self
        net = TestNetwork(case)
        a = await net.start_server(postgres=self.postgres)
        b = await net.start_server()
        alice, bob = a.user("alice"), b.user("bob")
        room_id = await a.engine.create_room(
            alice, preset="public_chat", room_version=self.version, name="lobby"
        )

        result = await join(b, room_id, bob, a)
        case.assertEqual((result.room_id, result.server), (room_id, a.name))
        case.assertEqual(await membership(a, room_id, bob), "join")
        case.assertEqual(await membership(b, room_id, bob), "join")
        case.assertEqual(await membership(b, room_id, alice), "join")

        from_a = await send_text(a, room_id, alice, "hello from A")
        await eventually(lambda: has_event(b, from_a.event_id), "A's message on B")
        from_b = await send_text(b, room_id, bob, "hello from B")
        await eventually(lambda: has_event(a, from_b.event_id), "B's message on A")
        # Both timelines end with B's message, and agree on the room's state.
        await eventually(
            lambda: _same_extremities(a, b, room_id, from_b.event_id), "timelines converge"
        )
        case.assertEqual(
            await a.store.get_current_state_ids(room_id),
            await b.store.get_current_state_ids(room_id),
        )


async def _same_extremities(a: ServerHandle, b: ServerHandle, room_id: str, tip: str) -> bool:
    ends_a = await a.store.get_forward_extremities(room_id)
    ends_b = await b.store.get_forward_extremities(room_id)
    return bool(ends_a == ends_b == [tip])


for _version in VERSIONS:
    _name = f"JoinAndTalkV{_version}"
    globals()[_name] = type(
        _name, (_JoinAndTalk, unittest.TestCase), {"version": _version, "__module__": __name__}
    )
del _version, _name


class JoinAndTalkPostgresV12(_JoinAndTalk, unittest.TestCase):
    """The same with the resident server on PostgreSQL."""

    version = "12"
    postgres = True


class MembershipTests(unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.net = TestNetwork(self)
        self.a = await self.net.start_server()
        self.b = await self.net.start_server()
        self.alice, self.bob = self.a.user("alice"), self.b.user("bob")

    async def test_leave_reaches_the_resident_server(self) -> None:
        room_id = await self.a.engine.create_room(self.alice, preset="public_chat")
        await join(self.b, room_id, self.bob, self.a)
        await self.b.joiner.leave(room_id, self.bob)
        await wait_membership(self.a, room_id, self.bob, "leave")
        # B left: A no longer sends it the room's events.
        self.assertNotIn(self.b.name, await self.a.store.get_joined_servers(room_id))

    async def test_invite_then_join(self) -> None:
        room_id = await self.a.engine.create_room(self.alice, preset="private_chat")
        await self.a.engine.send_event(
            room_id,
            type="m.room.member",
            sender=self.alice,
            state_key=self.bob,
            content={"membership": "invite"},
        )
        invites = await self.b.store.get_invites_for_user(self.bob)
        self.assertEqual([i.room_id for i in invites], [room_id])
        self.assertEqual(await membership(self.a, room_id, self.bob), "invite")
        await join(self.b, room_id, self.bob, self.a)
        self.assertEqual(await membership(self.a, room_id, self.bob), "join")

    async def test_uninvited_user_cannot_join_a_private_room(self) -> None:
        room_id = await self.a.engine.create_room(self.alice, preset="private_chat")
        with self.assertRaises(Exception) as cm:
            await join(self.b, room_id, self.bob, self.a)
        self.assertEqual(getattr(cm.exception, "code", None), 403)
        self.assertIsNone(await membership(self.a, room_id, self.bob))

    async def test_knock_then_invite_then_join(self) -> None:
        room_id = await self.a.engine.create_room(
            self.alice,
            preset="private_chat",
            room_version=KNOCK_VERSION,
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ],
        )
        knock = await self._knock(room_id)
        self.assertEqual(await membership(self.a, room_id, self.bob), "knock")
        self.assertTrue(await has_event(self.a, knock.event_id))
        await self.a.engine.send_event(
            room_id,
            type="m.room.member",
            sender=self.alice,
            state_key=self.bob,
            content={"membership": "invite"},
        )
        await join(self.b, room_id, self.bob, self.a)
        self.assertEqual(await membership(self.a, room_id, self.bob), "join")

    async def _knock(self, room_id: str) -> Event:
        client = self.b.service.federation_client
        answer = await client.get_json(
            self.a.name,
            federation_path(V1 + "/make_knock/{}/{}", room_id, self.bob),
            {"ver": [KNOCK_VERSION]},
        )
        rv = room_version_of_template(answer, (KNOCK_VERSION,))
        event = build_membership_event(
            answer,
            room_id=room_id,
            user_id=self.bob,
            membership="knock",
            room_version=rv,
            server_name=self.b.name,
            signing_key=self.b.service.signing_keys.primary,
            now_ms=int(self.b.service.reactor.seconds() * 1000),
        )
        reply = await client.put_json(
            self.a.name,
            federation_path(V1 + "/send_knock/{}/{}", room_id, event.event_id),
            event.pdu,
        )
        self.assertIn("knock_room_state", reply)
        return event


class RestrictedRoomTests(unittest.TestCase):
    async def test_only_members_of_the_allowed_room_get_in(self) -> None:
        net = TestNetwork(self)
        a = await net.start_server()
        b = await net.start_server()
        c = await net.start_server()
        alice, bob, carol = a.user("alice"), b.user("bob"), c.user("carol")
        allowed = await a.engine.create_room(alice, preset="public_chat", room_version="10")
        restricted = await a.engine.create_room(
            alice,
            preset="private_chat",
            room_version="10",
            initial_state=[
                {
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": allowed}],
                    },
                }
            ],
        )
        await join(b, allowed, bob, a)
        await join(b, restricted, bob, a)
        self.assertEqual(await membership(a, restricted, bob), "join")
        join_id = (await a.store.get_membership(restricted, bob))[1]
        join_event = await a.store.get_event(join_id)
        self.assertEqual(join_event.content.get("join_authorised_via_users_server"), alice)

        with self.assertRaises(Exception) as cm:
            await join(c, restricted, carol, a)
        self.assertEqual(getattr(cm.exception, "code", None), 403)
        self.assertIsNone(await membership(a, restricted, carol))


class _CrashAfterSending:
    """Wraps a federation client: the request reaches the receiver, then the
    "process" freezes before it sees the answer (until stopped)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.delivered: list[str] = []

    async def put_json(self, destination: str, path: str, data: Any, *a: Any, **kw: Any) -> Any:
        await self._client.put_json(destination, path, data, *a, **kw)
        self.delivered.append(path)
        never: Deferred[Any] = Deferred()
        return await never


class SenderCrashTests(unittest.TestCase):
    # The sending server's database engine.
    postgres = False

    async def test_transaction_retried_after_a_sender_crash_is_taken_once(self) -> None:
        net = TestNetwork(self)
        a = await net.start_server(postgres=self.postgres)
        b = await net.start_server()
        alice, bob = a.user("alice"), b.user("bob")
        room_id = await a.engine.create_room(alice, preset="public_chat", room_version="12")
        await join(b, room_id, bob, a)

        crashing = _CrashAfterSending(a.sender._client)
        a.sender._client = crashing
        event = await send_text(a, room_id, alice, "exactly once")
        await eventually(lambda: bool(crashing.delivered), "transaction delivered")
        await eventually(lambda: has_event(b, event.event_id), "event on B")
        b_ordering = await b.store.get_current_stream_ordering()

        # A dies with the transaction unacknowledged; after the restart its sender
        # resends it (same txn ID) and B answers from its transaction cache.
        a = await net.restart(a)

        async def drained() -> bool:
            return await a.sender._queue.count_queued(b.name) == 0

        await eventually(drained, "A's queue for B drained")
        self.assertEqual(await b.store.get_current_stream_ordering(), b_ordering)
        self.assertTrue(await has_event(b, event.event_id))
        # And the room goes on.
        after = await send_text(a, room_id, alice, "after the restart")
        await eventually(lambda: has_event(b, after.event_id), "next message on B")


class SenderCrashPostgresTests(SenderCrashTests):
    """The same with the sending server on PostgreSQL."""

    postgres = True
