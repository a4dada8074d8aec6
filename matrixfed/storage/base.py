"""What every store mixin shares: the database, the clock and the caches.

Caches hold immutable values only (events by ID, full states by state group
ID) and are filled after the writing transaction committed, so they are never
stale. They are bounded LRUs (see ``cache.py``).
"""

from __future__ import annotations

from typing import Protocol

from matrixfed.events.model import Event
from matrixfed.storage.cache import LruCache
from matrixfed.storage.database import Database

# Events kept in memory by ID (an event is ~1-2 KB of Python objects).
EVENT_CACHE_SIZE = 20_000
# Full room states kept in memory by group (a 50,000-member state is a few MB).
STATE_GROUP_CACHE_SIZE = 32


class Clock(Protocol):
    """What the store needs of an IReactorTime (task.Clock in tests)."""

    def seconds(self) -> float: ...


class StoreBase:
    """Holds the shared dependencies; the mixins add the API."""

    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        event_cache_size: int = EVENT_CACHE_SIZE,
        state_cache_size: int = STATE_GROUP_CACHE_SIZE,
    ) -> None:
        self.db = db
        self._clock = clock
        self._event_cache: LruCache[str, Event] = LruCache(event_cache_size)
        self._state_cache: LruCache[int, dict[tuple[str, str], str]] = LruCache(state_cache_size)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)
