"""Wake waiters (``/sync`` long polls) when events are persisted.

The room engine calls ``on_new_events(room_id, stream_ordering)`` after every
commit that added timeline events, and ``on_user_event(user_id, ordering)``
for membership events about a user (an invite to a room the user is not in
yet must wake that user's ``/sync``). ``wait_for_events`` returns at once when
something newer than ``from_ordering`` is known for the watched rooms or user,
otherwise waits until such a notification or the timeout.

Guarantees: a notification that arrives after ``wait_for_events`` was called
is never missed (the waiter is registered before the store is asked, when a
store is given). Timeouts run on the injected clock, so tests use
``task.Clock``. Nothing here touches the network; the store (optional) is only
read, to answer for events persisted before the process started.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

log = Logger()

# A long poll may not hold a waiter longer than this (clients ask for 30 s; a
# bad client asking for days must not pin memory).
MAX_WAIT_MS = 10 * 60 * 1000


class _Clock(Protocol):
    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any: ...


class _ChangesSource(Protocol):
    async def get_rooms_changed_since(self, from_ordering: int) -> dict[str, int]: ...

    async def get_current_stream_ordering(self) -> int: ...


class _Waiter:
    __slots__ = ("rooms", "user_id", "from_ordering", "deferred")

    def __init__(
        self, rooms: frozenset[str] | None, user_id: str | None, from_ordering: int
    ) -> None:
        self.rooms = rooms
        self.user_id = user_id
        self.from_ordering = from_ordering
        self.deferred: Deferred[None] = Deferred()

    def wants_room(self, room_id: str, ordering: int) -> bool:
        return ordering > self.from_ordering and (self.rooms is None or room_id in self.rooms)

    def wants_user(self, user_id: str, ordering: int) -> bool:
        return ordering > self.from_ordering and user_id == self.user_id


class Notifier:
    """In-memory stream positions plus waiters. See the module docstring."""

    def __init__(self, *, clock: _Clock, store: _ChangesSource | None = None) -> None:
        """Create the notifier.

        Args:
            clock: IReactorTime (``callLater``) for timeouts.
            store: optional; asked for rooms changed since a position, so that
                waits for events persisted before start-up return at once.
        """
        self._clock = clock
        self._store = store
        self._current = 0
        self._room_latest: dict[str, int] = {}
        self._user_latest: dict[str, int] = {}
        self._waiters: set[_Waiter] = set()

    @property
    def current_ordering(self) -> int:
        """The highest stream ordering notified so far."""
        return self._current

    def on_new_events(self, room_id: str, max_stream_ordering: int) -> None:
        """Events up to ``max_stream_ordering`` of ``room_id`` were committed."""
        if max_stream_ordering <= 0:
            # Backfilled history (negative orderings) is not news to /sync.
            return
        self._current = max(self._current, max_stream_ordering)
        if self._room_latest.get(room_id, 0) < max_stream_ordering:
            self._room_latest[room_id] = max_stream_ordering
        for waiter in [w for w in self._waiters if w.wants_room(room_id, max_stream_ordering)]:
            self._wake(waiter)

    def on_user_event(self, user_id: str, ordering: int) -> None:
        """Something concerning ``user_id`` (an invite, a membership) happened."""
        if ordering <= 0:
            return
        self._current = max(self._current, ordering)
        if self._user_latest.get(user_id, 0) < ordering:
            self._user_latest[user_id] = ordering
        for waiter in [w for w in self._waiters if w.wants_user(user_id, ordering)]:
            self._wake(waiter)

    def wake_user(self, user_id: str) -> None:
        """Wake ``user_id``'s waiters whatever their position: news outside the
        stream, e.g. an invite received over federation for a room we are not in."""
        for waiter in [w for w in self._waiters if w.user_id == user_id]:
            self._wake(waiter)

    def _wake(self, waiter: _Waiter) -> None:
        self._waiters.discard(waiter)
        if not waiter.deferred.called:
            waiter.deferred.callback(None)

    def _known_news(self, waiter: _Waiter) -> bool:
        if waiter.user_id is not None:
            if self._user_latest.get(waiter.user_id, 0) > waiter.from_ordering:
                return True
        if waiter.rooms is None:
            return self._current > waiter.from_ordering
        return any(self._room_latest.get(r, 0) > waiter.from_ordering for r in waiter.rooms)

    async def _stored_news(self, waiter: _Waiter) -> bool:
        if self._store is None:
            return False
        if waiter.rooms is None:
            current = await self._store.get_current_stream_ordering()
            self._current = max(self._current, current)
            return current > waiter.from_ordering
        if not waiter.rooms:
            return False
        changed = await self._store.get_rooms_changed_since(waiter.from_ordering)
        for room_id, ordering in changed.items():
            self._current = max(self._current, ordering)
            if self._room_latest.get(room_id, 0) < ordering:
                self._room_latest[room_id] = ordering
        return any(r in changed for r in waiter.rooms)

    async def wait_for_events(
        self,
        room_ids: Collection[str] | None,
        from_ordering: int,
        timeout_ms: int,
        *,
        user_id: str | None = None,
    ) -> int:
        """Wait until something newer than ``from_ordering`` concerns the caller.

        Args:
            room_ids: the rooms to watch; None watches every room.
            from_ordering: the stream position the caller has seen.
            timeout_ms: how long to wait at most (capped at MAX_WAIT_MS); 0
                only checks.
            user_id: also wake for events concerning this user (invites).

        Returns:
            The highest stream ordering known (at least ``from_ordering``);
            equal to ``from_ordering`` when nothing happened anywhere.
        """
        rooms = None if room_ids is None else frozenset(room_ids)
        waiter = _Waiter(rooms, user_id, from_ordering)
        if self._known_news(waiter):
            return max(self._current, from_ordering)
        # Registered before the store is asked: a notification racing the
        # query wakes the waiter instead of being lost.
        self._waiters.add(waiter)
        try:
            if await self._stored_news(waiter):
                return max(self._current, from_ordering)
            if waiter.deferred.called:
                return max(self._current, from_ordering)
            timeout = min(max(timeout_ms, 0), MAX_WAIT_MS) / 1000.0
            if timeout <= 0:
                return max(self._current, from_ordering)
            call: Any = self._clock.callLater(timeout, self._wake, waiter)
            try:
                await waiter.deferred
            except CancelledError:
                raise
            finally:
                if call.active():
                    call.cancel()
            return max(self._current, from_ordering)
        finally:
            self._waiters.discard(waiter)
