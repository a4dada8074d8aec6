"""Writing events: ``persist_events``, one transaction per batch.

What one call guarantees (all or nothing: any exception rolls it all back):

* the room row exists (created from the batch's room version; ``creator``
  filled from an ``m.room.create`` event in the batch);
* each event not stored before is written with its JSON, DAG edges
  (``prev_events``), auth edges, redaction target, a fresh stream ordering
  (negative, from a separate counter, for ``backfilled`` batches) and its
  rejected / soft-failed / outlier flags. Events already stored are skipped,
  except an outlier arriving again as a non-outlier, which is "de-outliered"
  (gets state, flags and a new stream ordering);
* each non-outlier event gets two state groups: the state *before* it (what
  it was authorised against) and the state *after* it (before + the event
  itself if it is a state event that was not rejected). See ``state.py``;
* forward extremities: accepted (neither rejected nor soft-failed)
  non-outlier events become extremities unless something already points at
  them, and replace the extremities they point at. Backward extremities
  (prev_events we lack) are maintained for backfill;
* current state: ``current_state`` if given, else the state after the
  forward extremities when they all share one state group. When they
  disagree the caller must resolve the state and pass ``current_state``:
  ``StateResolutionRequired`` is raised (and nothing is written).
  Backfilled batches never touch extremities or current state.

All rows go in with a handful of multi-row statements, whatever the batch
size. Where the state before an event comes from (``EventWithContext``):
an existing group id, a full state map (stored as a delta from
``state_parent_hint``, or from the state after the first prev event we have),
or nothing, in which case the event's prev_events (in the batch or stored)
must all have the same state after them (an event without prev_events, the
create event, has the empty state before it).

Concurrency: the room row is locked first (PostgreSQL ``FOR UPDATE``), so
writers of one room are serialised; stream orderings are allocated last, so
the global counter's lock is held only for the final inserts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

import attrs

from matrixfed.events.model import Event
from matrixfed.events.storedjson import encode_pdu
from matrixfed.storage.base import StoreBase
from matrixfed.storage.cache import LruCache
from matrixfed.storage.database import Transaction
from matrixfed.storage.state import (
    SQL_CHUNK,
    StateDelta,
    StateGroupBuilder,
    StateKey,
    StateMap,
    diff_states,
    load_event_state_groups,
)

EVENTS_STREAM = "events_stream"
BACKFILL_STREAM = "events_backfill_stream"


class MissingStateError(ValueError):
    """The state before a non-outlier event cannot be determined from the batch."""


class StateResolutionRequired(Exception):
    """The forward extremities after the batch have different states.

    Attributes:
        room_id: the room.
        extremities: the forward extremities the batch would leave.
    """

    def __init__(self, room_id: str, extremities: Sequence[str]) -> None:
        super().__init__(f"{room_id}: {len(extremities)} forward extremities with different state")
        self.room_id = room_id
        self.extremities = tuple(extremities)


@attrs.frozen(slots=True)
class EventWithContext:
    """One event to persist, with what we know about it.

    Attributes:
        event: the event (already validated and checked by the caller).
        outlier: we do not have the state at this event (auth chain or state
            of a join, fetched events); outliers get no state groups.
        rejected_reason: why the auth rules rejected it; None if accepted.
        soft_failed: accepted but failed against the current state.
        state_before: for non-outliers, the state before the event: a state
            group id, a full state map, or None to take it from the
            prev_events (they must agree).
        state_parent_hint: with a state map, a group to store it as a delta of.
        encoded: ``encode_pdu(event.pdu)`` when the caller computed it already
            (a join encodes on its verify threads, off the persist's path).
    """

    event: Event
    outlier: bool = False
    rejected_reason: str | None = None
    soft_failed: bool = False
    state_before: int | Mapping[StateKey, str] | None = None
    state_parent_hint: int | None = None
    encoded: str | None = None


class PersistedEvent(NamedTuple):
    """Where a newly stored event went (immutable; a NamedTuple because a join
    makes tens of thousands of them).

    ``state_group_before``/``after`` are None for outliers.
    """

    event_id: str
    stream_ordering: int
    outlier: bool
    state_group_before: int | None
    state_group_after: int | None


def _in(n: int) -> str:
    return ",".join("?" * n)


def _chunks(seq: Sequence[Any]) -> list[Sequence[Any]]:
    return [seq[i : i + SQL_CHUNK] for i in range(0, len(seq), SQL_CHUNK)]


class PersistEventsMixin(StoreBase):
    """``persist_events``."""

    async def persist_events(
        self,
        room_id: str,
        events_with_context: Sequence[EventWithContext],
        *,
        backfilled: bool = False,
        current_state: Mapping[StateKey, str] | None = None,
        partial_state: bool | None = None,
        partial_state_servers: Sequence[str] = (),
    ) -> list[PersistedEvent]:
        """Store a batch of events of one room in one transaction (module docstring).

        Args:
            room_id: the room every event belongs to.
            events_with_context: the events in an order where prev_events come
                before the events that point at them (for derived state).
            backfilled: the events are history fetched by backfill.
            current_state: the room's resolved current state after the batch,
                when the caller computed it (forks).
            partial_state: when not None, set the room's partial-state flag in
                the same transaction (a partial-state join and its resync).
            partial_state_servers: with ``partial_state``, the room's
                ``partial_state_servers`` rows are replaced by these (the
                send_join answer's servers_in_room; cleared when False).

        Returns:
            One PersistedEvent per newly stored (or de-outliered) event, in
            batch order; events already stored are left out.

        Raises:
            ValueError: an event of another room or room version.
            MissingStateError: a non-outlier's state before cannot be found.
            StateResolutionRequired: see the module docstring.
        """
        received_ts = self._now_ms()
        return await self.db.run_interaction(
            "persist_events",
            _persist_txn,
            room_id,
            list(events_with_context),
            backfilled,
            current_state,
            received_ts,
            self._state_cache,
            self._event_cache,
            partial_state,
            partial_state_servers,
        )


def _persist_txn(
    txn: Transaction,
    room_id: str,
    items: list[EventWithContext],
    backfilled: bool,
    current_state: Mapping[StateKey, str] | None,
    received_ts: int,
    state_cache: LruCache[int, StateMap],
    event_cache: LruCache[str, Event],
    partial_state: bool | None = None,
    partial_state_servers: Sequence[str] = (),
) -> list[PersistedEvent]:
    if not items and current_state is None:
        return []
    old_cur = _lock_room(txn, room_id, items, received_ts)
    if partial_state is not None:
        txn.execute(
            "UPDATE rooms SET partial_state = ? WHERE room_id = ?",
            (1 if partial_state else 0, room_id),
        )
        txn.execute("DELETE FROM partial_state_servers WHERE room_id = ?", (room_id,))
        if partial_state and partial_state_servers:
            txn.executemany(
                "INSERT INTO partial_state_servers (room_id, server_name) VALUES (?, ?)",
                [(room_id, s) for s in sorted(set(partial_state_servers))],
            )

    # --- what is new --------------------------------------------------------
    batch: dict[str, EventWithContext] = {}
    for item in items:
        batch.setdefault(item.event.event_id, item)
    existing: dict[str, bool] = {}  # event_id -> is outlier
    ids = list(batch)
    for chunk in _chunks(ids):
        txn.execute(
            f"SELECT event_id, outlier FROM events WHERE event_id IN ({_in(len(chunk))})", chunk
        )
        for eid, outlier in txn.fetchall():
            existing[eid] = bool(outlier)
    to_insert: list[EventWithContext] = []
    to_deoutlier: list[EventWithContext] = []
    for eid, item in batch.items():
        if eid not in existing:
            to_insert.append(item)
        elif existing[eid] and not item.outlier:
            to_deoutlier.append(item)
    new_ids = {i.event.event_id for i in to_insert} | {i.event.event_id for i in to_deoutlier}
    written = [i for i in batch.values() if i.event.event_id in new_ids]

    # --- state groups ---------------------------------------------------------
    builder = StateGroupBuilder(txn, room_id, state_cache)
    groups = _compute_state_groups(txn, builder, written)

    # --- extremities ------------------------------------------------------
    accepted = [
        i for i in written if not i.outlier and i.rejected_reason is None and not i.soft_failed
    ]
    if not backfilled and accepted:
        _update_forward_extremities(txn, room_id, accepted)
    if accepted:
        _update_backward_extremities(txn, room_id, accepted, batch)

    # --- current state ------------------------------------------------------
    new_cur: int | None = None
    if not backfilled:
        if current_state is not None:
            new_cur = builder.from_state(current_state, old_cur)
        elif accepted:
            new_cur = _group_of_extremities(txn, room_id, groups)
    cur_delta: StateDelta | None = None
    if new_cur is not None and new_cur != old_cur:
        if old_cur is not None:
            cur_delta = builder.delta_between(old_cur, new_cur)
        if cur_delta is None:
            txn.execute(
                "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?",
                (room_id,),
            )
            stored = {(t, sk): eid for t, sk, eid in txn.fetchall()}
            cur_delta = diff_states(stored, builder.get_state(new_cur))

    # --- writes ---------------------------------------------------------------
    mapping = builder.flush()

    def real(g: int) -> int:
        return mapping[g] if g < 0 else g

    results = _write_events(
        txn, room_id, to_insert, to_deoutlier, written, groups, real, backfilled, received_ts
    )
    if new_cur is not None and new_cur != old_cur:
        assert cur_delta is not None
        _apply_current_state(txn, room_id, cur_delta, batch, fresh=old_cur is None)
        txn.execute(
            "UPDATE rooms SET current_state_group = ? WHERE room_id = ?", (real(new_cur), room_id)
        )
    # Only as many as the cache holds: the rest would be evicted at once.
    cached = written[-event_cache.max_size :] if event_cache.max_size else []
    txn.call_after(event_cache.set_many, [(i.event.event_id, i.event) for i in cached])
    return results


def _lock_room(
    txn: Transaction, room_id: str, items: list[EventWithContext], now: int
) -> int | None:
    """Create the room row if needed, lock it; return its current state group."""
    creator = None
    version_ids = {i.event.room_version.identifier for i in items}
    for item in items:
        ev = item.event
        if ev.room_id != room_id:
            raise ValueError(f"event {ev.event_id} is in {ev.room_id}, not {room_id}")
        if ev.type == "m.room.create" and ev.state_key == "":
            creator = ev.sender
    if len(version_ids) > 1:
        raise ValueError(f"events of several room versions in one batch: {sorted(version_ids)}")
    if version_ids:
        txn.execute(
            "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (room_id) DO NOTHING",
            (room_id, next(iter(version_ids)), creator, now),
        )
    if creator is not None:
        txn.execute(
            "UPDATE rooms SET creator = ? WHERE room_id = ? AND creator IS NULL", (creator, room_id)
        )
    lock = " FOR UPDATE" if txn.engine == "postgres" else ""
    txn.execute(
        f"SELECT room_version, current_state_group FROM rooms WHERE room_id = ?{lock}", (room_id,)
    )
    row = txn.fetchone()
    if row is None:
        raise ValueError(f"unknown room {room_id}")
    if version_ids and row[0] not in version_ids:
        raise ValueError(f"{room_id} is room version {row[0]}, events are {version_ids}")
    return None if row[1] is None else int(row[1])


def _compute_state_groups(
    txn: Transaction, builder: StateGroupBuilder, written: list[EventWithContext]
) -> dict[str, tuple[int, int]]:
    """(before, after) group per non-outlier event; new groups have temporary ids."""
    non_outliers = [i for i in written if not i.outlier]
    if not non_outliers:
        return {}
    batch_ids = {i.event.event_id for i in non_outliers}
    wanted: set[str] = set()
    for item in non_outliers:
        if item.state_before is None or (
            isinstance(item.state_before, Mapping) and item.state_parent_hint is None
        ):
            wanted.update(p for p in item.event.prev_event_ids if p not in batch_ids)
    stored = load_event_state_groups(txn, wanted) if wanted else {}
    groups: dict[str, tuple[int, int]] = {}

    def after_of(eid: str) -> int | None:
        if eid in groups:
            return groups[eid][1]
        if eid in stored:
            return stored[eid][1]
        return None

    for item in non_outliers:
        ev = item.event
        sb = item.state_before
        if isinstance(sb, int):
            builder.check_exists(sb)
            before = sb
        elif sb is None and not ev.prev_event_ids:
            # The create event: nothing comes before it.
            before = builder.snapshot({})
        elif sb is None:
            found = {after_of(p) for p in ev.prev_event_ids}
            if not ev.prev_event_ids or None in found or len(found) != 1:
                raise MissingStateError(
                    f"state before {ev.event_id} unknown: its prev_events "
                    f"{list(ev.prev_event_ids)} are missing or have different states"
                )
            before = found.pop()  # type: ignore[assignment]
        else:
            hint = item.state_parent_hint
            if hint is None:
                hint = next(
                    (g for g in (after_of(p) for p in ev.prev_event_ids) if g is not None), None
                )
            before = builder.from_state(sb, hint)
        if ev.is_state() and item.rejected_reason is None:
            after = builder.derive(before, {ev.state_tuple: ev.event_id})
        else:
            after = before
        groups[ev.event_id] = (before, after)
    return groups


def _update_forward_extremities(
    txn: Transaction, room_id: str, accepted: list[EventWithContext]
) -> None:
    prevs = {p for i in accepted for p in i.event.prev_event_ids}
    if prevs:
        txn.executemany(
            "DELETE FROM event_forward_extremities WHERE room_id = ? AND event_id = ?",
            [(room_id, p) for p in prevs],
        )
    candidates = [i.event.event_id for i in accepted if i.event.event_id not in prevs]
    # Events we stored earlier may already point at a candidate (history fetched late).
    has_children: set[str] = set()
    for chunk in _chunks(candidates):
        txn.execute(
            "SELECT DISTINCT e.prev_event_id FROM event_edges e"
            " JOIN events ev ON ev.event_id = e.event_id"
            f" WHERE e.prev_event_id IN ({_in(len(chunk))}) AND ev.outlier = 0"
            " AND ev.rejected_reason IS NULL AND ev.soft_failed = 0",
            chunk,
        )
        has_children.update(r[0] for r in txn.fetchall())
    txn.execute_values(
        "INSERT INTO event_forward_extremities (room_id, event_id) VALUES",
        [(room_id, e) for e in candidates if e not in has_children],
        width=2,
        suffix="ON CONFLICT DO NOTHING",
    )


def _update_backward_extremities(
    txn: Transaction,
    room_id: str,
    accepted: list[EventWithContext],
    batch: Mapping[str, EventWithContext],
) -> None:
    ids = [i.event.event_id for i in accepted]
    txn.executemany(
        "DELETE FROM event_backward_extremities WHERE room_id = ? AND event_id = ?",
        [(room_id, e) for e in ids],
    )
    prevs = sorted(
        {p for i in accepted for p in i.event.prev_event_ids if p not in batch or batch[p].outlier}
    )
    have: set[str] = set()
    for chunk in _chunks(prevs):
        txn.execute(
            f"SELECT event_id FROM events WHERE event_id IN ({_in(len(chunk))}) AND outlier = 0",
            chunk,
        )
        have.update(r[0] for r in txn.fetchall())
    txn.execute_values(
        "INSERT INTO event_backward_extremities (room_id, event_id) VALUES",
        [(room_id, p) for p in prevs if p not in have],
        width=2,
        suffix="ON CONFLICT DO NOTHING",
    )


def _group_of_extremities(
    txn: Transaction, room_id: str, groups: Mapping[str, tuple[int, int]]
) -> int | None:
    txn.execute("SELECT event_id FROM event_forward_extremities WHERE room_id = ?", (room_id,))
    extremities = sorted(r[0] for r in txn.fetchall())
    if not extremities:
        return None
    missing = [e for e in extremities if e not in groups]
    stored = load_event_state_groups(txn, missing) if missing else {}
    stored.update(groups)
    after = {stored[e][1] for e in extremities if e in stored}
    if len(after) == 1 and all(e in stored for e in extremities):
        return after.pop()
    raise StateResolutionRequired(room_id, extremities)


_event_id_of = attrgetter("event.event_id")
_PREV_EVENT_IDS: Callable[[Event], tuple[str, ...]] = attrgetter("prev_event_ids")
_AUTH_EVENT_IDS: Callable[[Event], tuple[str, ...]] = attrgetter("auth_event_ids")

_EVENT_COLUMNS = (
    "event_id",
    "room_id",
    "stream_ordering",
    "type",
    "state_key",
    "sender",
    "membership",
    "depth",
    "origin_server_ts",
    "received_ts",
    "json",
    "rejected_reason",
    "soft_failed",
    "outlier",
)


def _write_events(
    txn: Transaction,
    room_id: str,
    to_insert: list[EventWithContext],
    to_deoutlier: list[EventWithContext],
    written: list[EventWithContext],
    groups: Mapping[str, tuple[int, int]],
    real: Any,
    backfilled: bool,
    received_ts: int,
) -> list[PersistedEvent]:
    n = len(written)
    if n == 0:
        return []
    first = txn.allocate_ids(BACKFILL_STREAM if backfilled else EVENTS_STREAM, n)
    orderings = {
        item.event.event_id: (-(first + k) if backfilled else first + k)
        for k, item in enumerate(written)
    }

    # Rows are generated as copy_rows consumes them, not built as lists: a
    # join's ~60,000 row tuples alive at once cost more in cyclic-GC passes
    # than in building them.
    def event_rows() -> Iterator[tuple[Any, ...]]:
        for item in to_insert:
            ev = item.event
            eid = ev.event_id
            etype = ev.type
            yield (
                eid,
                room_id,
                orderings[eid],
                etype,
                ev.state_key,
                ev.sender,
                ev.membership if etype == "m.room.member" else None,
                ev.depth,
                ev.origin_server_ts,
                received_ts,
                encode_pdu(ev.pdu) if item.encoded is None else item.encoded,
                item.rejected_reason,
                1 if item.soft_failed else 0,
                1 if item.outlier else 0,
            )

    # Edge rows go in primary-key order (event_id, then the referenced ID):
    # event IDs are hashes, in random order each row lands on another B-tree
    # page. The events are sorted by ID once and each one's few references
    # on their own (cheaper than sorting all the row tuples). Event rows stay
    # in stream order: three of the events table's four indexes are ordered
    # by stream_ordering.
    by_id = sorted(to_insert, key=_event_id_of)

    def ref_rows(refs: Callable[[Event], tuple[str, ...]]) -> Iterator[tuple[str, str]]:
        for item in by_id:
            ev = item.event
            eid = ev.event_id
            ids = refs(ev)
            for ref in ids if len(ids) < 2 else sorted(set(ids)):
                yield (eid, ref)

    txn.copy_rows("events", _EVENT_COLUMNS, event_rows())
    txn.copy_rows("event_edges", ("event_id", "prev_event_id"), ref_rows(_PREV_EVENT_IDS))
    txn.copy_rows("event_auth", ("event_id", "auth_id"), ref_rows(_AUTH_EVENT_IDS))
    redaction_rows = [
        (i.event.event_id, redacts)
        for i in to_insert
        if i.event.type == "m.room.redaction" and (redacts := i.event.redacts) is not None
    ]
    txn.execute_values(
        "INSERT INTO redactions (event_id, redacts) VALUES",
        redaction_rows,
        width=2,
        suffix="ON CONFLICT DO NOTHING",
    )
    if to_deoutlier:
        txn.executemany(
            "UPDATE events SET outlier = 0, stream_ordering = ?, rejected_reason = ?,"
            " soft_failed = ? WHERE event_id = ?",
            [
                (
                    orderings[i.event.event_id],
                    i.rejected_reason,
                    1 if i.soft_failed else 0,
                    i.event.event_id,
                )
                for i in to_deoutlier
            ],
        )
    txn.copy_rows(
        "event_to_state_groups",
        ("event_id", "state_group_before", "state_group_after"),
        ((eid, real(groups[eid][0]), real(groups[eid][1])) for eid in sorted(groups)),
    )
    out: list[PersistedEvent] = []
    for item in written:
        eid = item.event.event_id
        g = groups.get(eid)
        out.append(
            PersistedEvent(
                event_id=eid,
                stream_ordering=orderings[eid],
                outlier=item.outlier,
                state_group_before=None if g is None else real(g[0]),
                state_group_after=None if g is None else real(g[1]),
            )
        )
    return out


def _apply_current_state(
    txn: Transaction,
    room_id: str,
    delta: StateDelta,
    batch: Mapping[str, EventWithContext],
    *,
    fresh: bool,
) -> None:
    """Apply ``delta`` to current_state_events (``fresh``: the room has no rows yet)."""
    removed = [(room_id, t, sk) for (t, sk), eid in delta.items() if eid is None]
    if removed:
        txn.executemany(
            "DELETE FROM current_state_events WHERE room_id = ? AND type = ? AND state_key = ?",
            removed,
        )
    current = {k: eid for k, eid in delta.items() if eid is not None}
    if not current:
        return
    memberships: dict[str, str | None] = {}
    unknown: list[str] = []
    for (t, _sk), eid in current.items():
        if t != "m.room.member":
            continue
        item = batch.get(eid)
        if item is not None:
            memberships[eid] = item.event.membership
        else:
            unknown.append(eid)
    for chunk in _chunks(unknown):
        txn.execute(
            f"SELECT event_id, membership FROM events WHERE event_id IN ({_in(len(chunk))})", chunk
        )
        memberships.update({eid: m for eid, m in txn.fetchall()})

    # Primary-key order (room_id, type, state_key), generated (see _write_events).
    def rows() -> Iterator[tuple[str, str, str, str, str | None]]:
        for key in sorted(current):
            eid = current[key]
            yield (room_id, key[0], key[1], eid, memberships.get(eid))

    if fresh:
        txn.copy_rows(
            "current_state_events",
            ("room_id", "type", "state_key", "event_id", "membership"),
            rows(),
        )
        return
    txn.execute_values(
        "INSERT INTO current_state_events (room_id, type, state_key, event_id, membership) VALUES",
        list(rows()),
        width=5,
        suffix="ON CONFLICT (room_id, type, state_key) DO UPDATE SET"
        " event_id = excluded.event_id, membership = excluded.membership",
    )
