"""persist_events on both engines: batches, atomicity, state, extremities."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

import matrixfed.storage.persist as persist_module
from matrixfed.events.model import Event
from matrixfed.storage import (
    EventWithContext,
    MissingStateError,
    StateResolutionRequired,
    Store,
)
from matrixfed.storage.database import Transaction
from tests.storage.factory import RoomFactory
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin


def ctx(events: list[Event], **kw: Any) -> list[EventWithContext]:
    return [EventWithContext(e, **kw) for e in events]


def _counts(txn: Transaction) -> dict[str, int]:
    out = {}
    for table in (
        "rooms",
        "events",
        "event_edges",
        "event_auth",
        "state_groups",
        "state_groups_state",
        "event_to_state_groups",
        "current_state_events",
        "event_forward_extremities",
        "event_backward_extremities",
        "id_counters",
    ):
        txn.execute(f"SELECT COUNT(*) FROM {table}")
        row = txn.fetchone()
        assert row is not None
        out[table] = int(row[0])
    return out


class PersistTestsMixin(DatabaseMixin):
    async def _room(self) -> tuple[Store, RoomFactory, list[Event]]:
        store = await self.make_store()
        room = RoomFactory()
        events = room.create_room()
        await store.persist_events(room.room_id, ctx(events))
        return store, room, events

    async def test_create_room_batch(self) -> None:
        store, room, events = await self._room()
        create, join, pl, jr = events

        info = await store.get_room(room.room_id)
        assert info is not None
        self.assertEqual((info.room_version, info.creator), ("10", "@alice:test"))
        self.assertEqual(await store.get_current_state_ids(room.room_id), room.state)
        self.assertEqual(await store.get_forward_extremities(room.room_id), [jr.event_id])
        self.assertEqual(await store.get_backward_extremities(room.room_id), [])
        self.assertEqual(await store.get_state_before(create.event_id), {})
        self.assertEqual(
            await store.get_state_after(create.event_id),
            {("m.room.create", ""): create.event_id},
        )
        self.assertEqual(
            await store.get_state_before(pl.event_id),
            {
                ("m.room.create", ""): create.event_id,
                ("m.room.member", "@alice:test"): join.event_id,
            },
        )
        self.assertEqual(await store.get_joined_users(room.room_id), {"@alice:test"})
        self.assertEqual(await store.get_joined_servers(room.room_id), {"test"})
        self.assertEqual(await store.get_rooms_for_user("@alice:test"), {room.room_id: "join"})

    async def test_events_round_trip(self) -> None:
        store, room, events = await self._room()
        msg = room.event("m.room.message", content={"body": "h\u00e9llo \u0000 \U0001f600 \ud800"})
        await store.persist_events(room.room_id, ctx([msg]))
        # A fresh store on the same database: nothing comes from the cache.
        fresh = Store(db=store.db, clock=store._clock)
        got = await fresh.get_events([msg.event_id, events[0].event_id, "$unknown:test"])
        self.assertEqual(set(got), {msg.event_id, events[0].event_id})
        self.assertEqual(got[msg.event_id].pdu, msg.pdu)
        self.assertEqual(got[msg.event_id].room_version, room.rv)
        self.assertEqual(got[msg.event_id].event_id, msg.event_id)
        self.assertIsNone(await fresh.get_event("$unknown:test"))

    async def test_duplicate_batch_is_skipped(self) -> None:
        store, room, events = await self._room()
        before = await store.db.run_interaction("c", _counts)
        again = await store.persist_events(room.room_id, ctx(events))
        self.assertEqual(again, [])
        self.assertEqual(await store.db.run_interaction("c", _counts), before)

    async def test_failure_in_the_middle_leaves_nothing(self) -> None:
        store = await self.make_store()
        room = RoomFactory()
        events = room.create_room()
        empty = await store.db.run_interaction("c", _counts)

        def boom(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("disk on fire")

        # Fails after the events, edges and state groups were inserted.
        self.patch(persist_module, "_apply_current_state", boom)
        with self.assertRaises(RuntimeError):
            await store.persist_events(room.room_id, ctx(events))
        self.assertEqual(await store.db.run_interaction("c", _counts), empty)
        self.assertIsNone(await store.get_event(events[0].event_id))
        self.assertIsNone(await store.get_room(room.room_id))

    async def test_missing_state_in_the_middle_leaves_nothing(self) -> None:
        store, room, _ = await self._room()
        before = await store.db.run_interaction("c", _counts)
        a = room.event("m.room.message")
        orphan = room.event("m.room.message", prev=["$never:seen"])
        c = room.event("m.room.message")
        with self.assertRaises(MissingStateError):
            await store.persist_events(room.room_id, ctx([a, orphan, c]))
        self.assertEqual(await store.db.run_interaction("c", _counts), before)

    async def test_unknown_state_group_rejected(self) -> None:
        store, room, _ = await self._room()
        msg = room.event("m.room.message")
        with self.assertRaises(KeyError):
            await store.persist_events(room.room_id, ctx([msg], state_before=987654))
        self.assertIsNone(await store.get_event(msg.event_id))

    async def test_wrong_room_or_version_rejected(self) -> None:
        store, room, _ = await self._room()
        other = RoomFactory(room_id="!other:test")
        with self.assertRaises(ValueError):
            await store.persist_events(room.room_id, ctx([other.event("m.room.message")]))
        v9 = RoomFactory(room_id=room.room_id, room_version="9")
        with self.assertRaises(ValueError):
            await store.persist_events(room.room_id, ctx([v9.event("x", prev=[])]))

    async def test_rejected_state_event_changes_no_state(self) -> None:
        store, room, events = await self._room()
        bad = room.event("m.room.topic", state_key="", content={"topic": "x"}, advance=False)
        await store.persist_events(room.room_id, [EventWithContext(bad, rejected_reason="auth")])
        self.assertEqual(
            await store.get_rejected([bad.event_id, events[0].event_id]), {bad.event_id: "auth"}
        )
        self.assertEqual(
            await store.get_state_after(bad.event_id), await store.get_state_before(bad.event_id)
        )
        self.assertEqual(await store.get_current_state_ids(room.room_id), room.state)
        self.assertEqual(await store.get_forward_extremities(room.room_id), [events[-1].event_id])

    async def test_soft_failed_event_is_not_an_extremity(self) -> None:
        store, room, events = await self._room()
        soft = room.event("m.room.topic", state_key="", content={"topic": "x"}, advance=False)
        await store.persist_events(room.room_id, [EventWithContext(soft, soft_failed=True)])
        self.assertEqual(await store.get_forward_extremities(room.room_id), [events[-1].event_id])
        self.assertEqual(await store.get_current_state_ids(room.room_id), room.state)
        after = await store.get_state_after(soft.event_id)
        assert after is not None
        self.assertEqual(after[("m.room.topic", "")], soft.event_id)
        status = (await store.get_event_statuses([soft.event_id]))[soft.event_id]
        self.assertTrue(status.soft_failed)

    async def test_outliers_then_deoutlier(self) -> None:
        store, room, events = await self._room()
        msg = room.event("m.room.message")
        [first] = await store.persist_events(room.room_id, ctx([msg], outlier=True))
        self.assertTrue(first.outlier)
        self.assertIsNone(first.state_group_before)
        self.assertIsNone(await store.get_state_before(msg.event_id))
        self.assertEqual(await store.get_forward_extremities(room.room_id), [events[-1].event_id])
        self.assertEqual(
            await store.get_room_events_stream(
                room.room_id, from_ordering=first.stream_ordering - 1
            ),
            [],
        )
        # Arrives again with its state: now part of the room's timeline.
        [second] = await store.persist_events(room.room_id, ctx([msg]))
        self.assertFalse(second.outlier)
        self.assertGreater(second.stream_ordering, first.stream_ordering)
        self.assertEqual(await store.get_state_before(msg.event_id), room.state)
        self.assertEqual(await store.get_forward_extremities(room.room_id), [msg.event_id])
        self.assertEqual(await store.persist_events(room.room_id, ctx([msg], outlier=True)), [])

    async def test_fork_needs_resolution_then_merge(self) -> None:
        store, room, events = await self._room()
        base = events[-1].event_id
        a = room.event("m.room.topic", state_key="", content={"topic": "a"}, prev=[base])
        b = room.event("m.room.name", state_key="", content={"name": "b"}, prev=[base])
        before = await store.db.run_interaction("c", _counts)
        with self.assertRaises(StateResolutionRequired) as cm:
            await store.persist_events(room.room_id, ctx([a, b]))
        self.assertEqual(set(cm.exception.extremities), {a.event_id, b.event_id})
        self.assertEqual(await store.db.run_interaction("c", _counts), before)

        resolved = dict(room.state)
        resolved[("m.room.topic", "")] = a.event_id
        await store.persist_events(room.room_id, ctx([a, b]), current_state=resolved)
        self.assertEqual(
            await store.get_forward_extremities(room.room_id), sorted([a.event_id, b.event_id])
        )
        self.assertEqual(await store.get_current_state_ids(room.room_id), resolved)

        # A merge event without the resolved state cannot be placed...
        merge = room.event("m.room.message", prev=[a.event_id, b.event_id])
        with self.assertRaises(MissingStateError):
            await store.persist_events(room.room_id, ctx([merge]))
        # ...with it, it becomes the only extremity and sets the current state.
        await store.persist_events(room.room_id, ctx([merge], state_before=resolved))
        self.assertEqual(await store.get_forward_extremities(room.room_id), [merge.event_id])
        self.assertEqual(await store.get_state_before(merge.event_id), resolved)
        self.assertEqual(await store.get_current_state_ids(room.room_id), resolved)

    async def test_join_shape_outliers_plus_join_with_full_state(self) -> None:
        # What the join coordinator writes: the state and auth chain from
        # send_join as outliers, then our join with the returned state.
        store = await self.make_store()
        remote = RoomFactory(room_id="!big:remote")
        chain = remote.create_room(creator="@bob:remote")
        members = [remote.member(f"@u{i}:s{i % 7}.test") for i in range(300)]
        state = dict(remote.state)
        join = remote.member("@me:test")
        items = ctx(chain + members, outlier=True) + [EventWithContext(join, state_before=state)]
        results = await store.persist_events(remote.room_id, items)
        self.assertEqual(len(results), len(items))
        self.assertEqual(await store.get_current_state_ids(remote.room_id), remote.state)
        self.assertEqual(await store.get_forward_extremities(remote.room_id), [join.event_id])
        self.assertEqual(await store.get_state_before(join.event_id), state)
        joined = await store.get_joined_servers(remote.room_id)
        self.assertEqual(joined, {"remote", "test"} | {f"s{i}.test" for i in range(7)})
        self.assertTrue(await store.is_host_joined(remote.room_id, "test"))
        # The join's prev event (the last member) is an outlier: backfill starts there.
        self.assertEqual(
            await store.get_backward_extremities(remote.room_id), [members[-1].event_id]
        )
        info = await store.get_room(remote.room_id)
        assert info is not None
        self.assertEqual(info.creator, "@bob:remote")

    async def test_batch_is_a_handful_of_statements(self) -> None:
        calls: list[str] = []
        originals = {
            name: getattr(Transaction, name)
            for name in ("execute", "executemany", "execute_values", "copy_rows")
        }

        def counting(name: str) -> Any:
            orig = originals[name]

            def wrapper(self: Transaction, *args: Any, **kw: Any) -> Any:
                calls.append(name)
                return orig(self, *args, **kw)

            return wrapper

        store = await self.make_store()
        for name in originals:
            self.patch(Transaction, name, counting(name))

        async def statements_for(n: int, room_id: str) -> int:
            room = RoomFactory(room_id=room_id)
            chain = room.create_room()
            members = [room.member(f"@u{i}:test") for i in range(n)]
            state = dict(room.state)
            join = room.member("@me:test")
            del calls[:]
            await store.persist_events(
                room_id, ctx(chain + members, outlier=True) + ctx([join], state_before=state)
            )
            return len(calls)

        small = await statements_for(10, "!small:test")
        large = await statements_for(2000, "!large:test")
        # Only chunked IN (...) lookups (500 ids each) grow with the batch.
        self.assertLess(large, 40)
        self.assertLessEqual(large - small, 2 * (2000 // 500 + 1))

    async def test_concurrent_writers(self) -> None:
        # Several rooms written at once (PostgreSQL: several connections).
        store = await self.make_store()
        rooms = [RoomFactory(room_id=f"!c{i}:test") for i in range(5)]
        batches = [r.create_room() + [r.member(f"@m{j}:test") for j in range(20)] for r in rooms]
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(store.persist_events(r.room_id, ctx(b)))
                for r, b in zip(rooms, batches, strict=True)
            ],
            consumeErrors=True,
        )
        orderings = [p.stream_ordering for res in results for p in res]
        self.assertEqual(len(set(orderings)), 5 * 24)
        for r, res in zip(rooms, results, strict=True):
            self.assertEqual(await store.get_current_state_ids(r.room_id), r.state)
            # Within a batch, stream orderings are consecutive: one allocation.
            so = [p.stream_ordering for p in res]
            self.assertEqual(so, list(range(so[0], so[0] + len(so))))
        groups = [p.state_group_after for res in results for p in res]
        self.assertEqual(len(set(groups)), len(groups))

    async def test_backfilled_events(self) -> None:
        store, room, events = await self._room()
        # History we did not have: an event before a known one, fetched later.
        tip = room.event("m.room.message")
        await store.persist_events(room.room_id, ctx([tip]))
        old_extremities = await store.get_forward_extremities(room.room_id)
        side = room.event("m.room.message", prev=[events[-1].event_id], advance=False)
        [res] = await store.persist_events(room.room_id, ctx([side]), backfilled=True)
        self.assertLess(res.stream_ordering, 0)
        self.assertEqual(await store.get_forward_extremities(room.room_id), old_extremities)
        topo = await store.get_room_events_topological(room.room_id, from_token=None, limit=10)
        self.assertIn(side.event_id, [e.event_id for _, e in topo])
        stream = await store.get_room_events_stream(room.room_id, from_ordering=0)
        self.assertNotIn(side.event_id, [e.event_id for _, e in stream])


class PersistSqliteTests(SqliteMixin, PersistTestsMixin, unittest.TestCase):
    pass


class PersistPostgresTests(PostgresMixin, PersistTestsMixin, unittest.TestCase):
    pass
