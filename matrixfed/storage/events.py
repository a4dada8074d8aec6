"""Reading events: by ID, the DAG around them, and in stream/topological order.

Events come back as ``matrixfed.events.model.Event`` built with
``Event(pdu, room_version, event_id)`` (trusted: they were validated before
they were stored), served from a bounded LRU cache by event ID when
possible. Rejected, soft-failed and outlier events are returned by the ID
lookups like any other (ask ``get_event_statuses``/``get_rejected`` about
them); the ordered room queries (``get_room_events_stream``,
``get_room_events_topological``) return accepted non-outliers only, which is
what clients and backfill should see.

Graph walks (auth chains, missing events, backfill) run as one recursive SQL
query or as breadth-first walks that issue one chunked query per level and
stop at the caller's limit, so their cost is bounded by the answer's size.

Stream orderings: every stored event has a unique one. Live events count up
from 1 in the order their transactions committed; backfilled events count
down from -1. ``get_current_stream_ordering`` is the highest committed live
position.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from typing import Any, Literal

import attrs

from matrixfed.events.model import Event
from matrixfed.events.room_versions import get_room_version
from matrixfed.storage.base import StoreBase
from matrixfed.storage.database import Transaction
from matrixfed.storage.persist import EVENTS_STREAM
from matrixfed.storage.state import SQL_CHUNK

Direction = Literal["f", "b"]
# A position in a room's topological order: (depth, stream_ordering).
TopologicalToken = tuple[int, int]

# Most events one ordered room query returns, whatever the caller asks.
MAX_EVENTS_PER_QUERY = 1000


@attrs.frozen(slots=True)
class EventStatus:
    """What the store knows about an event besides its JSON."""

    event_id: str
    room_id: str
    stream_ordering: int
    depth: int
    outlier: bool
    rejected_reason: str | None
    soft_failed: bool


def _in(n: int) -> str:
    return ",".join("?" * n)


def _chunks(seq: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(seq), SQL_CHUNK):
        yield seq[i : i + SQL_CHUNK]


def _fetch_events_txn(txn: Transaction, event_ids: list[str]) -> dict[str, Event]:
    out: dict[str, Event] = {}
    for chunk in _chunks(event_ids):
        txn.execute(
            "SELECT e.event_id, e.json, r.room_version FROM events e"
            " JOIN rooms r ON r.room_id = e.room_id"
            f" WHERE e.event_id IN ({_in(len(chunk))})",
            chunk,
        )
        for eid, js, rv in txn.fetchall():
            out[eid] = Event(json.loads(js), get_room_version(rv), eid)
    return out


def _rows_to_events(rows: list[tuple[Any, ...]]) -> list[tuple[Any, Event]]:
    """Rows of (key, event_id, json, room_version) -> [(key, Event)]."""
    return [(key, Event(json.loads(js), get_room_version(rv), eid)) for key, eid, js, rv in rows]


@attrs.frozen(slots=True)
class StoredJson:
    """Stored JSON texts of some events, with the ones a redaction targets."""

    # event_id -> (depth, the stored PDU's JSON text), for the stored ones.
    json: dict[str, tuple[int, str]]
    # Those of ``json`` that some stored redaction targets (whether it
    # applies is for the caller to judge).
    redaction_targets: frozenset[str]


def _fetch_json_marked(
    txn: Transaction, chunk: list[str], out: dict[str, tuple[int, str]], redacted: set[str]
) -> None:
    """Rows of ``chunk`` into ``out``; those a stored redaction targets into ``redacted``."""
    txn.execute(
        "SELECT e.event_id, e.depth, e.json, r.event_id FROM events e"
        " LEFT JOIN redactions r ON r.redacts = e.event_id"
        f" WHERE e.event_id IN ({_in(len(chunk))})",
        chunk,
    )
    for eid, depth, js, redaction in txn.fetchall():
        out[eid] = (int(depth), js)
        if redaction is not None:
            redacted.add(eid)


def _auth_ids_txn(txn: Transaction, chunk: list[str]) -> set[str]:
    """The distinct auth events of ``chunk`` (one level)."""
    txn.execute(
        f"SELECT DISTINCT auth_id FROM event_auth WHERE event_id IN ({_in(len(chunk))})", chunk
    )
    return {r[0] for r in txn.fetchall()}


def _chain_above_txn(txn: Transaction, frontier: set[str]) -> set[str]:
    """Every event reachable through auth_events from ``frontier``: the walk
    in SQL (deep chains take one statement per chunk, not one per level)."""
    out: set[str] = set()
    for chunk in _chunks(sorted(frontier)):
        txn.execute(
            "WITH RECURSIVE chain(id) AS ("
            f" SELECT auth_id FROM event_auth WHERE event_id IN ({_in(len(chunk))})"
            " UNION"
            " SELECT a.auth_id FROM event_auth a JOIN chain c ON a.event_id = c.id"
            ") SELECT id FROM chain",
            chunk,
        )
        out.update(r[0] for r in txn.fetchall())
    return out


class EventsStoreMixin(StoreBase):
    """Event reads. See the module docstring."""

    # --- by ID ----------------------------------------------------------------

    async def get_event(self, event_id: str) -> Event | None:
        """The event, or None if we do not have it."""
        return (await self.get_events([event_id])).get(event_id)

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        """The events we have among ``event_ids`` (unknown IDs are left out)."""
        ids = list(dict.fromkeys(event_ids))
        found = self._event_cache.get_many(ids)
        missing = [e for e in ids if e not in found]
        if missing:
            fetched = await self.db.run_interaction("get_events", _fetch_events_txn, missing)
            self._event_cache.set_many(fetched.items())
            found.update(fetched)
        return found

    async def get_event_json(self, event_ids: Iterable[str]) -> dict[str, tuple[int, str]]:
        """event_id -> (depth, the stored PDU's JSON text), for the stored ones.

        For answers that send many events as they are (send_join): no decoding,
        no Event objects, no cache churn. The text is what ``get_events`` would
        decode (ASCII-only compact JSON).
        """
        ids = list(dict.fromkeys(event_ids))

        def txn_fn(txn: Transaction) -> dict[str, tuple[int, str]]:
            out: dict[str, tuple[int, str]] = {}
            for chunk in _chunks(ids):
                txn.execute(
                    "SELECT event_id, depth, json FROM events"
                    f" WHERE event_id IN ({_in(len(chunk))})",
                    chunk,
                )
                for eid, depth, js in txn.fetchall():
                    out[eid] = (int(depth), js)
            return out

        if not ids:
            return {}
        return await self.db.run_interaction("get_event_json", txn_fn)

    async def get_event_json_marked(self, event_ids: Iterable[str]) -> StoredJson:
        """``get_event_json`` with the events that a stored redaction targets,
        in one query per chunk (a batch of a streamed answer)."""
        ids = list(dict.fromkeys(event_ids))

        def txn_fn(txn: Transaction) -> StoredJson:
            out: dict[str, tuple[int, str]] = {}
            redacted: set[str] = set()
            txn.prefer_index_lookups()
            for chunk in _chunks(ids):
                _fetch_json_marked(txn, chunk, out, redacted)
            return StoredJson(json=out, redaction_targets=frozenset(redacted))

        if not ids:
            return StoredJson(json={}, redaction_targets=frozenset())
        return await self.db.run_interaction("get_event_json_marked", txn_fn)

    async def have_events(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` are stored (outliers and rejected included)."""
        return set((await self.get_event_statuses(event_ids)).keys())

    async def get_event_statuses(self, event_ids: Iterable[str]) -> dict[str, EventStatus]:
        """Flags and positions of the stored events among ``event_ids``."""
        ids = list(dict.fromkeys(event_ids))

        def txn_fn(txn: Transaction) -> dict[str, EventStatus]:
            out: dict[str, EventStatus] = {}
            for chunk in _chunks(ids):
                txn.execute(
                    "SELECT event_id, room_id, stream_ordering, depth, outlier,"
                    " rejected_reason, soft_failed FROM events"
                    f" WHERE event_id IN ({_in(len(chunk))})",
                    chunk,
                )
                for eid, room, so, depth, outlier, rejected, soft in txn.fetchall():
                    out[eid] = EventStatus(
                        event_id=eid,
                        room_id=room,
                        stream_ordering=int(so),
                        depth=int(depth),
                        outlier=bool(outlier),
                        rejected_reason=rejected,
                        soft_failed=bool(soft),
                    )
            return out

        return await self.db.run_interaction("get_event_statuses", txn_fn)

    async def get_rejected(self, event_ids: Iterable[str]) -> dict[str, str]:
        """event_id -> rejection reason, for the rejected ones among ``event_ids``."""
        statuses = await self.get_event_statuses(event_ids)
        return {e: s.rejected_reason for e, s in statuses.items() if s.rejected_reason is not None}

    async def get_depths(self, event_ids: Iterable[str]) -> dict[str, int]:
        """event_id -> depth for the stored events among ``event_ids``."""
        return {e: s.depth for e, s in (await self.get_event_statuses(event_ids)).items()}

    async def get_redaction_ids(self, event_id: str) -> list[str]:
        """IDs of stored redaction events that target ``event_id``."""

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute("SELECT event_id FROM redactions WHERE redacts = ?", (event_id,))
            return sorted(r[0] for r in txn.fetchall())

        return await self.db.run_interaction("get_redaction_ids", txn_fn)

    # --- the DAG --------------------------------------------------------------

    async def get_auth_chain_ids(
        self, event_ids: Iterable[str], *, include_given: bool = False
    ) -> set[str]:
        """Every event reachable through auth_events from ``event_ids``.

        Args:
            event_ids: where to start.
            include_given: also include ``event_ids`` themselves.

        Only stored auth edges are followed: the chain of an event we lack is
        empty, and a chain stops at events whose auth events we never stored.
        """
        ids = list(dict.fromkeys(event_ids))

        def txn_fn(txn: Transaction) -> set[str]:
            # The first level over every given event, then the rest from the
            # distinct events found: a room state's 10,000 events share a
            # chain that is walked once, not once per chunk of them.
            txn.prefer_index_lookups()
            frontier: set[str] = set()
            for chunk in _chunks(ids):
                frontier |= _auth_ids_txn(txn, chunk)
            return frontier | _chain_above_txn(txn, frontier)

        chain = await self.db.run_interaction("get_auth_chain_ids", txn_fn)
        if include_given:
            chain.update(ids)
        return chain

    async def get_auth_chain(self, event_ids: Iterable[str]) -> list[Event]:
        """The auth chain of ``event_ids`` as events, oldest (lowest depth) first."""
        chain = await self.get_auth_chain_ids(event_ids)
        events = await self.get_events(chain)
        return sorted(events.values(), key=lambda e: (e.depth, e.event_id))

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities (the prev_events of our next event), sorted."""

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute(
                "SELECT event_id FROM event_forward_extremities WHERE room_id = ?", (room_id,)
            )
            return sorted(r[0] for r in txn.fetchall())

        return await self.db.run_interaction("get_forward_extremities", txn_fn)

    async def get_backward_extremities(self, room_id: str) -> list[str]:
        """prev_events of the room's events that we do not have (where backfill starts)."""

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute(
                "SELECT event_id FROM event_backward_extremities WHERE room_id = ?", (room_id,)
            )
            return sorted(r[0] for r in txn.fetchall())

        return await self.db.run_interaction("get_backward_extremities", txn_fn)

    async def get_missing_events(
        self,
        room_id: str,
        *,
        earliest_events: Iterable[str],
        latest_events: Iterable[str],
        limit: int,
        min_depth: int = 0,
    ) -> list[Event]:
        """The spec's ``get_missing_events`` walk.

        Breadth-first over prev_events from ``latest_events`` (which are not
        returned), not entering ``earliest_events`` nor events below
        ``min_depth`` nor events of other rooms, until ``limit`` events.

        Returns:
            The events found, oldest first (by depth, then stream ordering).
        """
        earliest = set(earliest_events)
        latest = list(dict.fromkeys(latest_events))
        limit = max(0, min(limit, MAX_EVENTS_PER_QUERY))

        def txn_fn(txn: Transaction) -> list[str]:
            seen = set(earliest) | set(latest)
            found: list[tuple[int, int, str]] = []
            frontier = latest
            while frontier and len(found) < limit:
                nxt: list[str] = []
                for chunk in _chunks(frontier):
                    txn.execute(
                        "SELECT DISTINCT ev.event_id, ev.depth, ev.stream_ordering"
                        " FROM event_edges e JOIN events ev ON ev.event_id = e.prev_event_id"
                        f" WHERE e.event_id IN ({_in(len(chunk))}) AND ev.room_id = ?"
                        " AND ev.depth >= ? ORDER BY ev.depth DESC, ev.stream_ordering DESC",
                        [*chunk, room_id, min_depth],
                    )
                    for eid, depth, so in txn.fetchall():
                        if eid in seen or len(found) >= limit:
                            continue
                        seen.add(eid)
                        found.append((int(depth), int(so), eid))
                        nxt.append(eid)
                frontier = nxt
            found.sort()
            return [eid for _d, _s, eid in found]

        ids = await self.db.run_interaction("get_missing_events", txn_fn)
        events = await self.get_events(ids)
        return [events[e] for e in ids if e in events]

    async def get_backfill_events(
        self, room_id: str, event_ids: Iterable[str], limit: int
    ) -> list[Event]:
        """The spec's backfill: ``event_ids`` and the events preceding them.

        Walks prev_events, always continuing from the deepest event not yet
        taken, so the newest history comes first; stops at ``limit`` events.

        Returns:
            The events, newest (highest depth) first.
        """
        start = list(dict.fromkeys(event_ids))
        limit = max(0, min(limit, MAX_EVENTS_PER_QUERY))

        def txn_fn(txn: Transaction) -> list[str]:
            heap: list[tuple[int, int, str]] = []
            seen: set[str] = set()

            def push(ids: list[str], via_edges: bool) -> None:
                for chunk in _chunks(ids):
                    if via_edges:
                        sql = (
                            "SELECT DISTINCT ev.event_id, ev.depth, ev.stream_ordering"
                            " FROM event_edges e JOIN events ev ON ev.event_id = e.prev_event_id"
                            f" WHERE e.event_id IN ({_in(len(chunk))}) AND ev.room_id = ?"
                        )
                    else:
                        sql = (
                            "SELECT event_id, depth, stream_ordering FROM events"
                            f" WHERE event_id IN ({_in(len(chunk))}) AND room_id = ?"
                        )
                    txn.execute(sql, [*chunk, room_id])
                    for eid, depth, so in txn.fetchall():
                        if eid not in seen:
                            seen.add(eid)
                            heapq.heappush(heap, (-int(depth), -int(so), eid))

            push(start, via_edges=False)
            taken: list[str] = []
            while heap and len(taken) < limit:
                # Take the deepest events found so far, a layer at a time, so
                # each query covers many events.
                room = min(limit - len(taken), SQL_CHUNK)
                layer = [heapq.heappop(heap)[2] for _ in range(min(room, len(heap)))]
                taken.extend(layer)
                push(layer, via_edges=True)
            return taken

        ids = await self.db.run_interaction("get_backfill_events", txn_fn)
        events = await self.get_events(ids)
        ordered = [events[e] for e in ids if e in events]
        ordered.sort(key=lambda e: -e.depth)
        return ordered

    # --- ordered room queries ---------------------------------------------------

    async def get_current_stream_ordering(self) -> int:
        """The highest live stream ordering committed so far (0 when none)."""

        def txn_fn(txn: Transaction) -> int:
            txn.execute("SELECT value FROM id_counters WHERE name = ?", (EVENTS_STREAM,))
            row = txn.fetchone()
            return 0 if row is None else int(row[0])

        return await self.db.run_interaction("get_current_stream_ordering", txn_fn)

    async def get_room_events_stream(
        self,
        room_id: str,
        *,
        from_ordering: int,
        to_ordering: int | None = None,
        limit: int = 100,
        direction: Direction = "f",
    ) -> list[tuple[int, Event]]:
        """Accepted non-outlier events of a room between two stream positions.

        Args:
            from_ordering: exclusive start. Direction "f": events with a
                stream ordering above it; "b": below it.
            to_ordering: inclusive end (None: no bound).
            limit: at most this many (capped at MAX_EVENTS_PER_QUERY).
            direction: "f" oldest first, "b" newest first.

        Returns:
            [(stream_ordering, event)] in the requested direction.
        """
        limit = max(0, min(limit, MAX_EVENTS_PER_QUERY))
        if direction == "f":
            cond, order = "e.stream_ordering > ?", "ASC"
            bound = "" if to_ordering is None else " AND e.stream_ordering <= ?"
        else:
            cond, order = "e.stream_ordering < ?", "DESC"
            bound = "" if to_ordering is None else " AND e.stream_ordering >= ?"
        params: list[Any] = [room_id, from_ordering]
        if to_ordering is not None:
            params.append(to_ordering)
        params.append(limit)
        sql = (
            "SELECT e.stream_ordering, e.event_id, e.json, r.room_version FROM events e"
            " JOIN rooms r ON r.room_id = e.room_id"
            f" WHERE e.room_id = ? AND {cond}{bound} AND e.outlier = 0"
            " AND e.rejected_reason IS NULL AND e.soft_failed = 0"
            f" ORDER BY e.stream_ordering {order} LIMIT ?"
        )

        def txn_fn(txn: Transaction) -> list[tuple[Any, Event]]:
            txn.execute(sql, params)
            return _rows_to_events(txn.fetchall())

        rows = await self.db.run_interaction("get_room_events_stream", txn_fn)
        return [(int(k), ev) for k, ev in rows]

    async def get_room_events_topological(
        self,
        room_id: str,
        *,
        from_token: TopologicalToken | None,
        limit: int = 100,
        direction: Direction = "b",
    ) -> list[tuple[TopologicalToken, Event]]:
        """Accepted non-outlier events of a room in (depth, stream_ordering) order.

        For ``/messages``: direction "b" walks back from ``from_token``
        (exclusive; None = from the newest), "f" forward from it (None = from
        the oldest). Backfilled events are included at their place.

        Returns:
            [((depth, stream_ordering), event)] in the requested direction.
        """
        limit = max(0, min(limit, MAX_EVENTS_PER_QUERY))
        params: list[Any] = [room_id]
        cond = ""
        if from_token is not None:
            d, s = from_token
            op = "<" if direction == "b" else ">"
            cond = f" AND (e.depth {op} ? OR (e.depth = ? AND e.stream_ordering {op} ?))"
            params += [d, d, s]
        order = "DESC" if direction == "b" else "ASC"
        params.append(limit)
        sql = (
            "SELECT e.depth, e.stream_ordering, e.event_id, e.json, r.room_version FROM events e"
            " JOIN rooms r ON r.room_id = e.room_id"
            f" WHERE e.room_id = ?{cond} AND e.outlier = 0"
            " AND e.rejected_reason IS NULL AND e.soft_failed = 0"
            f" ORDER BY e.depth {order}, e.stream_ordering {order} LIMIT ?"
        )

        def txn_fn(txn: Transaction) -> list[tuple[TopologicalToken, Event]]:
            txn.execute(sql, params)
            return [
                ((int(d), int(s)), Event(json.loads(js), get_room_version(rv), eid))
                for d, s, eid, js, rv in txn.fetchall()
            ]

        return await self.db.run_interaction("get_room_events_topological", txn_fn)

    async def get_rooms_changed_since(self, from_ordering: int) -> dict[str, int]:
        """room_id -> newest live stream ordering, for rooms with accepted
        non-outlier events after ``from_ordering`` (for /sync)."""

        def txn_fn(txn: Transaction) -> dict[str, int]:
            txn.execute(
                "SELECT room_id, MAX(stream_ordering) FROM events WHERE stream_ordering > ?"
                " AND outlier = 0 AND rejected_reason IS NULL AND soft_failed = 0"
                " GROUP BY room_id",
                (from_ordering,),
            )
            return {r: int(m) for r, m in txn.fetchall()}

        return await self.db.run_interaction("get_rooms_changed_since", txn_fn)
