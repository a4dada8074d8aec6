"""State groups: deduplication, delta chains, state before/after events."""

from __future__ import annotations

from twisted.trial import unittest

import matrixfed.storage.state as state_module
from matrixfed.events.model import Event
from matrixfed.storage import EventWithContext, Store
from matrixfed.storage.database import Transaction
from matrixfed.storage.state import (
    DELTA_LEVELS,
    DELTA_SPAN,
    group_level,
)
from tests.storage.factory import RoomFactory
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin


def _max_chain_length(txn: Transaction) -> int:
    txn.execute("SELECT id, prev_group FROM state_groups")
    prev = {int(g): (None if p is None else int(p)) for g, p in txn.fetchall()}
    longest = 0
    for g in prev:
        n, cur = 1, prev[g]
        while cur is not None:
            n, cur = n + 1, prev[cur]
        longest = max(longest, n)
    return longest


class StateTestsMixin(DatabaseMixin):
    async def _joins(
        self, store: Store, room: RoomFactory, n: int, *, one_by_one: bool
    ) -> tuple[list[Event], list[dict[tuple[str, str], str]]]:
        """n member joins on a linear chain; returns the events and the state after each."""
        events: list[Event] = []
        expected: list[dict[tuple[str, str], str]] = []
        for i in range(n):
            events.append(room.member(f"@user{i}:s{i % 13}.test"))
            expected.append(dict(room.state))
            if one_by_one:
                await store.persist_events(room.room_id, [EventWithContext(events[-1])])
        if not one_by_one:
            await store.persist_events(room.room_id, [EventWithContext(e) for e in events])
        return events, expected

    async def _check_states(
        self,
        store: Store,
        events: list[Event],
        expected: list[dict[tuple[str, str], str]],
        sample: range | list[int],
    ) -> None:
        for i in sample:
            self.assertEqual(await store.get_state_after(events[i].event_id), expected[i], i)
            before = expected[i - 1] if i else None
            if before is not None:
                self.assertEqual(await store.get_state_before(events[i].event_id), before, i)

    async def test_10000_members_rows_grow_linearly(self) -> None:
        store = await self.make_store()
        room = RoomFactory()
        await store.persist_events(room.room_id, [EventWithContext(e) for e in room.create_room()])
        n = 10_000
        events, expected = await self._joins(store, room, n, one_by_one=False)

        groups, rows = await store.count_state_rows(room.room_id)
        # One group per state change (4 from the room creation, 1 empty before create).
        self.assertEqual(groups, n + 5)
        # A copy of the state per join would be n * (n + 1) / 2 = 50 million
        # rows; with leveled deltas each change is stored about once per level.
        self.assertLess(rows, (DELTA_LEVELS + 1.2) * n)
        self.assertLessEqual(
            await store.db.run_interaction("chain", _max_chain_length),
            (DELTA_SPAN - 1) * (DELTA_LEVELS + 1) + 1,
        )
        current = await store.get_current_state_ids(room.room_id)
        self.assertEqual(current, room.state)
        self.assertEqual(len(await store.get_joined_users(room.room_id)), n + 1)
        fresh = Store(db=store.db, clock=store._clock)  # no cached states
        await self._check_states(fresh, events, expected, [0, 15, 16, 255, 256, 4096, 9999])

    async def test_joins_one_by_one_across_level_boundaries(self) -> None:
        store = await self.make_store()
        room = RoomFactory()
        await store.persist_events(room.room_id, [EventWithContext(e) for e in room.create_room()])
        n = 300  # passes the level-1 (16) and level-2 (256) boundaries
        events, expected = await self._joins(store, room, n, one_by_one=True)
        groups, rows = await store.count_state_rows(room.room_id)
        self.assertEqual(groups, n + 5)
        self.assertLess(rows, (DELTA_LEVELS + 1.2) * n + 10)
        fresh = Store(db=store.db, clock=store._clock)
        await self._check_states(fresh, events, expected, range(0, n, 7))
        await self._check_states(fresh, events, expected, [n - 1])
        self.assertEqual(await store.get_current_state_ids(room.room_id), room.state)

    async def test_current_state_at_keys(self) -> None:
        store = await self.make_store()
        room = RoomFactory()
        await store.persist_events(room.room_id, [EventWithContext(e) for e in room.create_room()])
        await self._joins(store, room, 20, one_by_one=False)
        keys = [("m.room.create", ""), ("m.room.member", "@user3:s3.test"), ("m.room.topic", "")]
        self.assertEqual(
            await store.get_current_state_ids_for_keys(room.room_id, [*keys, keys[0]]),
            {k: room.state[k] for k in keys[:2]},
        )
        self.assertEqual(await store.get_current_state_ids_for_keys(room.room_id, []), {})
        self.assertEqual(await store.get_current_state_ids_for_keys("!other:test", keys), {})

    async def test_snapshots_every_period_keep_states_exact(self) -> None:
        # Tiny spans: every level and the snapshot wrap happen within 100 joins.
        self.patch(state_module, "DELTA_SPAN", 2)
        self.patch(state_module, "SNAPSHOT_PERIOD", 2 ** (DELTA_LEVELS + 1))
        store = await self.make_store()
        room = RoomFactory()
        await store.persist_events(room.room_id, [EventWithContext(e) for e in room.create_room()])
        half, _ = await self._joins(store, room, 50, one_by_one=False)
        rest, expected = await self._joins(store, room, 50, one_by_one=True)
        fresh = Store(db=store.db, clock=store._clock)
        await self._check_states(fresh, rest, expected, range(50))
        self.assertLessEqual(
            await store.db.run_interaction("chain", _max_chain_length), 1 * (DELTA_LEVELS + 1) + 1
        )

    async def test_message_events_share_the_state_group(self) -> None:
        store = await self.make_store()
        room = RoomFactory()
        await store.persist_events(room.room_id, [EventWithContext(e) for e in room.create_room()])
        before = await store.count_state_rows(room.room_id)
        msgs = [room.event("m.room.message", content={"body": str(i)}) for i in range(50)]
        results = await store.persist_events(room.room_id, [EventWithContext(e) for e in msgs])
        self.assertEqual(await store.count_state_rows(room.room_id), before)
        self.assertEqual(len({(r.state_group_before, r.state_group_after) for r in results}), 1)
        groups = await store.get_state_groups_for_events([m.event_id for m in msgs])
        self.assertEqual(len(set(groups.values())), 1)
        group = results[0].state_group_after
        assert group is not None
        self.assertEqual(await store.get_state_ids_for_group(group), room.state)
        self.assertEqual(await store.get_current_state_group(room.room_id), group)

    async def test_state_removed_by_resolution(self) -> None:
        # A resolved state may lack a key the parent had: stored as a tombstone.
        store = await self.make_store()
        room = RoomFactory()
        await store.persist_events(room.room_id, [EventWithContext(e) for e in room.create_room()])
        topic = room.event("m.room.topic", state_key="", content={"topic": "t"})
        await store.persist_events(room.room_id, [EventWithContext(topic)])
        without = dict(room.state)
        del without[("m.room.topic", "")]
        msg = room.event("m.room.message")
        await store.persist_events(
            room.room_id, [EventWithContext(msg, state_before=without)], current_state=without
        )
        fresh = Store(db=store.db, clock=store._clock)
        self.assertEqual(await fresh.get_state_before(msg.event_id), without)
        self.assertEqual(await fresh.get_current_state_ids(room.room_id), without)

    async def test_unknown_group(self) -> None:
        store = await self.make_store()
        with self.assertRaises(KeyError):
            await store.get_state_ids_for_group(12345)
        self.assertIsNone(await store.get_state_before("$nope:test"))


class LevelTests(unittest.TestCase):
    def test_levels(self) -> None:
        self.assertEqual(group_level(0), DELTA_LEVELS + 1)
        self.assertEqual(group_level(1), 0)
        self.assertEqual(group_level(DELTA_SPAN), 1)
        self.assertEqual(group_level(DELTA_SPAN * 3), 1)
        self.assertEqual(group_level(DELTA_SPAN**2), 2)
        self.assertEqual(group_level(DELTA_SPAN**DELTA_LEVELS), DELTA_LEVELS)
        self.assertEqual(group_level(DELTA_SPAN**DELTA_LEVELS * 2), DELTA_LEVELS)


class StateSqliteTests(SqliteMixin, StateTestsMixin, unittest.TestCase):
    pass


class StatePostgresTests(PostgresMixin, StateTestsMixin, unittest.TestCase):
    pass
