"""Reads and writes of the partial-state resync (``matrixfed.joins.partial``).

While a room is in partial state, events received over federation are
checked against their auth events only (the state lacks most members), and
the state groups of our join and of every event stored after it are built
from the partial state. When the resync has the full state it recomputes the
state at each of those events and calls ``complete_partial_state``, ONE
transaction that:

* stores the fetched state and auth chain events (outliers) and sets the
  room's current state (``persist_events``' transaction function, so the
  same rules apply), clears the partial-state flag and the
  ``partial_state_servers`` rows;
* flags the events the full state refuses: rejected (they fail the auth
  rules against the state before them) or soft-failed (they fail against
  the room's current state when they arrived). Either way they stop being
  forward extremities, and their accepted prev_events that nothing accepted
  points at any more become extremities again. A flag is never lifted;
* points our join and every event stored after it at new state groups
  holding the full state before and after them (``StateRewrite``: changes
  relative to the full state before our join; the groups are stored as
  deltas of one group holding that state, so the rewrite costs rows in
  proportion to the changes, not to the room's size). The partial groups
  stay, unused (groups are immutable: cached readers are never wrong);
* records the change of current state in ``state_delta_stream`` at a new
  position of the events stream (``state_deltas.py``), for /sync.

A crash anywhere leaves the room partial with nothing of this written; the
resync runs again at start-up.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import attrs

from matrixfed.storage.base import StoreBase
from matrixfed.storage.cache import LruCache
from matrixfed.storage.database import Transaction
from matrixfed.storage.persist import (
    EVENTS_STREAM,
    EventWithContext,
    PersistedEvent,
    _lock_room,
    _persist_txn,
)
from matrixfed.storage.state import (
    StateDelta,
    StateGroupBuilder,
    StateKey,
    StateMap,
    load_event_state_groups,
)
from matrixfed.storage.state_deltas import record_state_delta

__all__ = ["EraEvent", "PartialStateStoreMixin", "StateRewrite"]


@attrs.frozen(slots=True)
class EraEvent:
    """A non-outlier event stored after our join (``get_partial_era_events``)."""

    event_id: str
    rejected_reason: str | None
    soft_failed: bool


@attrs.frozen(slots=True)
class StateRewrite:
    """The full state before and after one event, relative to a base state.

    Attributes:
        event_id: the event (our join or an event stored after it).
        before: changes (None: key absent) turning the full state before our
            join into the full state before the event.
        after: the same for the state after the event.
    """

    event_id: str
    before: Mapping[StateKey, str | None]
    after: Mapping[StateKey, str | None]


def _key(changes: Mapping[StateKey, str | None]) -> tuple[tuple[StateKey, str | None], ...]:
    # Keys are unique, so sorting never compares the values (str or None).
    return tuple(sorted(changes.items(), key=lambda kv: kv[0]))


class PartialStateStoreMixin(StoreBase):
    """Helpers of the partial-state resync (module docstring)."""

    async def get_partial_era_events(self, room_id: str, event_id: str) -> list[EraEvent]:
        """Non-outlier events of ``room_id`` stored after ``event_id`` (live stream).

        Rejected and soft-failed ones included; in stream order (the order
        they were stored, prev_events first); empty when ``event_id`` is
        unknown. Backfilled history (negative orderings) is not included.
        """

        def txn_fn(txn: Transaction) -> list[EraEvent]:
            txn.execute("SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,))
            row = txn.fetchone()
            if row is None:
                return []
            txn.execute(
                "SELECT event_id, rejected_reason, soft_failed FROM events"
                " WHERE room_id = ? AND stream_ordering > ? AND outlier = 0"
                " ORDER BY stream_ordering",
                (room_id, row[0]),
            )
            return [EraEvent(r[0], r[1], bool(r[2])) for r in txn.fetchall()]

        return await self.db.run_interaction("get_partial_era_events", txn_fn)

    async def complete_partial_state(
        self,
        room_id: str,
        items: Sequence[EventWithContext],
        *,
        join_event_id: str,
        state_before_join: Mapping[StateKey, str],
        rewrites: Sequence[StateRewrite],
        rejected: Mapping[str, str],
        soft_failed: Collection[str],
        current_state: Mapping[StateKey, str],
    ) -> tuple[list[PersistedEvent], int | None]:
        """End the partial state of ``room_id`` in one transaction (module docstring).

        Args:
            items: the fetched events to store (outliers).
            join_event_id: our join; its old state group before is the hint
                the full state before it is stored against.
            state_before_join: the full state before our join (the base of
                every ``StateRewrite``).
            rewrites: the full state at our join and each event after it.
            rejected: event_id -> why the full state refuses it.
            soft_failed: events that fail the current state they arrived in.
            current_state: the room's full current state.

        Returns:
            (the newly stored events, the events-stream position of the
            current-state change; None when the current state did not change).
        """
        received_ts = self._now_ms()
        state_cache = self._state_cache
        event_cache = self._event_cache

        def txn_fn(txn: Transaction) -> tuple[list[PersistedEvent], int | None]:
            # Locks the room row (and raises ValueError for an unknown room).
            old_cur = _lock_room(txn, room_id, [], received_ts)
            persisted = _persist_txn(
                txn,
                room_id,
                list(items),
                False,
                current_state,
                received_ts,
                state_cache,
                event_cache,
                False,
                (),
            )
            _flag_events(txn, room_id, rejected, soft_failed)
            _rewrite_state_groups(
                txn, room_id, state_cache, join_event_id, state_before_join, rewrites
            )
            txn.execute("SELECT current_state_group FROM rooms WHERE room_id = ?", (room_id,))
            row = txn.fetchone()
            assert row is not None and row[0] is not None
            new_cur = int(row[0])
            position = None
            if new_cur != old_cur:
                position = txn.allocate_ids(EVENTS_STREAM, 1)
                record_state_delta(txn, position, room_id, old_cur, new_cur)
            return persisted, position

        return await self.db.run_interaction("complete_partial_state", txn_fn)


def _rewrite_state_groups(
    txn: Transaction,
    room_id: str,
    state_cache: LruCache[int, StateMap],
    join_event_id: str,
    state_before_join: Mapping[StateKey, str],
    rewrites: Sequence[StateRewrite],
) -> None:
    """Point each rewritten event at groups holding its full state (module docstring)."""
    if not rewrites:
        return
    builder = StateGroupBuilder(txn, room_id, state_cache)
    old = load_event_state_groups(txn, [join_event_id])
    base = builder.from_state(state_before_join, old[join_event_id][0] if old else None)
    groups: dict[tuple[tuple[StateKey, str | None], ...], int] = {(): base}

    def group_of(
        changes: Mapping[StateKey, str | None],
        parent: int,
        parent_changes: Mapping[StateKey, str | None],
    ) -> int:
        key = _key(changes)
        found = groups.get(key)
        if found is None:
            # Stored as a delta of the parent when it is close (the state
            # after an event is the state before it plus one entry).
            step: StateDelta = {k: v for k, v in changes.items() if parent_changes.get(k) != v}
            for k in parent_changes:
                if k not in changes:
                    step[k] = state_before_join.get(k)
            found = groups[key] = builder.derive(parent, step)
        return found

    rows: list[tuple[int, int, str]] = []
    for rewrite in rewrites:
        before = group_of(rewrite.before, base, {})
        after = group_of(rewrite.after, before, rewrite.before)
        rows.append((before, after, rewrite.event_id))
    mapping = builder.flush()
    txn.executemany(
        "UPDATE event_to_state_groups SET state_group_before = ?, state_group_after = ?"
        " WHERE event_id = ?",
        [(mapping.get(b, b), mapping.get(a, a), eid) for b, a, eid in rows],
    )


def _flag_events(
    txn: Transaction, room_id: str, rejected: Mapping[str, str], soft_failed: Collection[str]
) -> None:
    """Flag events rejected or soft-failed and repair the forward extremities."""
    ids = sorted(set(rejected) | set(soft_failed))
    if not ids:
        return
    txn.executemany(
        "UPDATE events SET rejected_reason = ?"
        " WHERE event_id = ? AND room_id = ? AND rejected_reason IS NULL",
        [(rejected[e], e, room_id) for e in sorted(rejected)],
    )
    txn.executemany(
        "UPDATE events SET soft_failed = 1 WHERE event_id = ? AND room_id = ?",
        [(e, room_id) for e in sorted(set(soft_failed) - set(rejected))],
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
