"""``Store``: the one object the rest of matrixfed is given as ``store=``.

It combines the event writer (``persist.py``), event reads (``events.py``),
state reads (``state.py``), rooms/aliases/memberships (``rooms.py``), the
partial-state resync's writes (``partial_state.py``) and the current-state
changes /sync reads (``state_deltas.py``) over
one ``Database``. Every method is ``async`` and runs its SQL in one
transaction on the database's thread pool; see each module for what it
guarantees.
"""

from __future__ import annotations

from matrixfed.storage.events import EventsStoreMixin
from matrixfed.storage.partial_state import PartialStateStoreMixin
from matrixfed.storage.persist import PersistEventsMixin
from matrixfed.storage.profiles import ProfileStoreMixin
from matrixfed.storage.rooms import RoomStoreMixin
from matrixfed.storage.state import StateStoreMixin
from matrixfed.storage.state_deltas import StateDeltaStoreMixin


class Store(
    PersistEventsMixin,
    EventsStoreMixin,
    StateStoreMixin,
    RoomStoreMixin,
    ProfileStoreMixin,
    PartialStateStoreMixin,
    StateDeltaStoreMixin,
):
    """``Store(db=..., clock=...)``; call ``await db.start()`` before using it."""
