"""Reads and writes of the partial-state resync (``matrixfed.joins.partial``).

While a room is in partial state, events received over federation are
checked against their auth events only (the state lacks most members). When
the resync has the full state it re-checks them and calls
``reject_events`` for the ones the full state does not allow.

``reject_events`` is one transaction: the events are flagged rejected (never
un-rejected: an event already rejected keeps its reason), they stop being
forward extremities, and their accepted prev_events that nothing accepted
points at any more become extremities again, so the next local event
continues the DAG without them. State groups already computed *after* those
events are not rewritten (the store cannot rewrite an event's state); the
caller sets the room's current state without them.
"""

from __future__ import annotations

from collections.abc import Mapping

from matrixfed.storage.base import StoreBase
from matrixfed.storage.database import Transaction

__all__ = ["PartialStateStoreMixin"]


class PartialStateStoreMixin(StoreBase):
    """Helpers of the partial-state resync (module docstring)."""

    async def get_events_received_after(self, room_id: str, event_id: str) -> list[str]:
        """Non-outlier, non-rejected events of ``room_id`` stored after ``event_id``.

        In stream order (the order they were stored, prev_events first);
        empty when ``event_id`` is unknown.
        """

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute("SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,))
            row = txn.fetchone()
            if row is None:
                return []
            txn.execute(
                "SELECT event_id FROM events WHERE room_id = ? AND stream_ordering > ?"
                " AND outlier = 0 AND rejected_reason IS NULL ORDER BY stream_ordering",
                (room_id, row[0]),
            )
            return [r[0] for r in txn.fetchall()]

        return await self.db.run_interaction("get_events_received_after", txn_fn)

    async def reject_events(self, room_id: str, reasons: Mapping[str, str]) -> None:
        """Flag stored events of ``room_id`` as rejected (module docstring).

        Args:
            room_id: the room the events belong to.
            reasons: event_id -> why the auth rules reject it.
        """
        if not reasons:
            return

        def txn_fn(txn: Transaction) -> None:
            ids = sorted(reasons)
            txn.executemany(
                "UPDATE events SET rejected_reason = ?"
                " WHERE event_id = ? AND room_id = ? AND rejected_reason IS NULL",
                [(reasons[e], e, room_id) for e in ids],
            )
            txn.executemany(
                "DELETE FROM event_forward_extremities WHERE room_id = ? AND event_id = ?",
                [(room_id, e) for e in ids],
            )
            prevs: set[str] = set()
            for eid in ids:
                txn.execute("SELECT prev_event_id FROM event_edges WHERE event_id = ?", (eid,))
                prevs.update(r[0] for r in txn.fetchall())
            for prev in sorted(prevs - set(ids)):
                txn.execute(
                    "SELECT 1 FROM events WHERE event_id = ? AND room_id = ? AND outlier = 0"
                    " AND rejected_reason IS NULL AND soft_failed = 0",
                    (prev, room_id),
                )
                if txn.fetchone() is None:
                    continue
                txn.execute(
                    "SELECT 1 FROM event_edges e JOIN events ev ON ev.event_id = e.event_id"
                    " WHERE e.prev_event_id = ? AND ev.outlier = 0"
                    " AND ev.rejected_reason IS NULL AND ev.soft_failed = 0",
                    (prev,),
                )
                if txn.fetchone() is not None:
                    continue  # still continued by an accepted event
                txn.execute(
                    "INSERT INTO event_forward_extremities (room_id, event_id) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (room_id, prev),
                )

        await self.db.run_interaction("reject_events", txn_fn)
