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

from matrixfed.federation.client import federation_path
from matrixfed.joins.partial import MAX_PARTIAL_STATE_SERVERS, partial_state_servers
from matrixfed.storage import partial_state as partial_state_store
from matrixfed.storage.state_deltas import record_state_delta
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
        result = await _join(a, b, c, room_id, bob)
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

    async def test_member_events_about_others_wait_for_the_full_state(self) -> None:
        """Inviting carol, whose membership the partial state omits, is judged
        by the full state (she is joined: refused), not by her absence."""
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        held = HeldResync(b)
        token = await register(b, "bob")
        bob = b.user("bob")
        await _join(a, b, c, room_id, bob)
        await eventually(lambda: bool(held.asked), "the resync starts")
        invited: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(
            call(b, "POST", f"/rooms/{room_id}/invite", {"user_id": carol}, token=token)
        )
        via_state: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(
            call(
                b,
                "PUT",
                f"/rooms/{room_id}/state/m.room.member/{carol}",
                {"membership": "invite"},
                token=token,
            )
        )
        await deferLater(reactor, EARLY_ANSWER_GRACE_SECONDS)
        self.assertFalse(invited.called, "the invite was judged by the partial state")
        self.assertFalse(via_state.called, "the member event was judged by the partial state")
        held.release()
        for answer in (invited, via_state):
            code, body = await answer
            self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"), body)
        membership = await b.store.get_membership(room_id, carol)
        self.assertEqual(membership[0], "join")

    async def test_a_failed_completion_writes_nothing(self) -> None:
        """The completion is one transaction: when its last write fails, the
        room is still partial with its partial state groups, none of the
        fetched events is stored, and a later run completes it."""
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        held = HeldResync(b)
        bob = b.user("bob")
        result = await _join(a, b, c, room_id, bob)
        await eventually(lambda: bool(held.asked), "the resync starts")
        partial_before = await b.store.get_state_before(result.event_id)
        carol_member = (await a.store.get_current_state_ids(room_id))[("m.room.member", carol)]
        failures: list[str] = []

        def broken(*args: Any) -> None:
            failures.append(args[2])
            raise RuntimeError("disk full")

        self.patch(partial_state_store, "record_state_delta", broken)
        held.release()
        await eventually(lambda: len(failures) >= 2, "the completion fails (A, then C)")
        b.joiner.resync.stop()
        await eventually(lambda: b.joiner.resync.finished(room_id) is None, "the run ends")
        self.flushLoggedErrors(RuntimeError)
        self.assertTrue((await b.store.get_room(room_id)).partial_state)
        self.assertEqual(await b.store.get_state_before(result.event_id), partial_before)
        self.assertIsNone(await b.store.get_event(carol_member))
        self.assertIsNone(await b.store.get_membership(room_id, carol))
        self.assertIn(c.name, await b.store.get_partial_state_servers(room_id))

        self.patch(partial_state_store, "record_state_delta", record_state_delta)
        self.assertTrue(await b.joiner.resync.start(room_id, result.event_id, [a.name]))
        self.assertFalse((await b.store.get_room(room_id)).partial_state)
        self.assertEqual(await b.store.get_membership(room_id, carol), ("join", carol_member))
        self.assertEqual(
            (await b.store.get_state_before(result.event_id))[("m.room.member", carol)],
            carol_member,
        )

    async def test_members_answer_503_when_the_resync_is_not_running(self) -> None:
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        held = HeldResync(b)
        token = await register(b, "bob")
        bob = b.user("bob")
        await _join(a, b, c, room_id, bob)
        await eventually(lambda: bool(held.asked), "the resync starts")
        b.joiner.resync.stop()  # as at shutdown: the room stays partial
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
        result = await _join(a, b, c, room_id, bob)
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

    async def test_state_at_the_join_and_later_events_is_full_after_the_resync(self) -> None:
        """Other servers asking B for the state at B's join, or at an event B
        received while partial, get every member once the resync is done; and
        B judges new events against that full state."""
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        held = HeldResync(b)
        bob = b.user("bob")
        result = await _join(a, b, c, room_id, bob)
        await eventually(lambda: bool(held.asked), "the resync starts")
        during = await a.engine.send_event(
            room_id, type="m.room.message", sender=a.user("alice"), content={"body": "hi"}
        )
        await eventually(lambda: _has(b, during.event_id), "A's message reaches B")
        finished = b.joiner.resync.finished(room_id)
        held.release()
        self.assertTrue(await finished)

        members = {a.user("alice"), carol}
        for event_id in (result.event_id, during.event_id):
            answer = await c.engine.federation_client.get_json(
                b.name,
                federation_path("/_matrix/federation/v1/state_ids/{}", room_id),
                {"event_id": event_id},
            )
            events = await b.store.get_events(answer["pdu_ids"])
            joined = {
                e.state_key
                for e in events.values()
                if e.type == "m.room.member" and e.membership == "join"
            }
            want = members if event_id == result.event_id else {*members, bob}
            self.assertEqual(joined, want, event_id)
            self.assertEqual(
                await b.store.get_state_before(event_id),
                await a.store.get_state_before(event_id),
            )
        # carol was omitted from B's partial state: her message is judged
        # against the full state now, and accepted.
        from_c = await c.engine.send_event(
            room_id, type="m.room.message", sender=carol, content={"body": "hello B"}
        )
        await eventually(lambda: _has(b, from_c.event_id), "C's message is accepted by B")
        await eventually(lambda: _has(a, from_c.event_id), "C's message reaches A")
        self.assertEqual(
            await b.store.get_current_state_ids(room_id),
            await a.store.get_current_state_ids(room_id),
        )

    async def test_incremental_sync_from_a_partial_phase_token_lists_the_added_members(
        self,
    ) -> None:
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        held = HeldResync(b)
        token = await register(b, "bob")
        bob = b.user("bob")
        await _join(a, b, c, room_id, bob)
        await eventually(lambda: bool(held.asked), "the resync starts")
        code, first = await call(b, "GET", "/sync", token=token)
        self.assertEqual(code, 200, first)
        partial_members = {
            e["state_key"]
            for e in _state_and_timeline(first["rooms"]["join"][room_id])
            if e["type"] == "m.room.member"
        }
        self.assertNotIn(carol, partial_members)
        since = first["next_batch"]

        # A long poll from the partial-phase token is woken by the resync.
        polled: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(
            call(b, "GET", f"/sync?since={since}&timeout=30000", token=token)
        )
        await deferLater(reactor, EARLY_ANSWER_GRACE_SECONDS)
        self.assertFalse(polled.called, "the long poll returned before anything changed")
        held.release()
        code, body = await polled
        self.assertEqual(code, 200, body)
        room = body["rooms"]["join"][room_id]
        added = {
            e["state_key"]: e["content"]["membership"]
            for e in room["state"]["events"]
            if e["type"] == "m.room.member"
        }
        self.assertEqual(added, {a.user("alice"): "join", carol: "join"})
        self.assertEqual(room["summary"]["m.joined_member_count"], 3)

        # The same from the same token later, and nothing new after it.
        code, again = await call(b, "GET", f"/sync?since={since}", token=token)
        self.assertEqual(code, 200, again)
        self.assertEqual(
            {e["state_key"] for e in again["rooms"]["join"][room_id]["state"]["events"]},
            {a.user("alice"), carol},
        )
        code, after = await call(b, "GET", f"/sync?since={body['next_batch']}", token=token)
        self.assertEqual(code, 200, after)
        self.assertNotIn(room_id, after["rooms"]["join"])

    async def test_state_events_the_full_state_refuses_do_not_stay_current_state(self) -> None:
        """Two topics from dave, who had power but left before B joined, both
        citing his old join: one on top of B's join (rejected by the full state
        before it), one on top of an event from before his leave (allowed there,
        but not by the room's current state: soft-failed). Neither is the
        topic afterwards, nor a forward extremity, nor in the state after
        later events."""
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        alice, dave = a.user("alice"), a.user("dave")
        dave_join = await a.engine.send_event(
            room_id,
            type="m.room.member",
            sender=dave,
            state_key=dave,
            content={"membership": "join"},
        )
        levels = await a.store.get_event(
            await a.store.get_current_state_event_id(room_id, "m.room.power_levels", "")
        )
        content = dict(levels.content)
        content["users"] = {**content["users"], dave: 50}
        power = await a.engine.send_event(
            room_id, type="m.room.power_levels", sender=alice, state_key="", content=content
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
        result = await _join(a, b, c, room_id, bob)
        await eventually(lambda: bool(held.asked), "the resync starts")
        rv = await a.store.get_room_version(room_id)
        create_id = await a.store.get_current_state_event_id(room_id, "m.room.create", "")
        topic_before = await b.store.get_current_state_event_id(room_id, "m.room.topic", "")

        def forged_topic(topic: str, prev: str, depth: int) -> Any:
            return a.engine.sign(
                {
                    "room_id": room_id,
                    "type": "m.room.topic",
                    "state_key": "",
                    "sender": dave,
                    "content": {"topic": topic},
                    "prev_events": [prev],
                    "auth_events": [create_id, power.event_id, dave_join.event_id],
                    "depth": depth,
                    "origin_server_ts": 1_700_000_000_000,
                },
                rv,
            )

        on_join = forged_topic("after my leave", result.event_id, 1000)
        on_old = forged_topic("from the past", power.event_id, power.depth + 1)
        await b.engine.receive_pdu(a.name, dict(on_join.pdu))
        await b.engine.receive_pdu(a.name, dict(on_old.pdu))
        # Partial state: B knows nothing of dave's leave, the auth events decide.
        self.assertTrue(await _has(b, on_join.event_id))
        self.assertTrue(await _has(b, on_old.event_id))
        self.assertIn(
            await b.store.get_current_state_event_id(room_id, "m.room.topic", ""),
            (on_join.event_id, on_old.event_id),
        )

        finished = b.joiner.resync.finished(room_id)
        held.release()
        self.assertTrue(await finished)
        self.assertIn(on_join.event_id, await b.store.get_rejected([on_join.event_id]))
        status = (await b.store.get_event_statuses([on_old.event_id]))[on_old.event_id]
        self.assertTrue(status.soft_failed)
        self.assertIsNone(status.rejected_reason)
        self.assertEqual(
            await b.store.get_current_state_event_id(room_id, "m.room.topic", ""), topic_before
        )
        extremities = await b.store.get_forward_extremities(room_id)
        self.assertNotIn(on_join.event_id, extremities)
        self.assertNotIn(on_old.event_id, extremities)
        later = await b.engine.send_event(
            room_id, type="m.room.message", sender=bob, content={"body": "after"}
        )
        state = await b.store.get_state_before(later.event_id)
        self.assertNotIn(state.get(("m.room.topic", "")), (on_join.event_id, on_old.event_id))
        a_state = await a.store.get_current_state_ids(room_id)
        self.assertEqual(state.get(("m.room.member", dave)), a_state[("m.room.member", dave)])
        self.assertEqual(
            await b.store.get_current_state_ids(room_id),
            await a.store.get_current_state_ids(room_id),
        )
        await eventually(lambda: _has(a, later.event_id), "B's next message reaches A")
        await eventually(lambda: _has(c, later.event_id), "B's next message reaches C")

    async def test_a_fork_received_while_partial_is_resolved_over_the_full_state(
        self,
    ) -> None:
        """Two state events of alice's on top of B's join (a fork): after the
        resync the state after each is full, and the current state is the
        resolution of the two (both entries, every member). (Only B gets
        them: A did not make them, so B sends nothing on top of them.)"""
        a, b, c, room_id, carol = await self._room_with_a_member_on_c()
        alice = a.user("alice")
        held = HeldResync(b)
        bob = b.user("bob")
        result = await _join(a, b, c, room_id, bob)
        await eventually(lambda: bool(held.asked), "the resync starts")
        rv = await a.store.get_room_version(room_id)
        state = await a.store.get_current_state_ids(room_id)
        auth = [
            state[("m.room.create", "")],
            state[("m.room.power_levels", "")],
            state[("m.room.member", alice)],
        ]
        branches = [
            a.engine.sign(
                {
                    "room_id": room_id,
                    "type": etype,
                    "state_key": "",
                    "sender": alice,
                    "content": content,
                    "prev_events": [result.event_id],
                    "auth_events": auth,
                    "depth": 1000,
                    "origin_server_ts": 1_700_000_000_000 + i,
                },
                rv,
            )
            for i, (etype, content) in enumerate(
                [("m.room.topic", {"topic": "forked"}), ("m.room.avatar", {"url": "mxc://x/y"})]
            )
        ]
        for branch in branches:
            await b.engine.receive_pdu(a.name, dict(branch.pdu))
        self.assertEqual(
            set(await b.store.get_forward_extremities(room_id)),
            {e.event_id for e in branches},
        )
        finished = b.joiner.resync.finished(room_id)
        held.release()
        self.assertTrue(await finished)
        current = await b.store.get_current_state_ids(room_id)
        self.assertEqual(current[("m.room.topic", "")], branches[0].event_id)
        self.assertEqual(current[("m.room.avatar", "")], branches[1].event_id)
        self.assertEqual(current[("m.room.member", carol)], state[("m.room.member", carol)])
        self.assertEqual(current[("m.room.member", bob)], result.event_id)
        for branch in branches:
            self.assertEqual(
                (await b.store.get_state_after(branch.event_id))[("m.room.member", carol)],
                state[("m.room.member", carol)],
            )
        self.assertEqual(current, {**state, **{(e.type, ""): e.event_id for e in branches}})


class PartialStateJoinPostgresTests(PartialStateJoinTests):
    postgres = True


class PartialStateServersTests(unittest.TestCase):
    def test_resident_first_valid_names_ourselves_left_out_bounded(self) -> None:
        named = ["b.example", "not a name", "ours.example", "c.example:8448", "b.example"]
        self.assertEqual(
            partial_state_servers("a.example", named, "ours.example"),
            ["a.example", "b.example", "c.example:8448"],
        )
        many = [f"s{i}.example" for i in range(MAX_PARTIAL_STATE_SERVERS + 10)]
        bounded = partial_state_servers("a.example", many, "ours.example")
        self.assertEqual(len(bounded), MAX_PARTIAL_STATE_SERVERS)
        self.assertEqual(bounded[:2], ["a.example", "s0.example"])


async def _join(
    a: ServerHandle, b: ServerHandle, c: ServerHandle, room_id: str, user_id: str
) -> Any:
    """B's user joins through A; returns once C (A forwards it) has the join
    too, so no server is still busy with it when the test ends."""
    result = await b.joiner.join(room_id, user_id, servers=[a.name])
    await eventually(lambda: _has(c, result.event_id), "B's join reaches C")
    return result


def _state_and_timeline(room: Any) -> list[Any]:
    return [*room["state"]["events"], *room["timeline"]["events"]]


async def _has(server: ServerHandle, event_id: str) -> bool:
    """``server`` stored ``event_id`` and accepted it."""
    if await server.store.get_event(event_id) is None:
        return False
    return not await server.store.get_rejected([event_id])
