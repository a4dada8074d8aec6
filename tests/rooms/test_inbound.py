"""Remote events through the receipt checks: accepted, rejected, soft-failed,
gaps filled from the origin, forks resolved, membership handshakes."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.errors import AuthError, InvalidEventError, MatrixError, SignatureError
from matrixfed.events.model import Event
from matrixfed.rooms.engine import RoomEngine
from matrixfed.storage import persist as persist_module
from matrixfed.storage.store import Store
from tests.rooms.helpers import (
    ALICE,
    BOB,
    CAROL,
    FakeFederation,
    RecordingSender,
    make_engine,
    remote_event,
    sign_as,
)
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin

VERSIONS = ("1", "6", "10", "11", "12")


@contextlib.contextmanager
def _no_error() -> Iterator[None]:
    yield


class InboundTestsMixin(DatabaseMixin):
    async def _room(
        self, version: str = "10", *, preset: str = "public_chat", **kw: Any
    ) -> tuple[RoomEngine, Store, str, FakeFederation]:
        """A room of ours that BOB (b.example) joined."""
        store = await self.make_store()
        fed = FakeFederation()
        engine = make_engine(store, federation=fed, **kw)
        room_id = await engine.create_room(ALICE, room_version=version, preset=preset)
        join = await remote_event(
            engine,
            room_id,
            type="m.room.member",
            sender=BOB,
            content={"membership": "join"},
            state_key=BOB,
        )
        await engine.receive_membership_event(
            "b.example",
            join.pdu,
            room_id=room_id,
            expected_membership="join",
            event_id=join.event_id,
        )
        return engine, store, room_id, fed

    async def _timeline_ids(self, store: Store, room_id: str) -> list[str]:
        return [e.event_id for _, e in await store.get_room_events_stream(room_id, from_ordering=0)]

    async def test_join_then_message_every_version(self) -> None:
        for version in VERSIONS:
            engine, store, room_id, _ = await self._room(version)
            self.assertEqual(
                await store.get_membership(room_id, BOB),
                ("join", await store.get_current_state_event_id(room_id, "m.room.member", BOB)),
            )
            msg = await remote_event(
                engine, room_id, type="m.room.message", sender=BOB, content={"body": "hello"}
            )
            got = await engine.receive_pdu("b.example", copy.deepcopy(msg.pdu))
            self.assertEqual(got.event_id, msg.event_id)
            self.assertEqual((await self._timeline_ids(store, room_id))[-1], msg.event_id)
            self.assertEqual(await store.get_forward_extremities(room_id), [msg.event_id])
            # The same PDU again changes nothing.
            before = await store.get_current_stream_ordering()
            await engine.receive_pdu("b.example", copy.deepcopy(msg.pdu))
            self.assertEqual(await store.get_current_stream_ordering(), before)

    async def test_join_fanned_out_to_others_not_origin(self) -> None:
        sender = RecordingSender()
        engine, store, room_id, _ = await self._room("10", sender=sender)
        join_c = await remote_event(
            engine,
            room_id,
            type="m.room.member",
            sender=CAROL,
            content={"membership": "join"},
            state_key=CAROL,
        )
        event, before = await engine.receive_membership_event(
            "c.example", join_c.pdu, room_id=room_id, expected_membership="join"
        )
        self.assertEqual(sender.sent[-1], (event, ["b.example"]))
        self.assertNotIn(("m.room.member", CAROL), before)
        self.assertIn(("m.room.member", BOB), before)
        local = await engine.send_event(
            room_id, type="m.room.message", sender=ALICE, content={"body": "hi all"}
        )
        self.assertEqual(sender.sent[-1], (local, ["b.example", "c.example"]))
        leave = await remote_event(
            engine,
            room_id,
            type="m.room.member",
            sender=BOB,
            content={"membership": "leave"},
            state_key=BOB,
        )
        await engine.receive_membership_event(
            "b.example", leave.pdu, room_id=room_id, expected_membership="leave"
        )
        self.assertEqual(sender.sent[-1][1], ["c.example"])
        after = await engine.send_event(
            room_id, type="m.room.message", sender=ALICE, content={"body": "bob left"}
        )
        self.assertEqual(sender.sent[-1], (after, ["c.example"]))

    async def test_membership_handshake_refusals_store_nothing(self) -> None:
        engine, store, room_id, _ = await self._room("10")
        await engine.send_event(
            room_id,
            type="m.room.join_rules",
            sender=ALICE,
            content={"join_rule": "invite"},
            state_key="",
        )
        position = await store.get_current_stream_ordering()
        join_c = await remote_event(
            engine,
            room_id,
            type="m.room.member",
            sender=CAROL,
            content={"membership": "join"},
            state_key=CAROL,
        )
        cases = [
            # invite-only room: the rules refuse the join
            ("c.example", join_c.pdu, "join", 403),
            # a join presented as a leave
            ("c.example", join_c.pdu, "leave", 400),
            # submitted by another server than the sender's
            ("b.example", join_c.pdu, "join", 403),
        ]
        tampered = copy.deepcopy(join_c.pdu)
        tampered["signatures"]["c.example"]["ed25519:k1"] = "A" * 86
        cases.append(("c.example", tampered, "join", 403))
        for origin, pdu, membership, code in cases:
            with self.assertRaises(MatrixError) as cm:
                await engine.receive_membership_event(
                    origin,
                    copy.deepcopy(pdu),
                    room_id=room_id,
                    expected_membership=membership,
                )
            self.assertEqual(cm.exception.code, code, (origin, membership))
        with self.assertRaises(MatrixError) as cm:
            await engine.receive_membership_event(
                "c.example",
                join_c.pdu,
                room_id=room_id,
                expected_membership="join",
                event_id="$other",
            )
        self.assertEqual(cm.exception.code, 400)
        self.assertEqual(await store.get_current_stream_ordering(), position)
        self.assertEqual(await store.have_events([join_c.event_id]), set())

    async def test_bad_signature_and_unknown_room(self) -> None:
        engine, store, room_id, _ = await self._room("11")
        msg = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "forged"}
        )
        pdu = copy.deepcopy(msg.pdu)
        pdu["signatures"]["b.example"]["ed25519:k1"] = "B" * 86
        with self.assertRaises(SignatureError):
            await engine.receive_pdu("b.example", pdu)
        # Signed by another server than the sender's.
        forged = sign_as(
            {k: v for k, v in copy.deepcopy(msg.pdu).items() if k != "signatures"},
            msg.room_version,
            "e.example",
        )
        with self.assertRaises(SignatureError):
            await engine.receive_pdu("b.example", forged.pdu)
        other = dict(copy.deepcopy(msg.pdu), room_id="!unknown:b.example")
        with self.assertRaises(MatrixError) as cm:
            await engine.receive_pdu("b.example", other)
        self.assertEqual(cm.exception.code, 404)
        with self.assertRaises(InvalidEventError):
            await engine.receive_pdu("b.example", {"type": "m.room.message"})
        self.assertEqual(await store.have_events([msg.event_id]), set())

    async def test_bad_hash_is_redacted(self) -> None:
        engine, store, room_id, _ = await self._room("10")
        msg = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "original"}
        )
        pdu = copy.deepcopy(msg.pdu)
        pdu["content"]["body"] = "changed in transit"
        got = await engine.receive_pdu("b.example", pdu)
        self.assertEqual(got.event_id, msg.event_id)
        stored = await store.get_event(msg.event_id)
        assert stored is not None
        self.assertEqual(dict(stored.content), {})

    async def test_unauthorised_event_is_stored_rejected(self) -> None:
        for version in ("1", "12"):
            engine, store, room_id, _ = await self._room(version)
            state = await store.get_current_state_ids(room_id)
            pl = await remote_event(
                engine,
                room_id,
                type="m.room.power_levels",
                sender=BOB,
                content={"users": {BOB: 100}},
                state_key="",
            )
            with self.assertRaises(AuthError):
                await engine.receive_pdu("b.example", pl.pdu)
            self.assertIn(pl.event_id, await store.get_rejected([pl.event_id]))
            self.assertEqual(await store.get_current_state_ids(room_id), state)
            self.assertNotIn(pl.event_id, await self._timeline_ids(store, room_id))
            # A neighbour built on top of the rejected event's parents is fine.
            ok = await remote_event(
                engine, room_id, type="m.room.message", sender=BOB, content={"body": "fine"}
            )
            await engine.receive_pdu("b.example", ok.pdu)
            self.assertIn(ok.event_id, await self._timeline_ids(store, room_id))

    async def test_soft_fail_after_ban(self) -> None:
        engine, store, room_id, _ = await self._room("10")
        before_ban = await store.get_forward_extremities(room_id)
        state_before_ban = await store.get_current_state_ids(room_id)
        await engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            content={"membership": "ban"},
            state_key=BOB,
        )
        prev = list((await store.get_events(before_ban)).values())
        late = await remote_event(
            engine,
            room_id,
            type="m.room.message",
            sender=BOB,
            content={"body": "sent before I saw the ban"},
            prev_events=prev,
            auth_state=state_before_ban,
        )
        got = await engine.receive_pdu("b.example", late.pdu)
        self.assertEqual(got.event_id, late.event_id)
        status = (await store.get_event_statuses([late.event_id]))[late.event_id]
        self.assertTrue(status.soft_failed)
        self.assertIsNone(status.rejected_reason)
        self.assertNotIn(late.event_id, await self._timeline_ids(store, room_id))
        self.assertNotIn(late.event_id, await store.get_forward_extremities(room_id))

    async def test_missing_prev_events_pulled(self) -> None:
        engine, store, room_id, fed = await self._room("10")
        m1 = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "one"}
        )
        m2 = await remote_event(
            engine,
            room_id,
            type="m.room.message",
            sender=BOB,
            content={"body": "two"},
            prev_events=[m1],
        )
        bodies: list[Any] = []

        def missing(dest: str, path: str, body: Any, args: Any) -> Any:
            bodies.append(body)
            return {"events": [m1.pdu]}

        fed.on("POST", "/_matrix/federation/v1/get_missing_events/", missing)
        await engine.receive_pdu("b.example", m2.pdu)
        self.assertEqual(bodies[0]["latest_events"], [m2.event_id])
        self.assertEqual(bodies[0]["limit"], 10)
        self.assertEqual(bodies[0]["earliest_events"], list(m1.prev_event_ids))
        self.assertEqual(
            (await self._timeline_ids(store, room_id))[-2:], [m1.event_id, m2.event_id]
        )
        self.assertEqual(await store.get_forward_extremities(room_id), [m2.event_id])

    async def test_gap_closed_with_state_ids(self) -> None:
        engine, store, room_id, fed = await self._room("10")
        state_ids = await store.get_current_state_ids(room_id)
        # BOB changes his display name (m1) then talks (m2); we get only m2
        # and get_missing_events yields nothing.
        m1 = await remote_event(
            engine,
            room_id,
            type="m.room.member",
            sender=BOB,
            content={"membership": "join", "displayname": "Bob"},
            state_key=BOB,
            ts_offset=1000,
        )
        state_after_m1 = dict(state_ids)
        state_after_m1[("m.room.member", BOB)] = m1.event_id
        m2 = await remote_event(
            engine,
            room_id,
            type="m.room.message",
            sender=BOB,
            content={"body": "two"},
            prev_events=[m1],
            auth_state=state_after_m1,
            known=[m1],
        )
        chain = await store.get_auth_chain_ids(state_ids.values())
        fed.on("POST", "/_matrix/federation/v1/get_missing_events/", lambda *a: {"events": []})
        fed.on(
            "GET",
            "/_matrix/federation/v1/state_ids/",
            lambda *a: {"pdu_ids": list(state_ids.values()), "auth_chain_ids": sorted(chain)},
        )
        fed.on(
            "GET",
            "/_matrix/federation/v1/event/",
            lambda *a: {"origin": "b.example", "origin_server_ts": 0, "pdus": [m1.pdu]},
        )
        await engine.receive_pdu("b.example", m2.pdu)
        self.assertIn(m2.event_id, await self._timeline_ids(store, room_id))
        self.assertEqual(
            await store.get_current_state_event_id(room_id, "m.room.member", BOB), m1.event_id
        )
        # m1 came in as an outlier: not in the timeline.
        self.assertNotIn(m1.event_id, await self._timeline_ids(store, room_id))
        self.assertEqual(await store.get_state_before(m2.event_id), state_after_m1)

    async def test_missing_auth_events_fetched(self) -> None:
        engine, store, room_id, fed = await self._room("11")
        state_ids = await store.get_current_state_ids(room_id)
        m1 = await remote_event(
            engine,
            room_id,
            type="m.room.member",
            sender=BOB,
            content={"membership": "join", "displayname": "B"},
            state_key=BOB,
        )
        state2 = dict(state_ids)
        state2[("m.room.member", BOB)] = m1.event_id
        m2 = await remote_event(
            engine,
            room_id,
            type="m.room.message",
            sender=BOB,
            content={"body": "x"},
            prev_events=[m1],
            auth_state=state2,
            known=[m1],
        )
        self.assertIn(m1.event_id, m2.auth_event_ids)
        fed.on("GET", "/_matrix/federation/v1/event_auth/", lambda *a: {"auth_chain": [m1.pdu]})
        fed.on(
            "POST", "/_matrix/federation/v1/get_missing_events/", lambda *a: {"events": [m1.pdu]}
        )
        await engine.receive_pdu("b.example", m2.pdu)
        self.assertIn("GET", [m for m, *_ in fed.requests])
        self.assertEqual(await store.get_forward_extremities(room_id), [m2.event_id])
        self.assertEqual(
            (await store.get_event_statuses([m1.event_id]))[m1.event_id].outlier, False
        )

    async def test_fork_resolved_by_state_res(self) -> None:
        for version in ("2", "10", "12"):
            engine, store, room_id, _ = await self._room(version)
            base_ids = await store.get_forward_extremities(room_id)
            base_state = await store.get_current_state_ids(room_id)
            base = list((await store.get_events(base_ids)).values())
            topic = await engine.send_event(
                room_id, type="m.room.topic", sender=ALICE, content={"topic": "ours"}, state_key=""
            )
            name = await remote_event(
                engine,
                room_id,
                type="m.room.member",
                sender=BOB,
                content={"membership": "join", "displayname": "B"},
                state_key=BOB,
                prev_events=base,
                auth_state=base_state,
                ts_offset=1000,
            )
            await engine.receive_pdu("b.example", name.pdu)
            self.assertEqual(
                sorted(await store.get_forward_extremities(room_id)),
                sorted([topic.event_id, name.event_id]),
            )
            current = await store.get_current_state_ids(room_id)
            self.assertEqual(current[("m.room.topic", "")], topic.event_id, version)
            self.assertEqual(current[("m.room.member", BOB)], name.event_id, version)
            merge = await engine.send_event(
                room_id, type="m.room.message", sender=ALICE, content={"body": "merged"}
            )
            self.assertEqual(sorted(merge.prev_event_ids), sorted([topic.event_id, name.event_id]))
            self.assertEqual(await store.get_forward_extremities(room_id), [merge.event_id])

    async def test_many_forward_extremities_merged_ten_at_a_time(self) -> None:
        engine, store, room_id, _ = await self._room("11")
        base_ids = await store.get_forward_extremities(room_id)
        base = list((await store.get_events(base_ids)).values())
        forks = []
        for i in range(12):
            ev = await remote_event(
                engine,
                room_id,
                type="m.room.message",
                sender=BOB,
                content={"body": f"fork {i}"},
                prev_events=base,
                ts_offset=i,
            )
            await engine.receive_pdu("b.example", ev.pdu)
            forks.append(ev.event_id)
        self.assertEqual(sorted(await store.get_forward_extremities(room_id)), sorted(forks))
        merge = await engine.send_event(
            room_id, type="m.room.topic", sender=ALICE, content={"topic": "merged"}, state_key=""
        )
        self.assertEqual(len(merge.prev_event_ids), 10)
        left = await store.get_forward_extremities(room_id)
        self.assertEqual(len(left), 3)
        self.assertIn(merge.event_id, left)
        self.assertEqual(
            await store.get_current_state_event_id(room_id, "m.room.topic", ""), merge.event_id
        )
        final = await engine.send_event(
            room_id, type="m.room.message", sender=ALICE, content={"body": "all merged"}
        )
        self.assertEqual(sorted(final.prev_event_ids), sorted(left))
        self.assertEqual(await store.get_forward_extremities(room_id), [final.event_id])

    async def test_atomic_persist_failure_leaves_nothing(self) -> None:
        engine, store, room_id, _ = await self._room("10")
        position = await store.get_current_stream_ordering()
        state = await store.get_current_state_ids(room_id)
        extremities = await store.get_forward_extremities(room_id)

        def boom(*args: Any, **kw: Any) -> None:
            raise RuntimeError("disk on fire")

        self.patch(persist_module, "_apply_current_state", boom)
        topic = await remote_event(
            engine, room_id, type="m.room.topic", sender=ALICE, content={"topic": "t"}, state_key=""
        )
        with self.assertRaises(RuntimeError):
            await engine.send_event(
                room_id, type="m.room.topic", sender=ALICE, content={"topic": "t"}, state_key=""
            )
        with self.assertRaises(RuntimeError):
            await engine.create_room(ALICE)
        self.assertEqual(await store.get_current_stream_ordering(), position)
        self.assertEqual(await store.get_current_state_ids(room_id), state)
        self.assertEqual(await store.get_forward_extremities(room_id), extremities)
        self.assertEqual(await store.have_events([topic.event_id]), set())
        self.assertEqual(await store.get_rooms_for_user(ALICE), {room_id: "join"})

    async def _member_we_never_saw(self, partial: bool) -> tuple[Store, str, Event, Event]:
        """Carol's join is known to us only through the auth chain of her message."""
        engine, store, room_id, fed = await self._room("10")
        await store.set_room_partial_state(room_id, partial)
        state = await store.get_current_state_ids(room_id)
        tips = list((await store.get_events(await store.get_forward_extremities(room_id))).values())
        join = await remote_event(
            engine,
            room_id,
            type="m.room.member",
            sender=CAROL,
            content={"membership": "join"},
            state_key=CAROL,
            prev_events=tips,
        )
        with_carol = dict(state)
        with_carol[("m.room.member", CAROL)] = join.event_id
        msg = await remote_event(
            engine,
            room_id,
            type="m.room.message",
            sender=CAROL,
            content={"body": "hi"},
            prev_events=tips,
            auth_state=with_carol,
            known=[join],
        )
        fed.on("GET", "/_matrix/federation/v1/event_auth/", lambda *a: {"auth_chain": [join.pdu]})
        with self.assertRaises(AuthError) if not partial else _no_error():
            await engine.receive_pdu("c.example", msg.pdu)
        return store, room_id, join, msg

    async def test_partial_state_room_trusts_auth_events(self) -> None:
        store, room_id, join, msg = await self._member_we_never_saw(partial=True)
        self.assertIn(msg.event_id, await self._timeline_ids(store, room_id))
        self.assertEqual(await store.get_rejected([msg.event_id]), {})

    async def test_full_state_room_rejects_sender_not_in_state(self) -> None:
        store, room_id, join, msg = await self._member_we_never_saw(partial=False)
        self.assertIn(msg.event_id, await store.get_rejected([msg.event_id]))
        # The join came in through the auth chain: an outlier, not in state.
        self.assertTrue((await store.get_event_statuses([join.event_id]))[join.event_id].outlier)

    async def test_pdus_refused_once_we_left(self) -> None:
        engine, store, room_id, _ = await self._room("10")
        await engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            content={"membership": "leave"},
            state_key=ALICE,
        )
        msg = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "anyone?"}
        )
        with self.assertRaises(MatrixError) as cm:
            await engine.receive_pdu("b.example", msg.pdu)
        self.assertEqual(cm.exception.code, 403)
        self.assertEqual(await store.have_events([msg.event_id]), set())

    async def test_prev_event_of_another_room_refused(self) -> None:
        engine, store, room_id, _ = await self._room("10")
        other = await engine.create_room(ALICE, room_version="10", name="secret")
        other_tip = list(
            (await store.get_events(await store.get_forward_extremities(other))).values()
        )
        sneaky = await remote_event(
            engine,
            room_id,
            type="m.room.message",
            sender=BOB,
            content={"body": "x"},
            prev_events=other_tip,
        )
        with self.assertRaises(InvalidEventError):
            await engine.receive_pdu("b.example", sneaky.pdu)
        self.assertEqual(await store.have_events([sneaky.event_id]), set())

    async def test_notifier_woken_by_remote_event(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        engine, store, room_id, _ = await self._room("10", clock=clock)
        position = await store.get_current_stream_ordering()
        waiting = engine.notifier.wait_for_events([room_id], position, 30_000)
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(waiting)
        self.assertNoResult(d)
        msg = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "wake up"}
        )
        await engine.receive_pdu("b.example", msg.pdu)
        self.assertGreater(self.successResultOf(d), position)

    def _assert_event(self, event: Event) -> None:
        self.assertIsInstance(event, Event)


class InboundTestsSqlite(SqliteMixin, InboundTestsMixin, unittest.TestCase):
    pass


class InboundTestsPostgres(PostgresMixin, InboundTestsMixin, unittest.TestCase):
    pass
