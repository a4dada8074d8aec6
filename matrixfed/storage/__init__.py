"""matrixfed.storage: the adbapi store (SQLite by default, PostgreSQL in production).

``Database`` (database.py) opens the pool and applies the schema migrations;
``Store`` (store.py) is the API over it.
"""

from matrixfed.storage.database import Database, Transaction
from matrixfed.storage.events import EventStatus
from matrixfed.storage.persist import (
    EventWithContext,
    MissingStateError,
    PersistedEvent,
    StateResolutionRequired,
)
from matrixfed.storage.rooms import RoomAlias, RoomInfo
from matrixfed.storage.state import StateKey, StateMap
from matrixfed.storage.store import Store

__all__ = [
    "Database",
    "EventStatus",
    "EventWithContext",
    "MissingStateError",
    "PersistedEvent",
    "RoomAlias",
    "RoomInfo",
    "StateKey",
    "StateMap",
    "StateResolutionRequired",
    "Store",
    "Transaction",
]
