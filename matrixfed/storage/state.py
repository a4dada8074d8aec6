"""Room state stored as shared, delta-encoded state groups.

A state group is one immutable room state (a map ``(type, state_key) ->
event_id``), identified by an integer. Events point at groups
(``event_to_state_groups``: the state *before* and the state *after* each
non-outlier event), so a 10,000-member room stores each state once, not once
per event, and "state before event X" is one lookup plus one group load.

Encoding. Each group is stored as a delta (``state_groups_state`` rows: keys
added or replaced, ``event_id`` NULL for a removed key) against its
``prev_group``; a group with no ``prev_group`` is a full snapshot. Groups form
a tree through ``parent_group`` (the group a new group was derived from, i.e.
the state before the event that changed it). ``prev_group`` is chosen in
levels, like a skip list over that tree:

* ``seq`` counts groups since the last snapshot along ``parent_group`` links;
* a group whose ``seq`` is a multiple of ``DELTA_SPAN ** k`` (and of no
  higher power) is at level ``k``; ``seq == 0`` is a snapshot;
* a level-0 group stores its delta against its parent; a level-k group
  against its nearest ancestor at level >= k (``anchor_k`` of the parent).

So reading a group walks at most ``(DELTA_SPAN - 1) * DELTA_LEVELS + 1``
groups (one recursive SQL query), and each state change is stored about
``DELTA_LEVELS + 1`` times, plus one snapshot every
``DELTA_SPAN ** (DELTA_LEVELS + 1)`` groups: rows grow linearly with the
number of changes instead of quadratically as with a copy per change.

This module has the transaction-level code (``StateGroupBuilder`` for
writers, ``load_state_group`` for readers) and ``StateStoreMixin`` with the
async read API. Groups are immutable: cached by id once committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from matrixfed.storage.base import StoreBase
from matrixfed.storage.cache import LruCache
from matrixfed.storage.database import Transaction

StateKey = tuple[str, str]
StateMap = dict[StateKey, str]
# A delta: new value per key, None where the key is removed.
StateDelta = dict[StateKey, str | None]

# Each level spaces its groups DELTA_SPAN times wider than the one below.
DELTA_SPAN = 16
# Levels of delta groups above level 0; the level above the last is a snapshot.
DELTA_LEVELS = 3
# seq wraps (a snapshot is written) every SNAPSHOT_PERIOD groups along a lineage.
SNAPSHOT_PERIOD = DELTA_SPAN ** (DELTA_LEVELS + 1)
# Group ids per IN (...) query; below SQLite's oldest variable limit (999).
SQL_CHUNK = 500


def group_level(seq: int) -> int:
    """The level of a group with this ``seq``; DELTA_LEVELS + 1 means snapshot."""
    if seq == 0:
        return DELTA_LEVELS + 1
    level = 0
    unit = DELTA_SPAN
    while level < DELTA_LEVELS and seq % unit == 0:
        level += 1
        unit *= DELTA_SPAN
    return level


@attrs.frozen(slots=True)
class GroupMeta:
    """Where a group sits in the delta tree (ids may be temporary in a builder)."""

    id: int
    prev_group: int | None
    parent_group: int | None
    seq: int
    # anchors[k - 1]: nearest ancestor-or-self at level >= k, for k = 1..DELTA_LEVELS
    anchors: tuple[int, ...]


_META_COLUMNS = "id, prev_group, parent_group, seq, " + ", ".join(
    f"anchor{k}" for k in range(1, DELTA_LEVELS + 1)
)


def _meta_from_row(row: tuple[Any, ...]) -> GroupMeta:
    return GroupMeta(
        id=int(row[0]),
        prev_group=None if row[1] is None else int(row[1]),
        parent_group=None if row[2] is None else int(row[2]),
        seq=int(row[3]),
        anchors=tuple(int(x) for x in row[4:]),
    )


def load_group_meta(txn: Transaction, group_ids: Iterable[int]) -> dict[int, GroupMeta]:
    """Metadata of the given stored groups (missing ids are left out)."""
    ids = list(dict.fromkeys(group_ids))
    out: dict[int, GroupMeta] = {}
    for i in range(0, len(ids), SQL_CHUNK):
        chunk = ids[i : i + SQL_CHUNK]
        txn.execute(
            f"SELECT {_META_COLUMNS} FROM state_groups WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for row in txn.fetchall():
            meta = _meta_from_row(row)
            out[meta.id] = meta
    return out


_CHAIN_SQL = """
WITH RECURSIVE chain(id, prev, hop) AS (
    SELECT id, prev_group, 0 FROM state_groups WHERE id = ?
    UNION ALL
    SELECT s.id, s.prev_group, c.hop + 1
    FROM state_groups s JOIN chain c ON s.id = c.prev
    WHERE s.id <> ?
)
SELECT c.hop, c.id, c.prev, ss.type, ss.state_key, ss.event_id
FROM chain c LEFT JOIN state_groups_state ss ON ss.state_group = c.id
ORDER BY c.hop DESC
"""


def _load_chain_delta(txn: Transaction, start: int, stop: int | None) -> tuple[StateDelta, bool]:
    """Compose the deltas from ``start`` down its prev_group chain, ``stop`` excluded.

    Returns:
        (overrides relative to ``stop``'s state, whether the chain ended at
        ``stop``). With ``stop`` None the chain runs to the snapshot and the
        overrides are the full state (with None for nothing).
    """
    txn.prefer_index_lookups()
    txn.execute(_CHAIN_SQL, (start, -1 if stop is None else stop))
    rows = txn.fetchall()
    if not rows:
        raise KeyError(f"unknown state group {start}")
    delta: StateDelta = {}
    # Rows come deepest first; the deepest group's prev tells where the chain ended.
    deepest_prev = rows[0][2]
    for _hop, _gid, _prev, typ, state_key, event_id in rows:
        if typ is None:
            continue  # a group with an empty delta
        delta[(typ, state_key)] = event_id
    ended_at_stop = (deepest_prev is None and stop is None) or (
        stop is not None and deepest_prev is not None and int(deepest_prev) == stop
    )
    return delta, ended_at_stop


def load_state_group(
    txn: Transaction, group: int, cache: LruCache[int, StateMap] | None = None
) -> StateMap:
    """The full state of a stored group (one recursive query)."""
    if cache is not None:
        hit = cache.get(group)
        if hit is not None:
            return dict(hit)
    delta, complete = _load_chain_delta(txn, group, None)
    if not complete:
        raise AssertionError(f"state group {group}: delta chain does not end at a snapshot")
    state = {k: v for k, v in delta.items() if v is not None}
    if cache is not None:
        cache.set(group, dict(state))
    return state


def diff_states(old: Mapping[StateKey, str], new: Mapping[StateKey, str]) -> StateDelta:
    """The delta turning ``old`` into ``new``."""
    delta: StateDelta = {k: v for k, v in new.items() if old.get(k) != v}
    for k in old:
        if k not in new:
            delta[k] = None
    return delta


@attrs.define(slots=True)
class _NewGroup:
    meta: GroupMeta
    # what is stored: the delta against meta.prev_group (full state for a snapshot)
    delta: StateDelta
    # the change against meta.parent_group (None for a snapshot without parent)
    changes: StateDelta | None
    # the full state, when it is at hand anyway (built from a full map)
    full: StateMap | None


class StateGroupBuilder:
    """Creates state groups inside one transaction (see the module docstring).

    New groups get temporary negative ids; ``flush()`` allocates real ids,
    writes the rows and returns the mapping. Groups are immutable, so
    deriving from a group never changes it.
    """

    def __init__(self, txn: Transaction, room_id: str, cache: LruCache[int, StateMap]) -> None:
        self._txn = txn
        self._room_id = room_id
        self._cache = cache
        self._new: dict[int, _NewGroup] = {}
        self._meta: dict[int, GroupMeta] = {}
        self._next_temp = -1

    @property
    def new_group_count(self) -> int:
        return len(self._new)

    def is_new(self, group: int) -> bool:
        return group < 0

    def _get_meta(self, group: int) -> GroupMeta:
        if group < 0:
            return self._new[group].meta
        meta = self._meta.get(group)
        if meta is None:
            found = load_group_meta(self._txn, [group])
            if group not in found:
                raise KeyError(f"unknown state group {group}")
            meta = self._meta[group] = found[group]
        return meta

    def check_exists(self, group: int) -> None:
        """Raise KeyError unless ``group`` is stored or new in this builder."""
        self._get_meta(group)

    def get_state(self, group: int) -> StateMap:
        """The full state of a stored or new group."""
        if group >= 0:
            return load_state_group(self._txn, group, self._cache)
        new = self._new[group]
        if new.full is not None:
            return dict(new.full)
        prev = new.meta.prev_group
        state = {} if prev is None else self.get_state(prev)
        _apply(state, new.delta)
        return state

    def _chain_overrides(self, start: int, stop: int) -> StateDelta:
        """Overrides relative to ``stop`` composed along ``start``'s prev chain."""
        layers: list[StateDelta] = []
        cur: int | None = start
        while cur is not None and cur != stop:
            if cur < 0:
                new = self._new[cur]
                layers.append(new.delta)
                cur = new.meta.prev_group
                continue
            delta, ended = _load_chain_delta(self._txn, cur, stop)
            if not ended:
                raise AssertionError(f"state group {stop} is not on the chain of {start}")
            layers.append(delta)
            cur = stop
        if cur != stop:
            raise AssertionError(f"state group {stop} is not on the chain of {start}")
        out: StateDelta = {}
        for layer in reversed(layers):
            out.update(layer)
        return out

    def _add(
        self,
        *,
        prev: int | None,
        parent: int | None,
        seq: int,
        parent_anchors: tuple[int, ...] | None,
        delta: StateDelta,
        changes: StateDelta | None,
        full: StateMap | None,
    ) -> int:
        gid = self._next_temp
        self._next_temp -= 1
        level = group_level(seq)
        anchors = tuple(
            gid if level >= k or parent_anchors is None else parent_anchors[k - 1]
            for k in range(1, DELTA_LEVELS + 1)
        )
        meta = GroupMeta(id=gid, prev_group=prev, parent_group=parent, seq=seq, anchors=anchors)
        self._new[gid] = _NewGroup(meta=meta, delta=delta, changes=changes, full=full)
        return gid

    def snapshot(self, state: Mapping[StateKey, str]) -> int:
        """A new group holding ``state`` in full, with no parent."""
        full = dict(state)
        return self._add(
            prev=None,
            parent=None,
            seq=0,
            parent_anchors=None,
            delta=dict(full),
            changes=None,
            full=full,
        )

    def derive(self, parent: int, changes: Mapping[StateKey, str | None]) -> int:
        """A new group: ``parent``'s state with ``changes`` applied.

        Returns ``parent`` itself when there is nothing to change.
        """
        if not changes:
            return parent
        pmeta = self._get_meta(parent)
        seq = (pmeta.seq + 1) % SNAPSHOT_PERIOD
        level = group_level(seq)
        ch: StateDelta = dict(changes)
        if seq == 0:
            state = self.get_state(parent)
            _apply(state, ch)
            return self._add(
                prev=None,
                parent=parent,
                seq=0,
                parent_anchors=None,
                delta=dict(state),
                changes=ch,
                full=None,
            )
        if level == 0:
            prev = parent
            delta = dict(ch)
        else:
            prev = pmeta.anchors[level - 1]
            delta = self._chain_overrides(parent, prev)
            delta.update(ch)
        return self._add(
            prev=prev,
            parent=parent,
            seq=seq,
            parent_anchors=pmeta.anchors,
            delta=delta,
            changes=ch,
            full=None,
        )

    def from_state(self, state: Mapping[StateKey, str], parent_hint: int | None) -> int:
        """A group holding exactly ``state``, stored as a delta from ``parent_hint`` if given.

        Returns ``parent_hint`` when its state already equals ``state``.
        """
        if parent_hint is None:
            return self.snapshot(state)
        changes = diff_states(self.get_state(parent_hint), state)
        gid = self.derive(parent_hint, changes)
        if gid < 0 and gid != parent_hint:
            self._new[gid].full = dict(state)
        return gid

    def delta_between(self, old: int, new: int) -> StateDelta | None:
        """The change from ``old`` to ``new`` if cheaply known (``new`` derived from ``old``
        through groups of this builder), else None."""
        layers: list[StateDelta] = []
        cur = new
        while cur != old:
            if cur >= 0:
                return None
            g = self._new[cur]
            if g.changes is None or g.meta.parent_group is None:
                return None
            layers.append(g.changes)
            cur = g.meta.parent_group
        out: StateDelta = {}
        for layer in reversed(layers):
            out.update(layer)
        return out

    def flush(self) -> dict[int, int]:
        """Allocate ids, write every new group; return temporary id -> real id."""
        if not self._new:
            return {}
        temps = sorted(self._new, reverse=True)  # -1, -2, ...: creation order
        first = self._txn.allocate_ids("state_groups", len(temps))
        mapping = {t: first + i for i, t in enumerate(temps)}

        def real(g: int | None) -> int | None:
            if g is None:
                return None
            return mapping[g] if g < 0 else g

        group_rows: list[tuple[Any, ...]] = []
        for t in temps:
            m = self._new[t].meta
            group_rows.append(
                (mapping[t], self._room_id, real(m.prev_group), real(m.parent_group), m.seq)
                + tuple(real(a) for a in m.anchors)
            )

        # Generated as copy_rows consumes them (a 10,000-member snapshot would
        # otherwise be 10,000 tuples alive at once, work for the cyclic GC),
        # in primary-key order: new groups have the largest IDs, so their
        # rows are appended at the end of the B-tree instead of splitting
        # pages in the middle.
        def state_rows() -> Iterator[tuple[int, str, str, str | None]]:
            for t in temps:
                g = self._new[t]
                gid = mapping[t]
                snapshot = g.meta.prev_group is None
                delta = g.delta
                for key in sorted(delta):
                    eid = delta[key]
                    if eid is None and snapshot:
                        continue  # a snapshot needs no tombstones
                    yield (gid, key[0], key[1], eid)

        self._txn.copy_rows(
            "state_groups",
            ("id", "room_id", "prev_group", "parent_group", "seq")
            + tuple(f"anchor{k}" for k in range(1, DELTA_LEVELS + 1)),
            group_rows,
        )
        self._txn.copy_rows(
            "state_groups_state", ("state_group", "type", "state_key", "event_id"), state_rows()
        )
        fulls = [(mapping[t], g.full) for t, g in self._new.items() if g.full is not None]
        if fulls:
            cache = self._cache
            self._txn.call_after(cache.set_many, fulls)
        return mapping


