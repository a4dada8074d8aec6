"""Event reads: auth chains, DAG walks, stream and topological order."""

from __future__ import annotations

from twisted.trial import unittest

from matrixfed.events.model import Event
from matrixfed.storage import EventWithContext, Store
from matrixfed.storage.cache import LruCache
from tests.storage.factory import RoomFactory
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin


def ctx(events: list[Event], **kw: object) -> list[EventWithContext]:
    return [EventWithContext(e, **kw) for e in events]  # type: ignore[arg-type]


class EventsTestsMixin(DatabaseMixin):
    async def _room(self) -> tuple[Store, RoomFactory, list[Event]]:
        store = await self.make_store()
        room = RoomFactory()
        events = room.create_room()
        await store.persist_events(room.room_id, ctx(events))
        return store, room, events

    async def test_auth_chain(self) -> None:
        store, room, (create, join, pl, jr) = await self._room()
        bob = room.member("@bob:other", auth=[create.event_id, pl.event_id, jr.event_id])
        msg = room.event(
            "m.room.message", sender="@bob:other", auth=[create.event_id, pl.event_id, bob.event_id]
        )
        await store.persist_events(room.room_id, ctx([bob, msg]))
        every = {create.event_id, join.event_id, pl.event_id, jr.event_id, bob.event_id}
        self.assertEqual(await store.get_auth_chain_ids([msg.event_id]), every)
        self.assertEqual(
            await store.get_auth_chain_ids([msg.event_id], include_given=True),
            every | {msg.event_id},
        )
        self.assertEqual(
            await store.get_auth_chain_ids([pl.event_id]), {create.event_id, join.event_id}
        )
        self.assertEqual(await store.get_auth_chain_ids([create.event_id]), set())
        self.assertEqual(await store.get_auth_chain_ids(["$unknown:x"]), set())
        chain = await store.get_auth_chain([bob.event_id])
        self.assertEqual([e.event_id for e in chain][0], create.event_id)
        self.assertEqual({e.event_id for e in chain}, every - {bob.event_id})

    async def test_auth_chain_of_many_outliers(self) -> None:
        # A long chain of membership changes, stored as outliers (a join's auth chain).
        store = await self.make_store()
        room = RoomFactory()
        create, join, pl, jr = room.create_room()
        events = [create, join, pl, jr]
        last_member = join.event_id
        for i in range(600):
            ev = room.event(
                "m.room.member",
                state_key="@alice:test",
                content={"membership": "join", "displayname": str(i)},
                auth=[create.event_id, pl.event_id, last_member],
            )
            events.append(ev)
            last_member = ev.event_id
        await store.persist_events(room.room_id, ctx(events, outlier=True))
        chain = await store.get_auth_chain_ids([last_member])
        # the 599 earlier member events, the creator's join, create, power levels
        self.assertEqual(len(chain), 599 + 3)
        self.assertNotIn(jr.event_id, chain)

    async def test_reads_of_a_room_state_answer(self) -> None:
        # What a send_join answer reads: the auth chain of more IDs than one
        # SQL chunk, deeper than one level (the first level is read over all
        # of them, the rest walked from the distinct events found), and the
        # JSON texts with the events a stored redaction targets.
        store = await self.make_store()
        room = RoomFactory()
        create, join, pl, jr = room.create_room()
        events: list[Event] = [create, join, pl, jr]
        members = []
        for i in range(1100):
            user = f"@u{i}:s{i % 7}.test"
            # Every 100th user was invited first: a second level in the chain.
            auth = [create.event_id, pl.event_id, jr.event_id]
            if i % 100 == 0:
                invite = room.event(
                    "m.room.member",
                    state_key=user,
                    content={"membership": "invite"},
                    auth=[create.event_id, pl.event_id, join.event_id],
                )
                events.append(invite)
                auth.append(invite.event_id)
            members.append(room.member(user, auth=auth))
            events.append(members[-1])
        # Redactions of a state event and of a chain-only event; an auth edge
        # to an event we never stored.
        redactions = [
            room.event("m.room.redaction", redacts=members[5].event_id),
            room.event("m.room.redaction", redacts=members[5].event_id),
            room.event("m.room.redaction", redacts=join.event_id),
        ]
        odd = room.member("@odd:x.test", auth=[create.event_id, "$never:stored"])
        await store.persist_events(room.room_id, ctx([*events, *redactions, odd]))
        start = [pl.event_id, jr.event_id, odd.event_id, "$unknown:x"]
        start += [m.event_id for m in members]

        by_id = {e.event_id: e for e in [*events, *redactions, odd]}
        expected: set[str] = set()
        todo = [a for e in start if e in by_id for a in by_id[e].auth_event_ids]
        while todo:
            eid = todo.pop()
            if eid not in expected:
                expected.add(eid)
                todo.extend(by_id[eid].auth_event_ids if eid in by_id else ())
        chain = await store.get_auth_chain_ids(start)
        self.assertEqual(chain, expected)
        self.assertIn("$never:stored", chain)
        self.assertEqual(len(chain), 4 + 11 + 1)

        got = await store.get_event_json_marked([*start, *chain])
        self.assertEqual(got.json, await store.get_event_json([*start, *chain]))
        self.assertEqual(
            got.redaction_targets, set(await store.get_redactions_for([*start, *chain]))
        )
        self.assertEqual(got.redaction_targets, {members[5].event_id, join.event_id})
        empty = await store.get_event_json_marked([])
        self.assertEqual((empty.json, empty.redaction_targets), ({}, frozenset()))

    async def test_missing_events_walk(self) -> None:
        store, room, events = await self._room()
        msgs = [room.event("m.room.message", content={"n": i}) for i in range(20)]
        await store.persist_events(room.room_id, ctx(msgs))
        got = await store.get_missing_events(
            room.room_id,
            earliest_events=[msgs[4].event_id],
            latest_events=[msgs[-1].event_id],
            limit=10,
        )
        # Walks back from the latest, returns oldest first, stops at the limit.
        self.assertEqual([e.event_id for e in got], [m.event_id for m in msgs[9:19]])
        got = await store.get_missing_events(
            room.room_id,
            earliest_events=[msgs[14].event_id],
            latest_events=[msgs[-1].event_id],
            limit=100,
        )
        self.assertEqual([e.event_id for e in got], [m.event_id for m in msgs[15:19]])
        other = await store.get_missing_events(
            "!other:test", earliest_events=[], latest_events=[msgs[-1].event_id], limit=10
        )
        self.assertEqual(other, [])

    async def test_backfill_walk(self) -> None:
        store, room, events = await self._room()
        msgs = [room.event("m.room.message", content={"n": i}) for i in range(30)]
        await store.persist_events(room.room_id, ctx(msgs))
        got = await store.get_backfill_events(room.room_id, [msgs[-1].event_id], limit=5)
        self.assertEqual([e.event_id for e in got], [m.event_id for m in reversed(msgs[-5:])])
        everything = await store.get_backfill_events(room.room_id, [msgs[-1].event_id], 1000)
        self.assertEqual(len(everything), 34)
        self.assertEqual(everything[-1].event_id, events[0].event_id)

    async def test_stream_and_topological_order(self) -> None:
        store, room, events = await self._room()
        start = await store.get_current_stream_ordering()
        msgs = [room.event("m.room.message", content={"n": i}) for i in range(10)]
        results = await store.persist_events(room.room_id, ctx(msgs))
        orderings = [r.stream_ordering for r in results]
        self.assertEqual(orderings, sorted(orderings))
        self.assertGreater(orderings[0], start)
        self.assertEqual(await store.get_current_stream_ordering(), orderings[-1])

        fwd = await store.get_room_events_stream(room.room_id, from_ordering=start, limit=4)
        self.assertEqual([e.event_id for _, e in fwd], [m.event_id for m in msgs[:4]])
        page2 = await store.get_room_events_stream(
            room.room_id, from_ordering=fwd[-1][0], to_ordering=orderings[6]
        )
        self.assertEqual([e.event_id for _, e in page2], [m.event_id for m in msgs[4:7]])
        back = await store.get_room_events_stream(
            room.room_id, from_ordering=orderings[-1] + 1, limit=3, direction="b"
        )
        self.assertEqual([e.event_id for _, e in back], [m.event_id for m in msgs[:-4:-1]])

        topo = await store.get_room_events_topological(room.room_id, from_token=None, limit=5)
        self.assertEqual([e.event_id for _, e in topo], [m.event_id for m in msgs[:-6:-1]])
        older = await store.get_room_events_topological(room.room_id, from_token=topo[-1][0])
        self.assertEqual(
            [e.event_id for _, e in older],
            [m.event_id for m in reversed(msgs[:5])] + [e.event_id for e in reversed(events)],
        )
        forward = await store.get_room_events_topological(
            room.room_id, from_token=topo[-1][0], direction="f", limit=2
        )
        self.assertEqual([e.event_id for _, e in forward], [m.event_id for m in msgs[6:8]])
        changed = await store.get_rooms_changed_since(start)
        self.assertEqual(changed, {room.room_id: orderings[-1]})
        self.assertEqual(await store.get_rooms_changed_since(orderings[-1]), {})

    async def test_statuses_depths_and_redactions(self) -> None:
        store, room, events = await self._room()
        msg = room.event("m.room.message")
        red = room.event("m.room.redaction", redacts=msg.event_id)
        await store.persist_events(room.room_id, ctx([msg, red]))
        self.assertEqual(await store.get_redaction_ids(msg.event_id), [red.event_id])
        self.assertEqual(
            await store.get_depths([msg.event_id, red.event_id, "$x:y"]),
            {msg.event_id: msg.depth, red.event_id: red.depth},
        )
        self.assertEqual(await store.have_events([msg.event_id, "$x:y"]), {msg.event_id})
        status = (await store.get_event_statuses([msg.event_id]))[msg.event_id]
        self.assertEqual(
            (status.room_id, status.outlier, status.rejected_reason, status.soft_failed),
            (room.room_id, False, None, False),
        )

    async def test_event_cache_is_bounded_and_used(self) -> None:
        store, room, events = await self._room()
        store._event_cache = LruCache(2)
        got = await store.get_events([e.event_id for e in events])
        self.assertEqual(len(got), 4)
        self.assertEqual(len(store._event_cache), 2)
        await store.get_event(events[-1].event_id)
        # Served from the cache: the database is not asked again.
        store.db.close()
        cached = await store.get_event(events[-1].event_id)
        assert cached is not None
        self.assertEqual(cached.pdu, events[-1].pdu)


class EventsSqliteTests(SqliteMixin, EventsTestsMixin, unittest.TestCase):
    pass


class EventsPostgresTests(PostgresMixin, EventsTestsMixin, unittest.TestCase):
    pass


class LruCacheTests(unittest.TestCase):
    def test_eviction_order(self) -> None:
        c: LruCache[str, int] = LruCache(2)
        c.set("a", 1)
        c.set("b", 2)
        self.assertEqual(c.get("a"), 1)  # a is now the most recent
        c.set("c", 3)
        self.assertIsNone(c.get("b"))
        self.assertEqual(c.get_many(["a", "c", "b"]), {"a": 1, "c": 3})
        c.pop("a")
        self.assertNotIn("a", c)
        zero: LruCache[str, int] = LruCache(0)
        zero.set("a", 1)
        self.assertEqual(len(zero), 0)
