"""Partial-state joins seen from the rest of the server, with three real servers.

A hosts the room; C's user joined it earlier; B joins with partial state, so
the send_join answer omits C's member event. Until B's background resync has
fetched the full state, B must still send its events to C (from the answer's
``servers_in_room``), and B's client API must not serve the partial member
list. The resync is held at its first request (``/state_ids``) so the partial
window is as long as the test needs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from matrixfed.joins.partial import _without_rejected
from tests.clientapi.test_federation import call, register
from tests.harness.servers import ServerHandle, TestNetwork, eventually, reactor

# Real reactor time a held request is given to (wrongly) answer early; the
# assertion is that it did not, so a slow machine cannot make it fail.
EARLY_ANSWER_GRACE_SECONDS = 0.3


class HeldResync:
    """Holds B's resync at ``/state_ids`` until ``release()``."""

    def __init__(self, server: ServerHandle) -> None:
        self.fed = server.joiner.resync._fed
        self.original = self.fed.get_state_ids
        self.gate: Deferred[None] = Deferred()
        self.asked: list[str] = []
        self.fed.get_state_ids = self.get_state_ids

    async def get_state_ids(self, server: str, room_id: str, event_id: str) -> Any:
        self.asked.append(server)
        await self.gate
        return await self.original(server, room_id, event_id)

    def release(self) -> None:
        self.gate.callback(None)


