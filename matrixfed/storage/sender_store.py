"""Persistence of the outbound federation queues (schema 0006_sender.sql).

What is stored (see ``matrixfed/federation/sender.py`` for why):

* ``federation_outbox``: (destination, stream ordering, event ID) of every PDU
  still to deliver;
* ``federation_queued_events``: which local events already had their outbox
  rows written, and ``federation_sender_position``: below which stream
  ordering every local event was queued. Together they let start-up find the
  local events whose queueing a crash interrupted;
* ``federation_destinations``: per destination, the transaction ID counter
  and the transaction in flight (its ID and PDUs), so a transaction
  interrupted by a crash is resent unchanged.

Each method is one database transaction, except the hot path
(``queue_event``, ``next_transaction``, ``finish_transaction``): those calls
are coalesced, so that every call made while a batch is running goes into the
next one, run as one database transaction. A busy room with many servers
then costs a few database transactions per round, not two per destination
per event. How it fails: database errors propagate from the returned
awaitables (a failed batch fails every call in it); nothing is half-written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from matrixfed.storage.database import Database, Transaction

__all__ = ["OutboundTransaction", "SenderStore", "UnqueuedEvent"]

_POSITION = "events"
# Parameters per IN (...) list: well under SQLite's limit.
_IN_CHUNK = 500
# Calls per coalesced database transaction: keeps each one short.
MAX_BATCH = 200


@attrs.frozen(slots=True)
class OutboundTransaction:
    """A transaction reserved for a destination.

    Attributes:
        txn_id: the transaction ID (unique per destination, never reused).
        pdus: (stream ordering, event ID) of its PDUs, oldest first.
        resumed: True when it was already in flight before (a retry: same ID,
            same PDUs).
    """

    txn_id: str
    pdus: tuple[tuple[int, str], ...]
    resumed: bool


@attrs.frozen(slots=True)
class UnqueuedEvent:
    """A local event committed but never queued (the process died in between)."""

    stream_ordering: int
    event_id: str
    room_id: str


class SenderStore:
    """The sender's tables. ``SenderStore(db=...)``; the database must be started."""

    def __init__(self, *, db: Database) -> None:
        self.db = db
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self._flushing: Deferred[None] | None = None

    async def _batched(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(txn, *args)`` in the next coalesced database transaction."""
        d: Deferred[Any] = Deferred()
        self._pending.append((func, args, d))
        if self._flushing is None:
            self._flushing = Deferred.fromCoroutine(self._flush())
        return await d

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                ops = [(func, args) for func, args, _ in batch]
                try:
                    results = await self.db.run_interaction("sender_batch", _batch_txn, ops)
                except Exception:
                    failure = Failure()  # type: ignore[no-untyped-call]
                    for _, _, d in batch:
                        d.errback(failure)
                    continue
                for (_, _, d), (ok, value) in zip(batch, results, strict=True):
                    if ok:
                        d.callback(value)
                    else:
                        d.errback(value)
        finally:
            self._flushing = None

    async def idle(self) -> None:
        """Return once no coalesced batch is running (before closing the database)."""
        while self._flushing is not None:
            await self._flushing

    async def queue_event(self, event_id: str, destinations: Collection[str]) -> bool:
        """Write outbox rows of ``event_id`` for ``destinations`` and mark it queued.

        Returns:
            False if the event was queued before (or is below the recovery
            position), True if queued now.

        Raises:
            LookupError: the event is not stored.
        """
        result: bool = await self._batched(_queue_event_txn, event_id, sorted(set(destinations)))
        return result

    async def init_position(self) -> int:
        """The recovery position; on first use, the current end of the events stream
        (history is never sent)."""
        return await self.db.run_interaction("sender_init_position", _init_position_txn)

    async def get_unqueued_local_events(
        self, server_name: str, after: int
    ) -> tuple[list[UnqueuedEvent], int]:
        """Accepted, non-outlier events sent by our users after stream ordering
        ``after`` that were never queued, oldest first, and the end of the events
        stream the scan saw (pass it to ``set_position`` once they are queued)."""
        return await self.db.run_interaction("sender_unqueued", _unqueued_txn, server_name, after)

    async def set_position(self, stream_ordering: int) -> None:
        """Record that every local event up to ``stream_ordering`` is queued, and
        forget the per-event markers below it."""
        await self.db.run_interaction("sender_set_position", _set_position_txn, stream_ordering)

    async def get_destinations_with_work(self) -> list[str]:
        """Destinations with PDUs queued or a transaction in flight."""
        return await self.db.run_interaction("sender_destinations", _destinations_txn)

    async def next_transaction(
        self,
        destination: str,
        max_pdus: int,
        *,
        now_ms: int,
        allow_empty: bool,
        finished_txn_id: str | None = None,
    ) -> OutboundTransaction | None:
        """The transaction in flight for ``destination``, or a new one.

        A new one takes up to ``max_pdus`` of the oldest queued PDUs. With no PDU
        queued, a new (PDU-less) transaction is reserved only if ``allow_empty``
        (the caller has EDUs to send); otherwise None. ``finished_txn_id`` is
        first finished as by ``finish_transaction`` (in the same database
        transaction).
        """
        result: OutboundTransaction | None = await self._batched(
            _next_transaction_txn, destination, max_pdus, now_ms, allow_empty, finished_txn_id
        )
        return result

    async def finish_transaction(self, destination: str, txn_id: str) -> None:
        """The transaction is done (delivered or refused for good): drop its PDUs
        from the outbox and clear the in-flight slot."""
        await self._batched(_finish_transaction_txn, destination, txn_id)

    async def count_queued(self, destination: str) -> int:
        """PDUs still queued for ``destination`` (in flight included)."""
        return await self.db.run_interaction("sender_count", _count_txn, destination)


def _batch_txn(
    txn: Transaction, ops: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[tuple[bool, Any]]:
    out: list[tuple[bool, Any]] = []
    for func, args in ops:
        try:
            out.append((True, func(txn, *args)))
        except LookupError as e:
            # Raised before any write (an unknown event): only that call fails.
            out.append((False, e))
    return out


def _queue_event_txn(txn: Transaction, event_id: str, destinations: Sequence[str]) -> bool:
    txn.execute("SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,))
    row = txn.fetchone()
    if row is None:
        raise LookupError(f"event {event_id} is not stored")
    ordering = int(row[0])
    txn.execute(
        "SELECT stream_ordering FROM federation_sender_position WHERE name = ?", (_POSITION,)
    )
    pos = txn.fetchone()
    if pos is not None and ordering <= int(pos[0]):
        return False
    txn.execute("SELECT 1 FROM federation_queued_events WHERE stream_ordering = ?", (ordering,))
    if txn.fetchone() is not None:
        return False
    txn.execute(
        "INSERT INTO federation_queued_events (stream_ordering, event_id) VALUES (?, ?)",
        (ordering, event_id),
    )
    txn.executemany(
        "INSERT INTO federation_outbox (destination, stream_ordering, event_id) VALUES (?, ?, ?)"
        " ON CONFLICT (destination, stream_ordering) DO NOTHING",
        [(d, ordering, event_id) for d in destinations],
    )
    return True


def _init_position_txn(txn: Transaction) -> int:
    txn.execute(
        "SELECT stream_ordering FROM federation_sender_position WHERE name = ?", (_POSITION,)
    )
    row = txn.fetchone()
    if row is not None:
        return int(row[0])
    txn.execute("SELECT COALESCE(MAX(stream_ordering), 0) FROM events")
    top = txn.fetchone()
    position = int(top[0]) if top is not None else 0
    txn.execute(
        "INSERT INTO federation_sender_position (name, stream_ordering) VALUES (?, ?)",
        (_POSITION, position),
    )
    return position


def _unqueued_txn(
    txn: Transaction, server_name: str, after: int
) -> tuple[list[UnqueuedEvent], int]:
    txn.execute("SELECT COALESCE(MAX(stream_ordering), 0) FROM events")
    top = txn.fetchone()
    end = int(top[0]) if top is not None else 0
    # Server names have no '%' or '_' (appendices grammar), so LIKE is exact here.
    txn.execute(
        "SELECT e.stream_ordering, e.event_id, e.room_id, e.sender FROM events AS e"
        " WHERE e.stream_ordering > ? AND e.stream_ordering <= ? AND e.outlier = 0"
        " AND e.rejected_reason IS NULL AND e.soft_failed = 0 AND e.sender LIKE ?"
        " AND NOT EXISTS (SELECT 1 FROM federation_queued_events AS q"
        "   WHERE q.stream_ordering = e.stream_ordering)"
        " ORDER BY e.stream_ordering",
        (after, end, "%:" + server_name),
    )
    found = [
        UnqueuedEvent(int(so), eid, rid)
        for so, eid, rid, sender in txn.fetchall()
        if sender.split(":", 1)[-1] == server_name
    ]
    return found, end


def _set_position_txn(txn: Transaction, ordering: int) -> None:
    txn.execute(
        "UPDATE federation_sender_position SET stream_ordering = ?"
        " WHERE name = ? AND stream_ordering < ?",
        (ordering, _POSITION, ordering),
    )
    txn.execute("DELETE FROM federation_queued_events WHERE stream_ordering <= ?", (ordering,))


def _destinations_txn(txn: Transaction) -> list[str]:
    txn.execute(
        "SELECT destination FROM federation_outbox"
        " UNION SELECT destination FROM federation_destinations"
        " WHERE inflight_txn_id IS NOT NULL"
    )
    return sorted(str(r[0]) for r in txn.fetchall())


def _next_transaction_txn(
    txn: Transaction,
    destination: str,
    max_pdus: int,
    now_ms: int,
    allow_empty: bool,
    finished_txn_id: str | None,
) -> OutboundTransaction | None:
    # Four statements on the hot path (read the slot, delete what was delivered,
    # read the queue, write the slot): this runs once per transaction sent.
    txn.execute(
        "SELECT txn_epoch, last_txn_seq, inflight_txn_id, inflight_pdus"
        " FROM federation_destinations WHERE destination = ?",
        (destination,),
    )
    row = txn.fetchone()
    inflight = row[2] if row is not None else None
    if inflight is not None and inflight == finished_txn_id:
        _delete_delivered(txn, destination, row[3] if row is not None else "[]")
        inflight = None
    if inflight is not None:
        assert row is not None
        pdus = tuple((int(so), str(eid)) for so, eid in json.loads(row[3]))
        return OutboundTransaction(txn_id=str(inflight), pdus=pdus, resumed=True)
    txn.execute(
        "SELECT stream_ordering, event_id FROM federation_outbox WHERE destination = ?"
        " ORDER BY stream_ordering LIMIT ?",
        (destination, max_pdus),
    )
    pdus = tuple((int(so), str(eid)) for so, eid in txn.fetchall())
    if not pdus and not allow_empty:
        if row is not None and row[2] is not None:
            _clear_inflight(txn, destination)
        return None
    if row is None:
        epoch, seq = now_ms, 1
        txn.execute(
            "INSERT INTO federation_destinations (destination, txn_epoch, last_txn_seq)"
            " VALUES (?, ?, ?)",
            (destination, epoch, seq),
        )
    else:
        epoch, seq = int(row[0]), int(row[1]) + 1
    txn_id = f"{epoch}.{seq}"
    txn.execute(
        "UPDATE federation_destinations SET last_txn_seq = ?, inflight_txn_id = ?,"
        " inflight_pdus = ? WHERE destination = ?",
        (seq, txn_id, json.dumps([list(p) for p in pdus]), destination),
    )
    return OutboundTransaction(txn_id=txn_id, pdus=pdus, resumed=False)


def _finish_transaction_txn(txn: Transaction, destination: str, txn_id: str) -> None:
    txn.execute(
        "SELECT inflight_pdus FROM federation_destinations"
        " WHERE destination = ? AND inflight_txn_id = ?",
        (destination, txn_id),
    )
    row = txn.fetchone()
    if row is None:
        return
    _delete_delivered(txn, destination, row[0])
    _clear_inflight(txn, destination)


def _delete_delivered(txn: Transaction, destination: str, inflight_pdus: str) -> None:
    orderings = [int(so) for so, _ in json.loads(inflight_pdus)]
    for i in range(0, len(orderings), _IN_CHUNK):
        chunk = orderings[i : i + _IN_CHUNK]
        txn.execute(
            "DELETE FROM federation_outbox WHERE destination = ?"
            f" AND stream_ordering IN ({','.join('?' * len(chunk))})",
            (destination, *chunk),
        )


def _clear_inflight(txn: Transaction, destination: str) -> None:
    txn.execute(
        "UPDATE federation_destinations SET inflight_txn_id = NULL, inflight_pdus = NULL"
        " WHERE destination = ?",
        (destination,),
    )


def _count_txn(txn: Transaction, destination: str) -> int:
    txn.execute("SELECT COUNT(*) FROM federation_outbox WHERE destination = ?", (destination,))
    row = txn.fetchone()
    return int(row[0]) if row is not None else 0
