"""Changes of a room's current state that no timeline event carries.

The completion of a partial-state join (``partial_state.py``) adds the
members the join's answer omitted: outliers, in no timeline, so a client
that synced during the partial phase would never hear of them. The
transaction that changes the current state that way also takes a position
in the events stream and records (position, room, old current state group,
new current state group) in ``state_delta_stream``. ``/sync`` counts a room
with such a row after its ``since`` as changed and puts the state entries
that differ between the two groups in the room's ``state`` section.
"""

from __future__ import annotations

import attrs

from matrixfed.storage.base import StoreBase
from matrixfed.storage.database import Transaction

__all__ = ["CurrentStateChange", "StateDeltaStoreMixin", "record_state_delta"]


@attrs.frozen(slots=True)
class CurrentStateChange:
    """One recorded change of a room's current state (groups are immutable)."""

    stream_ordering: int
    room_id: str
    from_group: int | None
    to_group: int


def record_state_delta(
    txn: Transaction, position: int, room_id: str, from_group: int | None, to_group: int
) -> None:
    """Record a current-state change at ``position`` (allocated from the events stream)."""
    txn.execute(
        "INSERT INTO state_delta_stream (stream_ordering, room_id, from_group, to_group)"
        " VALUES (?, ?, ?, ?)",
        (position, room_id, from_group, to_group),
    )


class StateDeltaStoreMixin(StoreBase):
    """Reads of ``state_delta_stream`` (module docstring)."""

    async def get_state_deltas(self, since: int, upto: int) -> dict[str, list[CurrentStateChange]]:
        """room_id -> the changes with ``since < stream_ordering <= upto``, oldest first."""

        def txn_fn(txn: Transaction) -> dict[str, list[CurrentStateChange]]:
            txn.execute(
                "SELECT stream_ordering, room_id, from_group, to_group FROM state_delta_stream"
                " WHERE stream_ordering > ? AND stream_ordering <= ? ORDER BY stream_ordering",
                (since, upto),
            )
            out: dict[str, list[CurrentStateChange]] = {}
            for pos, room_id, from_group, to_group in txn.fetchall():
                out.setdefault(room_id, []).append(
                    CurrentStateChange(
                        int(pos),
                        room_id,
                        None if from_group is None else int(from_group),
                        int(to_group),
                    )
                )
            return out

        return await self.db.run_interaction("get_state_deltas", txn_fn)