class PartialStateJoinTests(unittest.TestCase):
    timeout = 60
    # B (the joining server) on PostgreSQL (subclass below).
    postgres = False

    async def _room_with_a_member_on_c(
        self,
    ) -> tuple[ServerHandle, ServerHandle, ServerHandle, str, str]:
        net = TestNetwork(self)
        a = await net.start_server()
        c = await net.start_server()
        b = await net.start_server(
            postgres=self.postgres, join_partial_state=True, enable_registration=True
        )
        alice, carol = a.user("alice"), c.user("carol")
        # A named room has no heroes: the partial state keeps no member but ours.
        room_id = await a.engine.create_room(
            alice, preset="public_chat", room_version="11", name="partial"
        )
        await c.joiner.join(room_id, carol, servers=[a.name])
        return a, b, c, room_id, carol

    async def test_events_reach_omitted_servers_and_members_wait_for_resync(self) -> None:
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        held = HeldResync(b)
        token = await register(b, "bob")
        bob = b.user("bob")
        result = await b.joiner.join(room_id, bob, servers=[a.name])
        self.assertTrue(result.partial_state)
        await eventually(lambda: bool(held.asked), "the resync starts")

        # Partial state: C's member was omitted, so only the send_join
        # answer says C is in the room.
        self.assertIsNone(await b.store.get_membership(room_id, carol))
        self.assertNotIn(c.name, await b.store.get_joined_servers(room_id))
        self.assertIn(c.name, await b.store.get_partial_state_servers(room_id))

        sent = await b.engine.send_event(
            room_id, type="m.room.message", sender=bob, content={"body": "hello C"}
        )
        await eventually(lambda: _has(c, sent.event_id), "B's message reaches C")

        members: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(
            call(b, "GET", f"/rooms/{room_id}/members", token=token)
        )
        joined: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(
            call(b, "GET", f"/rooms/{room_id}/joined_members", token=token)
        )
        await deferLater(reactor, EARLY_ANSWER_GRACE_SECONDS)
        self.assertFalse(members.called, "members answered from the partial state")
        self.assertFalse(joined.called, "joined_members answered from the partial state")

        held.release()
        code, body = await members
        self.assertEqual(code, 200, body)
        users = {e["state_key"] for e in body["chunk"] if e["content"]["membership"] == "join"}
        self.assertEqual(users, {a.user("alice"), carol, bob})
        code, body = await joined
        self.assertEqual((code, set(body["joined"])), (200, {a.user("alice"), carol, bob}))

        info = await b.store.get_room(room_id)
        self.assertFalse(info.partial_state)
        # The answer's list was only for the partial window.
        self.assertEqual(await b.store.get_partial_state_servers(room_id), set())
        later = await b.engine.send_event(
            room_id, type="m.room.message", sender=bob, content={"body": "still there?"}
        )
        await eventually(lambda: _has(c, later.event_id), "B's next message reaches C")

    async def test_members_answer_503_when_the_resync_is_not_running(self) -> None:
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        held = HeldResync(b)
        token = await register(b, "bob")
        bob = b.user("bob")
        await b.joiner.join(room_id, bob, servers=[a.name])
        await eventually(lambda: bool(held.asked), "the resync starts")
        b.joiner.resync.stop()  # as after giving up: the room stays partial
        code, body = await call(b, "GET", f"/rooms/{room_id}/members", token=token)
        self.assertEqual((code, body["errcode"]), (503, "M_UNKNOWN"), body)
        self.assertIn("retry_after_ms", body)
        held.release()

    async def test_events_received_while_partial_are_rechecked_after_the_resync(self) -> None:
        """A message from a user who had left, citing their old join as auth
        event, passes the partial-state checks and is rejected after the resync."""
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        dave = a.user("dave")
        dave_join = await a.engine.send_event(
            room_id,
            type="m.room.member",
            sender=dave,
            state_key=dave,
            content={"membership": "join"},
        )
        await a.engine.send_event(
            room_id,
            type="m.room.member",
            sender=dave,
            state_key=dave,
            content={"membership": "leave"},
        )
        held = HeldResync(b)
        bob = b.user("bob")
        result = await b.joiner.join(room_id, bob, servers=[a.name])
        await eventually(lambda: bool(held.asked), "the resync starts")

        state = await a.store.get_current_state_ids(room_id)
        rv = await a.store.get_room_version(room_id)
        forged = a.engine.sign(
            {
                "room_id": room_id,
                "type": "m.room.message",
                "sender": dave,
                "content": {"body": "I left, yet here I am"},
                "prev_events": [result.event_id],
                "auth_events": [
                    state[("m.room.create", "")],
                    state[("m.room.power_levels", "")],
                    dave_join.event_id,
                ],
                "depth": 1000,
                "origin_server_ts": 1_700_000_000_000,
            },
            rv,
        )
        honest = await a.engine.send_event(
            room_id, type="m.room.message", sender=a.user("alice"), content={"body": "hi"}
        )
        await eventually(lambda: _has(b, honest.event_id), "A's message reaches B")
        await b.engine.receive_pdu(a.name, dict(forged.pdu))
        # Partial state: B knows nothing of dave's leave, the auth events decide.
        self.assertTrue(await _has(b, forged.event_id))

        finished = b.joiner.resync.finished(room_id)
        held.release()
        self.assertTrue(await finished)
        self.assertIn(forged.event_id, await b.store.get_rejected([forged.event_id]))
        self.assertTrue(await _has(b, honest.event_id))
        self.assertNotIn(forged.event_id, await b.store.get_forward_extremities(room_id))
        later = await b.engine.send_event(
            room_id, type="m.room.message", sender=bob, content={"body": "after"}
        )
        self.assertNotIn(forged.event_id, later.prev_event_ids)
        await eventually(lambda: _has(a, later.event_id), "B's next message reaches A")


class PartialStateJoinPostgresTests(PartialStateJoinTests):
    postgres = True


class WithoutRejectedTests(unittest.TestCase):
    def test_rejected_entries_fall_back_to_what_they_overwrote(self) -> None:
        state = {("t", "a"): "$r2", ("t", "b"): "$ok", ("t", "c"): "$r3"}
        # $r2 overwrote $r1, itself rejected over $good; $r3 created its key.
        replaced: dict[str, str | None] = {"$r2": "$r1", "$r1": "$good", "$r3": None}
        self.assertEqual(
            _without_rejected(state, replaced), {("t", "a"): "$good", ("t", "b"): "$ok"}
        )


async def _has(server: ServerHandle, event_id: str) -> bool:
    """``server`` stored ``event_id`` and accepted it."""
    if await server.store.get_event(event_id) is None:
        return False
    return not await server.store.get_rejected([event_id])
