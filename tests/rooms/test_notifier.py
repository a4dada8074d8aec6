"""Notifier: immediate answers, wake-ups, timeouts on a fake clock, user events."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.rooms.notifier import MAX_WAIT_MS, Notifier
from tests.rooms.helpers import ALICE, make_engine
from tests.storage.harness import SqliteMixin


class NotifierTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.notifier = Notifier(clock=self.clock)

    def _waiter(
        self, rooms: list[str] | None, since: int, timeout: int, user: str | None = None
    ) -> Deferred[int]:
        return Deferred.fromCoroutine(
            self.notifier.wait_for_events(rooms, since, timeout, user_id=user)
        )

    def test_wakes_for_watched_room_only(self) -> None:
        d = self._waiter(["!a:x"], 0, 30_000)
        self.notifier.on_new_events("!b:x", 5)
        self.assertNoResult(d)
        self.notifier.on_new_events("!a:x", 7)
        self.assertEqual(self.successResultOf(d), 7)

    def test_returns_at_once_when_already_newer(self) -> None:
        self.notifier.on_new_events("!a:x", 3)
        self.assertEqual(self.successResultOf(self._waiter(["!a:x"], 2, 30_000)), 3)
        self.assertEqual(self.successResultOf(self._waiter(None, 0, 30_000)), 3)
        d = self._waiter(["!a:x"], 3, 30_000)
        self.assertNoResult(d)
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(d), 3)

    def test_timeout_returns_position(self) -> None:
        d = self._waiter(["!a:x"], 4, 10_000)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d), 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_timeout_and_cap(self) -> None:
        self.assertEqual(self.successResultOf(self._waiter(["!a:x"], 0, 0)), 0)
        d = self._waiter(["!a:x"], 0, 10**12)
        self.clock.advance(MAX_WAIT_MS / 1000 + 1)
        self.assertEqual(self.successResultOf(d), 0)

    def test_user_events_wake_the_user(self) -> None:
        d = self._waiter([], 0, 30_000, user="@bob:x")
        self.notifier.on_user_event("@carol:x", 2)
        self.assertNoResult(d)
        self.notifier.on_user_event("@bob:x", 3)
        self.assertEqual(self.successResultOf(d), 3)

    def test_backfill_orderings_ignored(self) -> None:
        d = self._waiter(None, 0, 30_000)
        self.notifier.on_new_events("!a:x", -4)
        self.assertNoResult(d)
        self.notifier.on_new_events("!a:x", 1)
        self.assertEqual(self.successResultOf(d), 1)


class NotifierStoreTests(SqliteMixin, unittest.TestCase):
    async def test_events_stored_before_start_answer_at_once(self) -> None:
        store = await self.make_store()
        engine = make_engine(store)
        room_id = await engine.create_room(ALICE)
        fresh = Notifier(clock=Clock(), store=store)
        top = await store.get_current_stream_ordering()
        self.assertEqual(await fresh.wait_for_events([room_id], 0, 30_000), top)
        self.assertEqual(await fresh.wait_for_events(None, 0, 30_000), top)

    async def test_invite_wakes_invitee(self) -> None:
        store = await self.make_store()
        engine = make_engine(store)
        room_id = await engine.create_room(ALICE)
        position = await store.get_current_stream_ordering()
        d = Deferred.fromCoroutine(
            engine.notifier.wait_for_events([], position, 30_000, user_id="@dan:a.example")
        )
        self.assertNoResult(d)
        await engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            content={"membership": "invite"},
            state_key="@dan:a.example",
        )
        self.assertGreater(self.successResultOf(d), position)