def _apply(state: StateMap, delta: Mapping[StateKey, str | None]) -> None:
    for k, v in delta.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v


def load_event_state_groups(
    txn: Transaction, event_ids: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """event_id -> (state group before, state group after) for non-outlier events."""
    ids = list(dict.fromkeys(event_ids))
    out: dict[str, tuple[int, int]] = {}
    for i in range(0, len(ids), SQL_CHUNK):
        chunk = ids[i : i + SQL_CHUNK]
        txn.execute(
            "SELECT event_id, state_group_before, state_group_after FROM event_to_state_groups"
            f" WHERE event_id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for eid, before, after in txn.fetchall():
            out[eid] = (int(before), int(after))
    return out


class StateStoreMixin(StoreBase):
    """Async reads of state groups and of the state at events."""

    async def get_state_ids_for_group(self, group: int) -> StateMap:
        """The full state of ``group``.

        Raises:
            KeyError: no such group.
        """
        hit = self._state_cache.get(group)
        if hit is not None:
            return dict(hit)
        return await self.db.run_interaction(
            "get_state_ids_for_group", load_state_group, group, self._state_cache
        )

    async def get_state_groups_for_events(
        self, event_ids: Iterable[str]
    ) -> dict[str, tuple[int, int]]:
        """event_id -> (group before, group after); outliers and unknown events are absent."""
        return await self.db.run_interaction(
            "get_state_groups_for_events", load_event_state_groups, list(event_ids)
        )

    async def get_state_before(self, event_id: str) -> StateMap | None:
        """The room state before ``event_id`` (what it is authorised against).

        Returns None for an outlier or an unknown event.
        """
        return await self._get_state_at(event_id, 0)

    async def get_state_after(self, event_id: str) -> StateMap | None:
        """The room state after ``event_id``: the state before, plus the event itself
        if it is an accepted state event. None for an outlier or unknown event."""
        return await self._get_state_at(event_id, 1)

    async def _get_state_at(self, event_id: str, which: int) -> StateMap | None:
        groups = await self.get_state_groups_for_events([event_id])
        if event_id not in groups:
            return None
        return await self.get_state_ids_for_group(groups[event_id][which])

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        """The room's current state (empty if we know nothing of the room)."""

        def txn_fn(txn: Transaction) -> StateMap:
            txn.execute(
                "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?",
                (room_id,),
            )
            return {(t, sk): eid for t, sk, eid in txn.fetchall()}

        return await self.db.run_interaction("get_current_state_ids", txn_fn)

    async def get_current_state_event_id(
        self, room_id: str, event_type: str, state_key: str
    ) -> str | None:
        """One entry of the current state."""

        def txn_fn(txn: Transaction) -> str | None:
            txn.execute(
                "SELECT event_id FROM current_state_events"
                " WHERE room_id = ? AND type = ? AND state_key = ?",
                (room_id, event_type, state_key),
            )
            row = txn.fetchone()
            return None if row is None else str(row[0])

        return await self.db.run_interaction("get_current_state_event_id", txn_fn)

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Iterable[StateKey]
    ) -> StateMap:
        """The entries of the current state at ``keys`` (missing ones left out),
        in one transaction: what the auth rules need of a big room's state
        without reading all of it."""
        wanted = list(dict.fromkeys(keys))

        def txn_fn(txn: Transaction) -> StateMap:
            out: StateMap = {}
            for etype, state_key in wanted:
                txn.execute(
                    "SELECT event_id FROM current_state_events"
                    " WHERE room_id = ? AND type = ? AND state_key = ?",
                    (room_id, etype, state_key),
                )
                row = txn.fetchone()
                if row is not None:
                    out[(etype, state_key)] = str(row[0])
            return out

        if not wanted:
            return {}
        return await self.db.run_interaction("get_current_state_ids_for_keys", txn_fn)

    async def get_current_state_group(self, room_id: str) -> int | None:
        """The state group whose state is the room's current state."""

        def txn_fn(txn: Transaction) -> int | None:
            txn.execute("SELECT current_state_group FROM rooms WHERE room_id = ?", (room_id,))
            row = txn.fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self.db.run_interaction("get_current_state_group", txn_fn)

    async def count_state_rows(self, room_id: str | None = None) -> tuple[int, int]:
        """(number of state groups, number of stored delta rows), for a room or all."""

        def txn_fn(txn: Transaction) -> tuple[int, int]:
            where, params = ("WHERE g.room_id = ?", (room_id,)) if room_id else ("", ())
            txn.execute(f"SELECT COUNT(*) FROM state_groups g {where}", params)
            groups = txn.fetchone()
            txn.execute(
                "SELECT COUNT(*) FROM state_groups_state s"
                f" JOIN state_groups g ON g.id = s.state_group {where}",
                params,
            )
            rows = txn.fetchone()
            assert groups is not None and rows is not None
            return int(groups[0]), int(rows[0])

        return await self.db.run_interaction("count_state_rows", txn_fn)
